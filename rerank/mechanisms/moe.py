"""Mixture-of-experts attention family.

An expert e is an attention head with its own projections W_q^e, W_k^e (d × d) and W_v^e
(d_v × d_v): Expert_e(q_i) = softmax(q_i W_q^e (k W_k^e)ᵀ·scale + mask)(v W_v^e). It is computed
as softmax((q_i W_q^e W_k^eᵀ) kᵀ·scale + mask)·v, then ·W_v^e — the same function with the key
projection folded into the query and the value projection applied after — so every expert attends
over the same raw keys and values: all routed (token, expert) pairs run as the rows of one
:func:`rerank.attention` call (the compiled kernel when that backend is active; chunks of rows
when a mask or causal rule must be gathered per row), and keys and values are never projected
per expert. Queries are routed; keys and values are shared by every
token, so ``causal`` and masks pass through to the experts row by row (each routed row keeps its
position's causal and mask row). A router W_r (d × E) scores each query token:
p_i = softmax(q_i W_r).

Experts and router are shared by every batch entry and head; each (batch, head) row of queries is
its own sequence of tokens for routing. Omitted weights are drawn per (d, d_v) from
``np.random.default_rng(seed)``: projections as I + 0.5·G/√d (the experts must differ), router
and slot parameters as G/√d; ``weights_for(d, dv)`` returns them and, after a forward, the
attributes ``w_q``, ``w_k``, ``w_v``, ``w_router`` (and ``phi``) hold the ones it used.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from numbers import Integral, Real

import numpy as np

from .. import reference
from ..attention import BLOCK_Q, attention, prepare
from ..validation import check_finite
from .base import Mechanism, MechanismSpec

#: Default projections are I + EXPERT_NOISE·G/√d, G standard normal.
EXPERT_NOISE = 0.5

_PROJECTIONS = ("w_q", "w_k", "w_v")

#: Masked expert calls gather a mask row per query row: at most this many elements per call
#: (and at least ROWS_PER_CALL rows, the compiled kernel's query tile).
MASK_ELEMENTS = 1 << 24
ROWS_PER_CALL = BLOCK_Q


def _check_count(name: str, value, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}; got {value!r}")
    return int(value)


def _check_capacity_factor(value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"capacity_factor must be a positive finite number; got {value!r}")
    return float(value)


def _as_weight(name: str, value, ndim: int) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real array; got dtype {arr.dtype}")
    arr = np.array(arr, dtype=np.float32, order="C")          # a copy the mechanism owns
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return arr


def _check_shape(name: str, arr: np.ndarray, expected: tuple) -> None:
    if arr.shape != expected:
        raise ValueError(f"{name} must have shape {expected} for these inputs; got {arr.shape}")


def _noisy_identity(rng, experts: int, size: int) -> np.ndarray:
    noise = rng.standard_normal((experts, size, size)) * (EXPERT_NOISE / math.sqrt(size))
    return (np.eye(size) + noise).astype(np.float32)


def _scaled_normal(rng, d: int, columns: int) -> np.ndarray:
    """G/√d, G standard normal (d × columns): logits q·G/√d of order ‖q‖/√d."""
    return (rng.standard_normal((d, columns)) / math.sqrt(d)).astype(np.float32)


class _AttentionExperts(Mechanism):
    """Shared machinery: validated inputs and the experts' weights per (d, d_v)."""

    def __init__(self, *, num_experts, seed, w_q, w_k, w_v):
        self.num_experts = _check_count("num_experts", num_experts)
        self.seed = _check_count("seed", seed, low=0)
        self._given = {"w_q": _as_weight("w_q", w_q, 3), "w_k": _as_weight("w_k", w_k, 3),
                       "w_v": _as_weight("w_v", w_v, 3)}
        for name in _PROJECTIONS:
            arr = self._given[name]
            if arr is not None and arr.shape[::2] != (self.num_experts, arr.shape[1]):
                raise ValueError(f"{name} must have shape (num_experts={self.num_experts}, size, "
                                 f"size); got {arr.shape}")
        self._cache: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self.w_q, self.w_k, self.w_v = (self._given[name] for name in _PROJECTIONS)

    def _draw(self, rng, d: int, dv: int) -> dict[str, np.ndarray]:
        """Every default weight for (d, d_v), drawn in a fixed order whatever is given."""
        e = self.num_experts
        weights = {"w_q": _noisy_identity(rng, e, d), "w_k": _noisy_identity(rng, e, d)}
        weights.update(self._draw_routing(rng, d))       # before w_v: routing ignores d_v
        weights["w_v"] = _noisy_identity(rng, e, dv)
        return weights

    @abstractmethod
    def _draw_routing(self, rng, d: int) -> dict[str, np.ndarray]:
        """The default router (or slot) parameters for queries of width d."""

    def _expected_shapes(self, d: int, dv: int) -> dict[str, tuple]:
        e = self.num_experts
        return {"w_q": (e, d, d), "w_k": (e, d, d), "w_v": (e, dv, dv)}

    def _add_given(self, name: str, value, expected_columns: int, what: str) -> None:
        arr = _as_weight(name, value, 2)
        if arr is not None and arr.shape[1] != expected_columns:
            raise ValueError(f"{name} must have shape (d, {what}={expected_columns}); "
                             f"got {arr.shape}")
        self._given[name] = arr
        setattr(self, name, arr)

    def weights_for(self, d: int, dv: int) -> dict[str, np.ndarray]:
        """The weights used for queries of width d and values of width d_v (created once)."""
        key = (int(d), int(dv))
        if key not in self._cache:
            weights = self._draw(np.random.default_rng(self.seed), *key)
            for name, shape in self._expected_shapes(*key).items():
                if self._given.get(name) is not None:
                    _check_shape(name, self._given[name], shape)
                    weights[name] = self._given[name]
            self._cache[key] = weights
        return self._cache[key]

    def _prepare(self, q, k, v, mask, scale):
        """Validated 4-D inputs, and the weights for their widths (exposed as attributes)."""
        q4, k4, v4, mask4, scale, out_shape = prepare(q, k, v, mask, scale)
        for name, arr in (("q", q4), ("k", k4), ("v", v4)):
            check_finite(name, arr)
        weights = self.weights_for(q4.shape[-1], v4.shape[-1])
        for name, value in weights.items():
            setattr(self, name, value)
        return q4, k4, v4, mask4, scale, out_shape, weights


class _TokenRoutedExperts(_AttentionExperts):
    """Experts run on the query tokens a router sends them: p_i = softmax(q_i W_r)."""

    def __init__(self, *, num_experts, seed, w_q, w_k, w_v, w_router):
        super().__init__(num_experts=num_experts, seed=seed, w_q=w_q, w_k=w_k, w_v=w_v)
        self._add_given("w_router", w_router, self.num_experts, "num_experts")

    def _draw_routing(self, rng, d):
        return {"w_router": _scaled_normal(rng, d, self.num_experts)}

    def _expected_shapes(self, d, dv):
        return {**super()._expected_shapes(d, dv), "w_router": (d, self.num_experts)}

    @staticmethod
    def _router_probabilities(q4: np.ndarray, w_router: np.ndarray) -> np.ndarray:
        """p = softmax(q W_r) over experts, float64, shape (b, h, n, E)."""
        return reference.softmax(q4.astype(np.float64) @ w_router.astype(np.float64), axis=-1)

    def route(self, q, k, v) -> tuple[np.ndarray, np.ndarray]:
        """(gates, served), both (b, h, n, E): token i's weight for expert e, and whether e runs on
        it. Uses the weights for q's and v's widths."""
        q4, _, _, _, _, _, weights = self._prepare(q, k, v, None, None)
        return self._route(self._router_probabilities(q4, weights["w_router"]))

    @abstractmethod
    def _route(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(gates, served) (b, h, n, E) from the router probabilities (b, h, n, E)."""

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, mask4, scale, out_shape, weights = self._prepare(q, k, v, mask, scale)
        gates, served = self._route(self._router_probabilities(q4, weights["w_router"]))
        out = _run_routed_experts(q4, k4, v4, mask4, bool(causal), scale, weights, gates, served)
        return out.reshape(out_shape)


def _project(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x W as one (rows × d)·(d × d') product (numpy's stacked 4-D matmul is several times
    slower)."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[:-1] + (w.shape[-1],))


def _fold_keys_into_query(queries: np.ndarray, weights, e: int) -> np.ndarray:
    """q W_q^e W_k^eᵀ: its scores against the raw keys are q W_q^e (k W_k^e)ᵀ."""
    return _project(_project(queries, weights["w_q"][e]), weights["w_k"][e].T)


def _row_mask(mask4, causal: bool, positions: np.ndarray, n: int, m: int, keys: int):
    """The mask of the query rows at ``positions`` (b, h, c) over the first ``keys`` keys: the
    caller's (additive) mask rows with the causal rule at each row's original position."""
    rows = None
    if mask4 is not None:
        rows = np.take_along_axis(mask4[..., :keys], positions[..., None], axis=2)
    if not causal:
        return rows
    visible = np.arange(keys) <= positions[..., None] + (m - n)
    return visible if rows is None else np.where(visible, rows, np.float32(-np.inf))


def _attend_rows(queries, k4, v4, mask4, causal, scale, positions, n):
    """attention(queries, k, v) where row r of each group is the query at ``positions[..., r]``:
    it gets that position's mask row and causal rule. Masked calls go in chunks of rows, so the
    gathered mask stays under MASK_ELEMENTS; a causal chunk skips the keys none of its rows see."""
    if mask4 is None and not causal:
        return attention(queries, k4, v4, scale=scale)
    b, h, width, _ = queries.shape
    m = k4.shape[2]
    out = np.zeros((b, h, width, v4.shape[-1]), dtype=np.float32)
    chunk = max(ROWS_PER_CALL, MASK_ELEMENTS // (b * h * m))
    for start in range(0, width, chunk):
        rows = slice(start, start + chunk)
        keys = m if not causal else min(m, int(positions[:, :, rows].max()) + m - n + 1)
        if keys > 0:        # else every key is in these rows' future: attention gives zeros
            out[:, :, rows] = attention(
                queries[:, :, rows], k4[:, :, :keys], v4[:, :, :keys], scale=scale,
                mask=_row_mask(mask4, causal, positions[:, :, rows], n, m, keys))
    return out


def _run_routed_experts(q4, k4, v4, mask4, causal, scale, weights, gates, served):
    """out_i = Σ_e gates[i, e]·Expert_e(q_i) over the served (token, expert) pairs only.

    Expert_e(q) = softmax(q W_q^e W_k^eᵀ kᵀ·scale)·v·W_v^e: with W_k^e folded into the query and
    W_v^e applied after the softmax, every expert attends over the same raw keys and values, so
    the served pairs of all experts run as the rows of one attention call."""
    b, h, n, _ = q4.shape
    experts = served.shape[-1]
    pairs = served.reshape(b, h, n * experts)
    counts = pairs.sum(axis=-1)
    width = int(counts.max())
    out = np.zeros((b, h, n, v4.shape[-1]))
    if width:
        # served pairs first, by (position, expert); a group's padding rows are unserved pairs
        order = np.argsort(~pairs, axis=-1, kind="stable")[..., :width]
        positions, expert = np.divmod(order, experts)
        real = np.arange(width) < counts[..., None]
        queries = np.take_along_axis(q4, positions[..., None], axis=2)
        folded = np.empty_like(queries)
        for e in range(experts):
            rows = expert == e
            folded[rows] = _fold_keys_into_query(queries[rows], weights, e)
        attended = _attend_rows(folded, k4, v4, mask4, causal, scale, positions, n)
        gate = np.take_along_axis(gates.reshape(b, h, n * experts), order, axis=-1)
        for e in range(experts):
            rows = (expert == e) & real
            bi, hi, _ = np.nonzero(rows)
            # one row per (batch, head, position) for each expert: the indexed += adds it once
            out[bi, hi, positions[rows]] += gate[rows][:, None] * (attended[rows]
                                                                  @ weights["w_v"][e])
    check_finite("mixture-of-experts output (overflow: inputs or weights too large)", out)
    return out.astype(np.float32)


class MoEAttention(_TokenRoutedExperts):
    """Mixture of attention heads: each query token goes to its top-k experts by p_i =
    softmax(q_i W_r); out_i = Σ_{e∈topk(i)} p̃_{i,e}·Expert_e(q_i), p̃ the top-k probabilities
    renormalised to sum to 1 (= softmax over the top-k router logits)."""

    spec = MechanismSpec(
        name="moe-attention", category="moe", complexity="O(n²/E)",
        use_case="Task specialization",
        paper="Zhang et al. 2022, Mixture of Attention Heads: Selecting Attention Heads Per Token "
              "(arXiv:2210.05144)",
        compiled=True,
        notes="top-k gates renormalised over the chosen experts (ties: lower expert index); only "
              "the n·k routed (token, expert) pairs are attended, as rows of one rerank.attention "
              "call; the paper shares W_k/W_v across experts (pass equal w_k/w_v slices for "
              "that) and adds a per-expert output projection (fold it into w_v)")

    def __init__(self, *, num_experts=4, top_k=2, seed=0, w_q=None, w_k=None, w_v=None,
                 w_router=None):
        super().__init__(num_experts=num_experts, seed=seed, w_q=w_q, w_k=w_k, w_v=w_v,
                         w_router=w_router)
        self.top_k = _check_count("top_k", top_k)
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({top_k}) must not exceed num_experts ({num_experts})")

    def _route(self, probs):
        ranked = np.argsort(-probs, axis=-1, kind="stable")[..., :self.top_k]
        served = np.zeros(probs.shape, dtype=bool)
        np.put_along_axis(served, ranked, True, axis=-1)
        kept = np.where(served, probs, 0.0)
        return kept / kept.sum(axis=-1, keepdims=True), served


class SwitchAttention(_TokenRoutedExperts):
    """Switch routing: token i goes to e = argmax p_i; each expert serves at most
    C = ⌈capacity_factor·n/E⌉ tokens, first come first served in position order; out_i =
    p_{i,e}·Expert_e(q_i), and a dropped (overflow) token's output is 0."""

    spec = MechanismSpec(
        name="switch-attention", category="moe", complexity="O(n²/E)",
        use_case="Sparse activation",
        paper="Fedus et al. 2022, Switch Transformers: Scaling to Trillion Parameter Models with "
              "Simple and Efficient Sparsity (arXiv:2101.03961)",
        compiled=True,
        notes="capacity per expert and per (batch, head) sequence; overflow tokens beyond capacity "
              "(later positions first) are dropped with output 0, as in the paper where the "
              "residual connection carries them")

    def __init__(self, *, num_experts=4, capacity_factor=1.25, seed=0, w_q=None, w_k=None,
                 w_v=None, w_router=None):
        super().__init__(num_experts=num_experts, seed=seed, w_q=w_q, w_k=w_k, w_v=w_v,
                         w_router=w_router)
        self.capacity_factor = _check_capacity_factor(capacity_factor)

    def capacity(self, n: int) -> int:
        """Tokens one expert serves at most in a sequence of n queries."""
        return math.ceil(self.capacity_factor * n / self.num_experts)

    def _route(self, probs):
        choice = np.argmax(probs, axis=-1)
        wanted = np.arange(self.num_experts) == choice[..., None]
        arrival = np.cumsum(wanted, axis=-2)            # 1-based rank among the expert's tokens
        served = wanted & (arrival <= self.capacity(probs.shape[-2]))
        return np.where(served, probs, 0.0), served


class ExpertChoiceAttention(_TokenRoutedExperts):
    """Expert-choice routing: each expert picks its c = min(n, ⌈capacity_factor·n/E⌉) tokens with
    the highest p_{i,e}; out_i = Σ_{e picks i} p_{i,e}·Expert_e(q_i) (a token may be picked by
    several experts or by none, then out_i = 0)."""

    spec = MechanismSpec(
        name="expert-choice-attention", category="moe", complexity="O(n²/E)",
        use_case="Load balanced",
        paper="Zhou et al. 2022, Mixture-of-Experts with Expert Choice Routing (arXiv:2202.09368)",
        compiled=True,
        notes="quota per expert and per (batch, head) sequence; ties broken by position; the "
              "choice looks at every query's router score, so routing is not causal even when "
              "the attention is")

    def __init__(self, *, num_experts=4, capacity_factor=2.0, seed=0, w_q=None, w_k=None,
                 w_v=None, w_router=None):
        super().__init__(num_experts=num_experts, seed=seed, w_q=w_q, w_k=w_k, w_v=w_v,
                         w_router=w_router)
        self.capacity_factor = _check_capacity_factor(capacity_factor)

    def quota(self, n: int) -> int:
        """Tokens each expert picks from a sequence of n queries."""
        return min(n, math.ceil(self.capacity_factor * n / self.num_experts))

    def _route(self, probs):
        picked = np.argsort(-probs, axis=-2, kind="stable")[..., :self.quota(probs.shape[-2]), :]
        served = np.zeros(probs.shape, dtype=bool)
        np.put_along_axis(served, picked, True, axis=-2)
        return np.where(served, probs, 0.0), served


class SoftMoEAttention(_AttentionExperts):
    """Soft MoE with attention experts: logits L = q Φ (n × E·s); dispatch D = softmax over tokens
    per slot, slot queries q̃ = Dᵀq; expert e attends with its s slots as queries over the shared
    keys/values, Ỹ = Expert_e(q̃); combine C = softmax over slots per token, out = C·Ỹ."""

    spec = MechanismSpec(
        name="soft-moe-attention", category="moe", complexity="O(n²)",
        use_case="Smooth routing",
        paper="Puigcerver et al. 2024, From Sparse to Soft Mixtures of Experts (arXiv:2308.00951)",
        compiled=True,
        notes="slots are convex mixtures of the query tokens and act as the experts' queries; "
              "every slot sees every key, so causal and per-query masks are unsupported (a key "
              "mask whose query axis has size 1 passes through); Φ is not normalised (the paper "
              "l2-normalises X and Φ at large d); the slot attention runs in rerank.attention, "
              "dispatch/combine are numpy matmuls")

    supports_causal = False

    def __init__(self, *, num_experts=4, slots_per_expert=1, seed=0, w_q=None, w_k=None, w_v=None,
                 phi=None):
        super().__init__(num_experts=num_experts, seed=seed, w_q=w_q, w_k=w_k, w_v=w_v)
        self.slots_per_expert = _check_count("slots_per_expert", slots_per_expert)
        self._add_given("phi", phi, self.num_experts * self.slots_per_expert,
                        "num_experts·slots_per_expert")

    def _draw_routing(self, rng, d):
        return {"phi": _scaled_normal(rng, d, self.num_experts * self.slots_per_expert)}

    def _expected_shapes(self, d, dv):
        return {**super()._expected_shapes(d, dv),
                "phi": (d, self.num_experts * self.slots_per_expert)}

    def not_supported_reasons(self, q, k, v, *, mask=None, causal=False):
        reasons = super().not_supported_reasons(q, k, v, mask=mask, causal=causal)
        if causal:
            reasons = [f"{self.spec.name} does not support causal masking: each slot mixes every "
                       "query token", *reasons[1:]]
        if mask is not None and np.ndim(mask) >= 2 and np.shape(mask)[-2] != 1:
            reasons.append(f"{self.spec.name} supports only key masks (query axis of size 1): "
                           f"slots, not query tokens, attend; got mask shape {np.shape(mask)}")
        return reasons

    def dispatch_combine(self, q, k, v) -> tuple[np.ndarray, np.ndarray]:
        """(D, C), both (b, h, n, E·s): D sums to 1 over tokens, C sums to 1 over slots."""
        q4, _, _, _, _, _, weights = self._prepare(q, k, v, None, None)
        return self._dispatch_combine(q4, weights["phi"])

    @staticmethod
    def _dispatch_combine(q4, phi):
        logits = q4.astype(np.float64) @ phi.astype(np.float64)
        return reference.softmax(logits, axis=-2), reference.softmax(logits, axis=-1)

    def _forward(self, q, k, v, *, mask=None, causal=False, scale=None):
        q4, k4, v4, mask4, scale, out_shape, weights = self._prepare(q, k, v, mask, scale)
        dispatch, combine = self._dispatch_combine(q4, weights["phi"])
        slot_queries = (np.swapaxes(dispatch, -1, -2) @ q4).astype(np.float32)    # (b, h, E·s, d)
        key_mask = None if mask4 is None else mask4[:, :, :1, :]
        slots_of = [slice(e * self.slots_per_expert, (e + 1) * self.slots_per_expert)
                    for e in range(self.num_experts)]
        folded = np.concatenate([_fold_keys_into_query(slot_queries[:, :, slots], weights, e)
                                 for e, slots in enumerate(slots_of)], axis=2)
        attended = attention(folded, k4, v4, mask=key_mask, scale=scale)
        outputs = [_project(attended[:, :, slots], weights["w_v"][e])
                   for e, slots in enumerate(slots_of)]
        out = combine @ np.concatenate(outputs, axis=2)
        check_finite("soft-moe output (overflow: inputs or weights too large)", out)
        return out.astype(np.float32).reshape(out_shape)


MECHANISMS = (MoEAttention, SoftMoEAttention, SwitchAttention, ExpertChoiceAttention)
