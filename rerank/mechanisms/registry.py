"""The mechanism registry: names → factories. ``get(name, **params)`` builds a ready instance."""
from __future__ import annotations

import difflib
import importlib
import threading
from typing import Callable

from .base import Mechanism, MechanismSpec

_factories: dict[str, Callable[..., Mechanism]] = {}
_specs: dict[str, MechanismSpec] = {}
_lock = threading.Lock()
_builtins_loaded = False


#: The category modules, in ADR-029's order; each lists its mechanisms in ``MECHANISMS``.
BUILTIN_MODULES = ("multihead", "self_attention", "cross", "sparse", "linear", "flash", "moe")


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    modules = [importlib.import_module(f".{name}", __package__) for name in BUILTIN_MODULES]
    with _lock:
        if not _builtins_loaded:
            for module in modules:
                for cls in module.MECHANISMS:
                    _add(cls.spec.name, cls, replace=False)
            _builtins_loaded = True


def _add(name: str, factory, *, replace: bool) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"mechanism name must be a non-empty string; got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory for {name!r} must be callable (a Mechanism class or a function)")
    if name in _factories and not replace:
        raise ValueError(f"mechanism {name!r} is already registered (pass replace=True)")
    spec = getattr(factory, "spec", None)
    if not isinstance(spec, MechanismSpec):
        instance = factory()
        if not isinstance(instance, Mechanism):
            raise TypeError(f"factory for {name!r} returned {type(instance).__name__}, "
                            "not a Mechanism")
        spec = instance.spec
    _factories[name] = factory
    _specs[name] = spec


def register(name: str, factory: Callable[..., Mechanism], *, replace: bool = False) -> None:
    """Register ``factory`` (a Mechanism class, or a callable returning a Mechanism) as ``name``."""
    _load_builtins()
    with _lock:
        _add(name, factory, replace=replace)


def _lookup(name: str):
    _load_builtins()
    try:
        return _factories[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), [*_factories], n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown mechanism {name!r}{hint} (see `rerank list`)") from None


def get(name: str, **params) -> Mechanism:
    """A ready instance of mechanism ``name`` built with ``params``."""
    return _lookup(name)(**params)


def spec(name: str) -> MechanismSpec:
    _lookup(name)
    return _specs[name]


def list() -> list[MechanismSpec]:  # noqa: A001 - the design's name
    """Every registered mechanism's spec, in registration order."""
    _load_builtins()
    return [_specs[n] for n in _factories]


def names() -> list[str]:
    _load_builtins()
    return [*_factories]


def by_category(category: str) -> list[MechanismSpec]:
    return [s for s in list() if s.category == category]


def compiled_only() -> list[MechanismSpec]:
    return [s for s in list() if s.compiled]
