"""``AttentionService``: one object that selects a mechanism and a backend, rounds inputs to a
storage precision, caches, batches and reranks (DESIGN.md, "Selection").

Results. ``forward`` returns an :class:`AttentionResult`: the output array plus the mechanism,
backend and precision that actually ran, whether it came from the cache, the selection reason and
timings (ms). ``np.asarray(result)`` gives the output. ``rerank`` returns the Reranker's
:class:`~rerank.reranker.RankedResults` (it records mechanism and backend itself).

Backends. ``backend='compiled'`` or ``'numpy'`` forces that backend for the service's calls;
``'auto'`` runs on the process-wide setting (``RERANK_BACKEND`` / :func:`rerank.set_backend`:
compiled when the extension imports, unless numpy was asked for). The backend in
:mod:`rerank.backend` is process-wide state, so the service switches it through a gate shared by
every service in the process: calls that want the same backend run concurrently; a call that wants
another backend waits until they finish, sets it, and the last call out restores the previous
setting. Code that calls ``rerank.set_backend``/``use_backend`` directly while service calls run
is not coordinated with the gate (its setting may be overwritten when they finish).

Precision. ``precision='fp16'`` rounds q, k and v to float16; ``'int8'`` quantises each row of the
last axis symmetrically (:func:`rerank.quantization.quantize_int8`: code = rint(x/s), s =
max|row|/127) and dequantises; accumulation is float32 in every kernel. Per element the rounding
error is e ≤ max(2⁻¹¹·|x|, 2⁻²⁵) (fp16) or e ≤ s_row/2 (int8). For the exact-attention mechanisms
(:data:`EXACT_MECHANISMS`) :func:`precision_error_bound` turns that into a guaranteed bound per
query row: with Δ_i = scale·max_j Σ_t (e_q|k| + |q|e_k + e_q·e_k) every logit moves by ≤ Δ_i,
the softmax weights by ≤ tanh(Δ_i) in total variation, so |Δout_i| ≤ tanh(Δ_i)·range(ṽ) + max e_v
(plus the kernels' own float32 error, ~1e-6 relative). The bound assumes every rounding error
lines up against the result, so it is loose: for unit-variance Gaussian q, k, v with n = 256,
d = 64 it is ~0.06 (fp16) and ~1.5 (int8, i.e. no better than v's range) while the measured
errors are 2.6e-4 (fp16) and 6.6e-3 (int8); the tests check the guaranteed bound, and the
measured errors against 10× margins (2e-3 and 5e-2, stated as measured). Other mechanisms see the
same per-element input errors; no bound is derived for them.

Caching. With ``enable_cache`` results are kept in an :class:`~rerank.cache.AttentionCache` keyed
by xxh3-128 of the whole inputs, shapes, mechanism, parameters, precision and backend. A hit
returns a fresh copy of the cached output. Inputs whose q, k and v together hold fewer than
:data:`MIN_CACHE_BYTES` bytes are not cached: hashing and looking them up costs more than
computing them (measured: ``benchmarks/bench_service.py``).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import backend as _backend
from .cache import DEFAULT_MAX_BYTES, AttentionCache, UnhashableParameter, cache_key
from .mechanisms import registry
from .quantization import HALF_STEP, dequantize_int8, quantize_int8
from .selector import MechanismSelector
from .validation import as_float32, check_finite

BACKENDS = ("auto", "compiled", "numpy")
PRECISIONS = ("fp32", "fp16", "int8")

#: Below this many input bytes (q + k + v) the service does not cache. Measured
#: (benchmarks/bench_service.py, flash-attention-v2, compiled, shared 2-core machine): up to
#: ~12-18 KiB, key + lookup (~10-17 µs, mostly Python overhead) costs as much as computing
#: (~15-22 µs); from ~24 KiB (d = 64, n = 32) computing costs ≥ 2× the lookup.
MIN_CACHE_BYTES = 16 * 1024

#: Mechanisms computing exact softmax attention, for which :func:`precision_error_bound` holds.
EXACT_MECHANISMS = ("flash-attention-v2", "blockwise-attention", "flash-decoding")

#: Largest finite float16 magnitude.
FP16_MAX = 65504.0
_FP16_REL, _FP16_ABS = 2.0 ** -11, 2.0 ** -25
_F32_REL = 2.0 ** -23


# ---------------------------------------------------------------------------------------------
# The process-wide backend gate

class _BackendGate:
    """Lets calls wanting the same backend run together; a call wanting another one waits.
    ``None`` means "whatever the process-wide setting is" (the service's 'auto')."""

    def __init__(self):
        self._cond = threading.Condition()
        self._name = None
        self._users = 0
        self._saved = None

    @contextlib.contextmanager
    def use(self, name: str | None):
        with self._cond:
            while self._users and self._name != name:
                self._cond.wait()
            if self._users == 0:
                self._saved = _backend.requested()
                if name is not None:
                    _backend.set_backend(name)
                self._name = name
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                if self._users == 0:
                    if self._name is not None:
                        _backend.set_backend(self._saved)
                    self._name = None
                    self._cond.notify_all()


_gate = _BackendGate()


# ---------------------------------------------------------------------------------------------
# Precision

def round_to_precision(x: np.ndarray, precision: str, name: str = "x") -> np.ndarray:
    """``x`` (float32) as stored at ``precision`` and read back as float32: fp32 unchanged, fp16
    cast (ValueError beyond ±65504), int8 symmetric per row of the last axis."""
    if precision == "fp32":
        return x
    check_finite(name, x)
    if precision == "fp16":
        if x.size and float(np.abs(x).max()) > FP16_MAX:
            raise ValueError(f"{name} has values beyond float16's range (±{FP16_MAX:g}); use "
                             "precision='int8' (scaled per row) or 'fp32'")
        return x.astype(np.float16).astype(np.float32)
    if precision == "int8":
        rows = quantize_int8(x.reshape(-1, x.shape[-1]))
        return dequantize_int8(rows.codes, rows.scales).reshape(x.shape)
    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")


def rounding_error(x: np.ndarray, precision: str) -> np.ndarray:
    """An elementwise bound (float64, x's shape) on |round_to_precision(x) − x|."""
    ax = np.abs(x.astype(np.float64))
    if precision == "fp32":
        return np.zeros_like(ax)
    if precision == "fp16":
        err = np.maximum(_FP16_REL * ax, _FP16_ABS)
    elif precision == "int8":
        scales = ax.max(axis=-1, keepdims=True) / 127.0
        err = np.broadcast_to(HALF_STEP * scales * (1 + 2 * _F32_REL), ax.shape)
    else:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return err + _F32_REL * (ax + err)


def precision_error_bound(q, k, v, precision: str, *, scale=None) -> np.ndarray:
    """A guaranteed bound on max_c |out_{precision} − out_{fp32}| per query row (q's shape without
    the last axis) for exact softmax attention, any mask (the kernels' own float32 error aside)."""
    from .attention import prepare
    from .reference import expand_kv_heads

    q4, k4, v4, _, scale, out_shape = prepare(q, k, v, None, scale)
    h = q4.shape[1]
    eq = rounding_error(q4, precision)
    ek = expand_kv_heads(rounding_error(k4, precision), h)
    ka = expand_kv_heads(np.abs(k4.astype(np.float64)), h)
    qa = np.abs(q4.astype(np.float64))
    kt = lambda x: np.swapaxes(x, -1, -2)  # noqa: E731
    delta = (scale * (eq @ kt(ka) + qa @ kt(ek) + eq @ kt(ek))).max(axis=-1)      # (b, h, n)
    v64 = v4.astype(np.float64)
    ev = rounding_error(v4, precision).max(axis=(-1, -2))                            # (b, h_kv)
    spread = (v64.max(axis=-2) - v64.min(axis=-2)).max(axis=-1) + 2 * ev             # range of ṽ
    per_head = lambda x: expand_kv_heads(x[..., None, None], h)[..., 0]  # noqa: E731
    bound = np.tanh(delta) * per_head(spread) + per_head(ev)
    return bound.reshape(out_shape[:-1])


# ---------------------------------------------------------------------------------------------
# Results

@dataclass
class AttentionResult:
    """What ``forward`` computed: ``output`` and the ``mechanism``, ``backend`` and ``precision``
    that ran, ``cache_hit``, the selection ``reason`` and ``timings_ms`` (cache, compute, total)."""
    output: np.ndarray
    mechanism: str
    backend: str
    precision: str
    cache_hit: bool
    reason: str
    timings_ms: dict = field(default_factory=dict)

    def __array__(self, dtype=None, copy=None):
        return self.output if dtype is None else self.output.astype(dtype)

    @property
    def shape(self) -> tuple:
        return self.output.shape

    def to_dict(self) -> dict:
        """Everything but the output array (JSON-ready), with the output's shape."""
        return {"mechanism": self.mechanism, "backend": self.backend,
                "precision": self.precision, "cache_hit": self.cache_hit, "reason": self.reason,
                "shape": list(self.output.shape), "timings_ms": dict(self.timings_ms)}

    def __repr__(self) -> str:
        return (f"AttentionResult(shape={self.output.shape}, mechanism={self.mechanism!r}, "
                f"backend={self.backend!r}, precision={self.precision!r}, "
                f"cache_hit={self.cache_hit})")


def _init_params(factory) -> tuple[set, bool]:
    """Keyword names the factory (constructor) takes, and whether it takes **kwargs."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in sig.parameters.values()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return names, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


_INSTANCE_CACHE_SIZE = 64


class AttentionService:
    """Select, run, cache, batch and rerank attention. ``forward`` without a mechanism runs what
    ``recommend`` names for the input (the DESIGN's selector with this service's settings);
    every result records the mechanism, backend and precision that ran (see the module docs)."""

    def __init__(self, backend: str = "auto", *, default_mechanism: str = "flash-attention-v2",
                 fallback_mechanism: str = "linear-attention", long_sequence_threshold: int = 8192,
                 precision: str = "fp32", enable_cache: bool = True,
                 cache_bytes: int = DEFAULT_MAX_BYTES, min_cache_bytes: int = MIN_CACHE_BYTES,
                 max_workers: int | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if backend == "compiled" and _backend._kernels is None:
            raise RuntimeError(f"backend 'compiled' requested but {_backend._import_error}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; "
                             f"got {precision!r}")
        if isinstance(min_cache_bytes, bool) or not isinstance(min_cache_bytes, int) \
                or min_cache_bytes < 0:
            raise ValueError(f"min_cache_bytes must be a non-negative integer; "
                             f"got {min_cache_bytes!r}")
        if max_workers is not None and (isinstance(max_workers, bool)
                                        or not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"max_workers must be a positive integer or None; got {max_workers!r}")
        self.backend = backend
        self.precision = precision
        self.selector = MechanismSelector(long_sequence_threshold=long_sequence_threshold,
                                          fallback_mechanism=fallback_mechanism,
                                          default_mechanism=default_mechanism)
        self.default_mechanism = default_mechanism
        self.fallback_mechanism = fallback_mechanism
        self.long_sequence_threshold = self.selector.long_sequence_threshold
        self.enable_cache = bool(enable_cache)
        self.cache = AttentionCache(cache_bytes) if self.enable_cache else None
        self.min_cache_bytes = min_cache_bytes
        self.max_workers = max_workers
        self._gate_name = None if backend == "auto" else backend
        self._recommended: dict = {}
        self._instances: dict = {}
        self._splits: dict = {}
        self._rerankers: dict = {}
        self._lock = threading.Lock()

    # -- selection -----------------------------------------------------------------------------
    def recommend(self, seq_len: int, batch_size: int = 1) -> dict:
        """``{"mechanism", "reason"}``: what ``forward`` runs for this sequence length and batch
        size when no mechanism is named (memoised per (seq_len, batch_size))."""
        if type(seq_len) is int and type(batch_size) is int:
            hit = self._recommended.get((seq_len, batch_size))
            if hit is not None:
                return {"mechanism": hit[0], "reason": hit[1]}
        sel = self.selector.explain(seq_len, batch_size)
        if len(self._recommended) >= 4096:
            self._recommended.clear()
        self._recommended[(seq_len, batch_size)] = (sel.mechanism, sel.reason)
        return {"mechanism": sel.mechanism, "reason": sel.reason}

    @staticmethod
    def workload(q_shape, k_shape=None) -> tuple[int, int]:
        """(seq_len, batch_size) of an input: seq_len = max(query rows n, keys m); batch_size = the
        leading axis of 4-D inputs, else 1."""
        k_shape = q_shape if k_shape is None else k_shape
        seq_len = max(int(q_shape[-2]), int(k_shape[-2]))
        return seq_len, int(q_shape[0]) if len(q_shape) == 4 else 1

    def _backend_for(self, spec) -> tuple[str, str | None]:
        """The backend a mechanism with ``spec`` runs on under this service now, and why not
        compiled (None when compiled)."""
        if self.backend == "numpy":
            return "numpy", "the service was created with backend='numpy' (forced)"
        if not spec.compiled:
            return "numpy", (f"{spec.name} has no compiled kernel (spec.compiled is False): it "
                             "runs numpy code on every backend")
        if self.backend == "compiled":
            return "compiled", None
        if _backend.active() == "compiled":
            return "compiled", None
        return "numpy", f"backend='auto' follows the process setting: {_backend.reason()}"

    # -- mechanisms ----------------------------------------------------------------------------
    def _mechanism(self, name: str, params: dict):
        """(instance, forward params): constructor parameters go to the registry factory, the
        rest to ``forward``. Instances built from hashable parameters are reused."""
        factory = registry._lookup(name)
        split_key = (name, id(factory), frozenset(params))
        split = self._splits.get(split_key)
        if split is None:
            init_names, init_var = _init_params(factory)
            to_init = {k for k in params if k in init_names}
            if init_var and len(to_init) < len(params):
                fwd = getattr(factory, "_forward", None)
                fwd_names, fwd_var = _init_params(fwd) if fwd is not None else (set(), True)
                if not fwd_var:
                    to_init |= {k for k in params if k not in fwd_names}
            split = frozenset(to_init)
            if len(self._splits) >= 1024:
                self._splits.clear()
            self._splits[split_key] = split
        init = {k: v for k, v in params.items() if k in split}
        rest = {k: v for k, v in params.items() if k not in split}
        try:
            key = (name, tuple(sorted(init.items())))
            hash(key)
        except TypeError:       # array weights: build a fresh instance
            return registry.get(name, **init), rest
        with self._lock:
            inst = self._instances.get(key)
        if inst is None:
            inst = registry.get(name, **init)
            with self._lock:
                if len(self._instances) >= _INSTANCE_CACHE_SIZE:
                    self._instances.clear()
                inst = self._instances.setdefault(key, inst)
        return inst, rest

    # -- forward -------------------------------------------------------------------------------
    def forward(self, q, k, v, *, mechanism: str | None = None, causal: bool = False,
                **params) -> AttentionResult:
        """Run ``mechanism`` (default: what ``recommend`` names for q, k's shapes) on q, k, v at
        the service's precision and backend; an :class:`AttentionResult`."""
        start = time.perf_counter()
        q = as_float32("q", q, (2, 3, 4))
        k = as_float32("k", k, (q.ndim,))
        v = as_float32("v", v, (q.ndim,))
        if mechanism is None:
            sel = self.recommend(*self.workload(q.shape, k.shape))
            mechanism, reason = sel["mechanism"], sel["reason"]
        else:
            if not isinstance(mechanism, str):
                raise TypeError(f"mechanism must be a registry name (str); "
                                f"got {type(mechanism).__name__}")
            reason = "requested by the caller"
        mech, fwd_params = self._mechanism(mechanism, params)
        causal = bool(causal)
        with _gate.use(self._gate_name):
            ran, _ = self._backend_for(mech.spec)
            key = None
            t_cache = 0.0
            if self.cache is not None and q.nbytes + k.nbytes + v.nbytes >= self.min_cache_bytes:
                t0 = time.perf_counter()
                try:
                    # keys with a leading space cannot clash with keyword parameters
                    key = cache_key((q, k, v), mechanism=mechanism,
                                    params={**params, " causal": causal,
                                            " precision": self.precision, " backend": ran})
                except UnhashableParameter:
                    key = None
                cached = self.cache.get(key) if key is not None else None
                t_cache = (time.perf_counter() - t0) * 1e3
                if cached is not None:
                    out = cached.copy()
                    total = (time.perf_counter() - start) * 1e3
                    return AttentionResult(out, mechanism, ran, self.precision, True, reason,
                                           {"cache": t_cache, "compute": 0.0, "total": total})
            t0 = time.perf_counter()
            qs = round_to_precision(q, self.precision, "q")
            ks = round_to_precision(k, self.precision, "k")
            vs = round_to_precision(v, self.precision, "v")
            out = mech.forward(qs, ks, vs, causal=causal, **fwd_params)
            t_compute = (time.perf_counter() - t0) * 1e3
            if key is not None:
                t0 = time.perf_counter()
                self.cache.put(key, out)
                t_cache += (time.perf_counter() - t0) * 1e3
        total = (time.perf_counter() - start) * 1e3
        return AttentionResult(out, mechanism, ran, self.precision, False, reason,
                               {"cache": t_cache, "compute": t_compute, "total": total})

    __call__ = forward

    @staticmethod
    def _item(i: int, item) -> tuple[tuple, dict]:
        if isinstance(item, dict):
            missing = [name for name in ("q", "k", "v") if name not in item]
            if missing:
                raise ValueError(f"items[{i}] is missing {', '.join(missing)} (a dict item needs "
                                 "'q', 'k', 'v' and optional 'mechanism', 'causal', parameters)")
            kwargs = {key: val for key, val in item.items() if key not in ("q", "k", "v")}
            return (item["q"], item["k"], item["v"]), kwargs
        if isinstance(item, (tuple, list)) and len(item) == 3:
            return tuple(item), {}
        raise TypeError(f"items[{i}] must be a (q, k, v) tuple or a dict with 'q', 'k', 'v'; "
                        f"got {type(item).__name__}")

    def forward_batch(self, items, *, max_workers: int | None = None) -> list[AttentionResult]:
        """``forward`` for each item ((q, k, v) or a dict of q, k, v, mechanism?, causal?,
        parameters), in parallel threads (the kernels release the GIL); results in item order,
        equal to a loop. The first failing item's error is raised."""
        if isinstance(items, (str, bytes, dict)) or not hasattr(items, "__iter__"):
            raise TypeError("items must be a list of (q, k, v) tuples or dicts")
        calls = [self._item(i, item) for i, item in enumerate(items)]
        if not calls:
            return []
        workers = max_workers or self.max_workers or os.cpu_count() or 1
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"max_workers must be a positive integer; got {workers!r}")
        workers = min(workers, len(calls))
        if workers == 1:
            return [self.forward(*args, **kwargs) for args, kwargs in calls]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rerank-service") as ex:
            futures = [ex.submit(self.forward, *args, **kwargs) for args, kwargs in calls]
            return [f.result() for f in futures]

    # -- rerank --------------------------------------------------------------------------------
    def _reranker(self, mechanism: str | None):
        from .reranker import Reranker

        with self._lock:
            reranker = self._rerankers.get(mechanism)
        if reranker is None:
            reranker = Reranker(mechanism)
            with self._lock:
                reranker = self._rerankers.setdefault(mechanism, reranker)
        return reranker

    def rerank(self, query, candidates, *, mechanism: str | None = None, top_k: int | None = None):
        """Candidates ranked for ``query`` by :class:`~rerank.reranker.Reranker` (``mechanism``
        None: chosen by what the candidates carry) on this service's backend; RankedResults."""
        reranker = self._reranker(mechanism)
        with _gate.use(self._gate_name):
            return reranker.rank(query, candidates, top_k=top_k)

    # -- explain -------------------------------------------------------------------------------
    def explain(self, q=None, k=None, v=None, *, seq_len: int | None = None,
                batch_size: int | None = None, mechanism: str | None = None,
                causal: bool = False, **params) -> dict:
        """Which mechanism and backend ``forward`` would run, and why: ``{"mechanism", "reason",
        "backend", "compiled", "compiled_reason" (why not compiled, None when compiled),
        "precision", "cache": {"used", "reason"}, "unsupported": [...], "seq_len",
        "batch_size"}``. Give the inputs (q, k, v; k and v default to q) or ``seq_len``."""
        arrays = None
        if q is not None:
            qa = as_float32("q", q, (2, 3, 4))
            ka = qa if k is None else as_float32("k", k, (qa.ndim,))
            va = ka if v is None else as_float32("v", v, (qa.ndim,))
            arrays = (qa, ka, va)
            shape_len, shape_batch = self.workload(qa.shape, ka.shape)
            if seq_len is not None and seq_len != shape_len:
                raise ValueError(f"seq_len={seq_len!r} disagrees with the inputs (seq_len "
                                 f"{shape_len})")
            seq_len = shape_len
            batch_size = shape_batch if batch_size is None else batch_size
        elif seq_len is None:
            raise ValueError("explain needs the inputs (q, k, v) or seq_len")
        batch_size = 1 if batch_size is None else batch_size
        if mechanism is None:
            sel = self.recommend(seq_len, batch_size)
            mechanism, reason = sel["mechanism"], sel["reason"]
        else:
            registry.spec(mechanism)
            reason = "requested by the caller"
        spec = registry.spec(mechanism)
        ran, why_not = self._backend_for(spec)
        info = {"mechanism": mechanism, "reason": reason, "backend": ran,
                "compiled": ran == "compiled", "compiled_reason": why_not,
                "service_backend": self.backend, "process_backend": _backend.active(),
                "precision": self.precision, "seq_len": seq_len, "batch_size": batch_size,
                "unsupported": []}
        if self.cache is None:
            info["cache"] = {"used": False, "reason": "the cache is disabled (enable_cache=False)"}
        elif arrays is None:
            info["cache"] = {"used": None, "reason": f"inputs of at least {self.min_cache_bytes} "
                             "bytes (q + k + v) are cached; give the inputs to know"}
        else:
            size = sum(a.nbytes for a in arrays)
            used = size >= self.min_cache_bytes
            info["cache"] = {"used": used, "reason": (
                f"{size} input bytes ≥ {self.min_cache_bytes}: looked up and stored" if used else
                f"{size} input bytes < {self.min_cache_bytes}: hashing costs more than "
                "computing, not cached")}
        if arrays is not None:
            mech, _ = self._mechanism(mechanism, params)
            info["unsupported"] = mech.not_supported_reasons(*arrays, mask=params.get("mask"),
                                                             causal=bool(causal))
        return info

    # -- async twins ---------------------------------------------------------------------------
    async def aforward(self, q, k, v, *, mechanism: str | None = None, causal: bool = False,
                       **params) -> AttentionResult:
        """``forward`` in a worker thread."""
        return await asyncio.to_thread(functools.partial(
            self.forward, q, k, v, mechanism=mechanism, causal=causal, **params))

    async def aforward_batch(self, items, *, max_workers: int | None = None):
        """``forward_batch`` in a worker thread."""
        return await asyncio.to_thread(functools.partial(self.forward_batch, items,
                                                         max_workers=max_workers))

    async def arerank(self, query, candidates, *, mechanism: str | None = None,
                      top_k: int | None = None):
        """``rerank`` in a worker thread."""
        return await asyncio.to_thread(functools.partial(self.rerank, query, candidates,
                                                         mechanism=mechanism, top_k=top_k))

    def cache_stats(self) -> dict | None:
        """The cache's counters (None when caching is off)."""
        return None if self.cache is None else self.cache.stats()

    def __repr__(self) -> str:
        return (f"AttentionService(backend={self.backend!r}, precision={self.precision!r}, "
                f"default={self.default_mechanism!r}, fallback={self.fallback_mechanism!r} above "
                f"{self.long_sequence_threshold}, cache={'on' if self.cache else 'off'})")


__all__ = ["AttentionResult", "AttentionService", "EXACT_MECHANISMS", "MIN_CACHE_BYTES",
           "precision_error_bound", "round_to_precision", "rounding_error"]
