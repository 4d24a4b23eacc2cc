"""The Mechanism contract: a spec that describes it, ``forward`` and ``not_supported_reasons``."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import numpy as np

from .. import backend


@dataclass(frozen=True)
class MechanismSpec:
    """What a mechanism is: registry name, category, complexity, use case, paper, and whether its
    forward runs through a compiled kernel when the compiled backend is active."""
    name: str
    category: str
    complexity: str
    use_case: str
    paper: str
    compiled: bool
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class Mechanism(ABC):
    """An attention mechanism: ``forward(q, k, v, *, mask=None, causal=False)`` → q's shape with
    v's last dimension. Subclasses set ``spec`` and implement ``_forward``; they state what they
    cannot serve in ``not_supported_reasons`` (and ``forward`` raises with those reasons)."""

    spec: MechanismSpec
    supports_causal = True
    supports_mask = True

    def not_supported_reasons(self, q, k, v, *, mask=None, causal=False) -> list[str]:
        """Why this mechanism cannot serve these inputs (empty when it can)."""
        reasons = []
        if causal and not self.supports_causal:
            reasons.append(f"{self.spec.name} does not support causal masking")
        if mask is not None and not self.supports_mask:
            reasons.append(f"{self.spec.name} does not support attention masks")
        return reasons

    def forward(self, q, k, v, *, mask=None, causal=False, **params) -> np.ndarray:
        reasons = self.not_supported_reasons(q, k, v, mask=mask, causal=causal)
        if reasons:
            raise ValueError("; ".join(reasons))
        return self._forward(q, k, v, mask=mask, causal=causal, **params)

    __call__ = forward

    @abstractmethod
    def _forward(self, q, k, v, *, mask=None, causal=False, **params) -> np.ndarray:
        """The mechanism's math on inputs it supports."""

    @property
    def backend(self) -> str:
        """The backend this mechanism's forward runs on now."""
        return backend.active() if self.spec.compiled else "numpy"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.name!r} backend={self.backend}>"
