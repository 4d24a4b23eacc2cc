"""The engine behind ``rerank benchmark`` and ``rerank compute``: seeded inputs, one checked forward,
and timed forwards of registry mechanisms against numpy and (when installed) torch SDPA.

Inputs are ``(heads, seq_len, dim // heads)`` float32 self-attention triples (q, k, v), standard
normal, drawn from ``numpy.random.default_rng(seed)``. ``dim`` is the model dimension, split evenly
across the heads. Mechanisms run with their registry defaults, except the size bounds raised in
:data:`SIZE_PARAMS`.

No number is a cache hit: mechanisms are called directly (``registry.get(name).forward``), never
through an ``AttentionService`` or its result cache, and every timed round gets a new random q, k, v
(drawn outside the timed region). What a mechanism builds once per *shape* — lazily drawn weights,
a sparse pattern's CSR structure — is built by an untimed warm-up call, as it is in use.
"""
from __future__ import annotations

import gc
import hashlib
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import backend, reference

#: Mechanisms whose forward, with registry defaults, equals exact attention
#: softmax(q·kᵀ/√d)·v (DESIGN.md "Contracts": the same function by other algorithms, or projections
#: that default to the identity), with the relative tolerance (to the output's scale) they meet
#: against ``rerank.reference.attention``. flash-attention-v3 is exact attention of its inputs
#: rounded to fp16, hence its looser bound. tests/test_cli_commands.py checks every entry.
EXACT_MECHANISMS: dict[str, float] = {
    "standard-mha": 1e-4,
    "grouped-query-attention": 1e-4,
    "bidirectional-self-attention": 1e-4,
    "talking-heads-attention": 1e-4,
    "cross-attention": 1e-4,
    "memory-attention": 1e-4,
    "hierarchical-cross-attention": 1e-4,
    "blockwise-attention": 1e-4,
    "flash-attention-v2": 1e-4,
    "flash-attention-v3": 1e-2,
    "flash-decoding": 1e-4,
}

#: Relative tolerance of a sparse mechanism against exact attention under its own pattern
#: (``mechanism.pattern(n, m, heads=h, causal=…)`` used as the mask).
PATTERN_TOLERANCE = 1e-4

#: Parameters raised to the sequence length so that the mechanism serves every benchmarked length:
#: name → function of the longest sequence length giving extra constructor parameters.
SIZE_PARAMS: dict[str, Callable[[int], dict]] = {
    "synthesizer-attention": lambda n: {"max_len": max(512, n)},
}

#: The numpy reference materialises (heads, n, m) float64 logits; above this many elements
#: (1 GiB of float64) ``compute`` skips it and says so.
REFERENCE_MAX_ELEMENTS = 1 << 27


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def head_dim(dim: int, heads: int) -> int:
    """``dim // heads``; ValueError when ``dim`` is not a positive multiple of ``heads``."""
    dim, heads = _positive("dim", dim), _positive("heads", heads)
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads}): each head gets "
                         f"dim / heads features (e.g. dim "
                         + " or ".join(str(x) for x in sorted({heads * max(1, dim // heads),
                                                               heads * (dim // heads + 1)}))
                         + f" with {heads} heads)")
    return dim // heads


def random_inputs(seq_len: int, dim: int, heads: int = 1, seed=0):
    """Seeded standard-normal float32 q, k, v of shape ``(heads, seq_len, dim // heads)``
    (``seed``: anything ``numpy.random.default_rng`` takes: an int ≥ 0 or a list of them)."""
    seq_len = _positive("seq_len", seq_len)
    d = head_dim(dim, heads)
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((heads, seq_len, d), dtype=np.float32) for _ in range(3))


def build(name: str, seq_len: int = 0):
    """A ready instance of registry mechanism ``name`` (with :data:`SIZE_PARAMS` for
    ``seq_len``); an unknown name raises ValueError with close matches."""
    from .mechanisms import registry

    extra = SIZE_PARAMS.get(name)
    return registry.get(name, **(extra(seq_len) if extra and seq_len else {}))


def reference_output(name: str, mechanism, q, k, v, *, causal: bool = False):
    """``(kind, expected, tolerance)``: the exact reference for ``mechanism`` on these inputs —
    kind ``"exact"`` (a mechanism of :data:`EXACT_MECHANISMS`), ``"pattern"`` (a sparse mechanism:
    exact attention under its own pattern), else ``(None, None, None)``."""
    if name in EXACT_MECHANISMS:
        return "exact", reference.attention(q, k, v, causal=causal), EXACT_MECHANISMS[name]
    if _has_pattern(mechanism):
        heads = q.shape[0] if q.ndim >= 3 else 1
        mask = mechanism.pattern(q.shape[-2], k.shape[-2], heads=heads, causal=causal)
        if mask.shape[-2:] == (q.shape[-2], k.shape[-2]):    # star-attention's is over its
            return "pattern", reference.attention(q, k, v, mask=mask, causal=causal), \
                PATTERN_TOLERANCE                            # relay keys too: no reference
    return None, None, None


def _has_pattern(mechanism) -> bool:
    """A sparse mechanism exposing ``pattern(n, m, heads=…, causal=…)`` (its mask over the keys)."""
    return mechanism.spec.category == "sparse" and callable(getattr(mechanism, "pattern", None))


def checksum(out: np.ndarray) -> dict:
    """sha256 of the C-contiguous float32 bytes, with the sum and mean (in float64)."""
    arr = np.ascontiguousarray(out, dtype=np.float32)
    return {"sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
            "sum": float(arr.sum(dtype=np.float64)), "mean": float(arr.mean(dtype=np.float64))}


def compute(mechanism: str, seq_len: int, dim: int, heads: int = 1, *, causal: bool = False,
            seed: int = 0) -> dict:
    """One timed forward of ``mechanism`` on :func:`random_inputs`: shape, milliseconds, backend,
    checksum, and the max error against the exact reference where one exists."""
    q, k, v = random_inputs(seq_len, dim, heads, seed)
    mech = build(mechanism, seq_len)
    start = time.perf_counter()
    out = mech.forward(q, k, v, causal=bool(causal))
    ms = (time.perf_counter() - start) * 1e3
    result = {"mechanism": mechanism, "category": mech.spec.category, "backend": mech.backend,
              "input_shape": list(q.shape), "shape": list(out.shape), "seq_len": seq_len,
              "dim": dim, "heads": heads, "head_dim": q.shape[-1], "causal": bool(causal),
              "seed": seed, "ms": round(ms, 3), "checksum": checksum(out)}
    elements = q.shape[0] * q.shape[1] * k.shape[1]
    known = mechanism in EXACT_MECHANISMS or _has_pattern(mech)
    if known and elements > REFERENCE_MAX_ELEMENTS:
        result["reference"] = {"kind": None, "note": f"reference skipped: heads·n·m = {elements} "
                               f"> {REFERENCE_MAX_ELEMENTS} float64 logits"}
        return result
    kind, expected, tol = reference_output(mechanism, mech, q, k, v, causal=bool(causal))
    if kind is None:
        result["reference"] = {"kind": None, "note": "no exact reference: this mechanism computes "
                               "another function than exact attention"}
        return result
    err = float(np.abs(out.astype(np.float64) - expected).max()) if out.size else 0.0
    scale = max(1.0, float(np.abs(expected).max()) if expected.size else 0.0)
    result["reference"] = {
        "kind": kind,
        "note": ("rerank.reference.attention (float64 numpy)" if kind == "exact" else
                 "rerank.reference.attention under the mechanism's own sparse pattern"),
        "max_abs_error": err, "tolerance": tol * scale, "within_tolerance": err <= tol * scale}
    return result


# ------------------------------------------------------------------------------ benchmark
@dataclass
class BenchmarkSettings:
    """What ``run_benchmark`` times: mechanisms × sequence lengths, with ``rounds`` fresh inputs
    each; numpy comparisons only up to ``numpy_max_seq_len`` (O(n²) float64 memory and time)."""
    mechanisms: list[str]
    seq_lens: list[int] = field(default_factory=lambda: [256, 1024, 4096])
    dim: int = 256
    heads: int = 4
    rounds: int = 3
    seed: int = 0
    numpy_max_seq_len: int = 1024
    torch: bool = True

    def validate(self) -> "BenchmarkSettings":
        """Check every field (ValueError naming the field); returns self."""
        from .mechanisms import registry

        if not self.mechanisms:
            raise ValueError("mechanisms must name at least one mechanism")
        for name in self.mechanisms:
            registry.spec(name)                     # unknown → ValueError with suggestions
        if not self.seq_lens:
            raise ValueError("seq_lens must hold at least one sequence length")
        self.seq_lens = sorted({_positive("seq_len", n) for n in self.seq_lens})
        head_dim(self.dim, self.heads)
        self.rounds = _positive("rounds", self.rounds)
        self.numpy_max_seq_len = _positive("numpy_max_seq_len", self.numpy_max_seq_len)
        return self


def machine_info() -> dict:
    """The machine, thread counts and library versions a benchmark ran with."""
    import scipy

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    from . import __version__

    status = backend.status()
    return {
        "platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
        "usable_cpus": cpus, "python": sys.version.split()[0],
        "versions": {"rerank": __version__, "numpy": np.__version__, "scipy": scipy.__version__},
        "backend": status["backend"], "backend_reason": status["reason"],
        "rerank_threads": status["threads"], "openmp": status["openmp"],
        "native": status["native"],
        "blas": [{k: lib[k] for k in ("internal_api", "version", "num_threads")}
                 for lib in status["blas"]],
    }


def _torch():
    """torch, or None when it is not installed (imported only here, lazily)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _time(fn, inputs_for_round, rounds: int) -> tuple[list[float], object]:
    """Milliseconds of ``fn(*inputs)`` per round, each round on its own inputs (made untimed);
    returns the times and the last output."""
    times, out = [], None
    for r in range(rounds):
        args = inputs_for_round(r)
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            out = fn(*args)
            times.append((time.perf_counter() - start) * 1e3)
        finally:
            gc.enable()
    return times, out


def _summary(times: list[float]) -> dict:
    return {"median_ms": round(statistics.median(times), 4), "min_ms": round(min(times), 4),
            "rounds_ms": [round(t, 4) for t in times]}


def run_benchmark(settings: BenchmarkSettings, progress: Callable[[str], None] | None = None
                  ) -> dict:
    """Time every mechanism at every sequence length (see the module docstring) with its numpy
    counterpart and torch SDPA; ``progress(label)`` is called after each step. Returns the report
    (settings, machine, baselines per length, one result per mechanism and length)."""
    from .mechanisms import registry

    settings.validate()
    step = progress or (lambda label: None)
    torch = None
    h, d = settings.heads, head_dim(settings.dim, settings.heads)
    longest = max(settings.seq_lens)
    round_seed = settings.seed

    def inputs(n: int):
        def for_round(r: int):
            return random_inputs(n, settings.dim, h, seed=[round_seed, n, r + 1])
        return for_round

    machine = machine_info()
    report = {
        "settings": asdict(settings), "machine": machine, "head_dim": d,
        "caches": "bypassed: mechanisms are called directly (registry.get(name).forward), never "
                  "through a service or result cache; each round draws new random q, k, v "
                  "outside the timed region; per-shape weights and sparse patterns are built by "
                  "an untimed warm-up call",
        "baselines": [], "results": []}
    machine["torch_threads"] = None
    saved_torch_threads = None
    try:
        reference_ms: dict[int, float] = {}
        baselines = {n: {"seq_len": n, "numpy_reference": None, "torch_sdpa": None}
                     for n in settings.seq_lens}
        report["baselines"] = list(baselines.values())
        for n in settings.seq_lens:
            base = baselines[n]
            if n <= settings.numpy_max_seq_len:
                ref = reference.attention
                times, _ = _time(lambda q, k, v: ref(q, k, v), inputs(n), settings.rounds)
                base["numpy_reference"] = _summary(times)
                reference_ms[n] = base["numpy_reference"]["median_ms"]
            else:
                base["numpy_reference_skipped"] = (f"seq_len {n} > numpy_max_seq_len "
                                                   f"{settings.numpy_max_seq_len}")
            step(f"numpy reference n={n}")
        for name in settings.mechanisms:
            spec = registry.spec(name)
            mech = build(name, longest)
            for n in settings.seq_lens:
                row = {"mechanism": name, "category": spec.category,
                       "complexity": spec.complexity, "compiled": spec.compiled,
                       "backend": mech.backend, "seq_len": n}
                try:
                    row.update(_bench_one(name, mech, n, inputs(n), settings, reference_ms))
                except (ValueError, TypeError, RuntimeError, MemoryError) as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"
                report["results"].append(row)
                step(f"{name} n={n}")
        # torch last, imported only now: it loads its OpenMP runtime globally, after which the
        # kernels' OpenBLAS, called inside their OpenMP regions, warns of an "OpenMP loop"
        torch = _torch() if settings.torch else None
        if torch is not None:
            machine["versions"]["torch"] = torch.__version__
            saved_torch_threads = torch.get_num_threads()
            torch.set_num_threads(backend.get_num_threads())    # as many threads as ours
            machine["torch_threads"] = torch.get_num_threads()
        for n in settings.seq_lens if torch is not None else ():
            baselines[n]["torch_sdpa"] = _summary(_time_sdpa(torch, inputs(n), settings.rounds))
            step(f"torch SDPA n={n}")
        for row in report["results"]:
            sdpa = baselines[row["seq_len"]]["torch_sdpa"]
            if "median_ms" in row and sdpa is not None:
                row["torch_sdpa_ms"] = sdpa["median_ms"]
                row["speedup_vs_torch"] = round(sdpa["median_ms"] / row["median_ms"], 4) \
                    if row["median_ms"] > 0 else None
    finally:
        if saved_torch_threads is not None:
            torch.set_num_threads(saved_torch_threads)
    return report


def _time_sdpa(torch, for_round, rounds: int) -> list[float]:
    """Milliseconds of torch's scaled_dot_product_attention per round (after a warm-up)."""
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run(q, k, v):
        with torch.no_grad():
            return sdpa(torch.from_numpy(q)[None], torch.from_numpy(k)[None],
                        torch.from_numpy(v)[None])

    run(*for_round(-1))
    return _time(run, for_round, rounds)[0]


def total_steps(settings: BenchmarkSettings) -> int:
    """How many times ``run_benchmark`` calls ``progress``."""
    per_length = len(settings.mechanisms) + 1 + (1 if settings.torch else 0)
    return len(settings.seq_lens) * per_length


def _bench_one(name, mech, n, for_round, settings, reference_ms) -> dict:
    """Warm-up, timed rounds, and the numpy comparison for one mechanism at one length."""
    mech.forward(*for_round(-1))                               # untimed: weights, patterns
    times, out = _time(mech.forward, for_round, settings.rounds)
    row = _summary(times)
    last = for_round(settings.rounds - 1)
    if n > settings.numpy_max_seq_len:
        row["numpy"] = None
        row["numpy_skipped"] = f"seq_len {n} > numpy_max_seq_len {settings.numpy_max_seq_len}"
        return row
    if name in EXACT_MECHANISMS:
        row["numpy"] = "rerank.reference.attention"
        row["numpy_ms"] = reference_ms[n]
        expected = reference.attention(*last)
    elif not mech.spec.compiled:
        row["numpy"] = "itself (no compiled kernel: its forward is numpy)"
        row["numpy_ms"] = row["median_ms"]
        expected = out
    else:
        with backend.use_backend("numpy"):
            numpy_times, expected = _time(mech.forward, for_round, settings.rounds)
        row["numpy"] = "the mechanism on the numpy backend"
        row["numpy_ms"] = round(statistics.median(numpy_times), 4)
    row["speedup_vs_numpy"] = round(row["numpy_ms"] / row["median_ms"], 4) \
        if row["median_ms"] > 0 else None
    row["max_abs_error_vs_numpy"] = float(np.abs(out.astype(np.float64) - expected).max()) \
        if out.size else 0.0
    return row


# --------------------------------------------------------------------------------- reports
def _ms(value) -> str:
    return "—" if value is None else (f"{value:.3f}" if value < 10 else f"{value:,.1f}")


def _ratio(value) -> str:
    return "—" if value is None else f"{value:.2f}×"


def markdown(report: dict) -> str:
    """The report as markdown: settings and machine, the baselines, one row per mechanism and
    length (median ms over the rounds; ×numpy / ×torch = their time ÷ ours)."""
    s, m = report["settings"], report["machine"]
    lines = [
        "# rerank benchmark", "",
        f"{len(s['mechanisms'])} mechanisms · sequence lengths {', '.join(map(str, s['seq_lens']))}"
        f" · dim {s['dim']} = {s['heads']} heads × {report['head_dim']} · {s['rounds']} rounds "
        f"(median) · seed {s['seed']}", "",
        f"Machine: {m['cpu']} ({m['usable_cpus']} usable CPUs, {m['machine']}), {m['platform']}; "
        f"backend {m['backend']} with {m['rerank_threads']} threads; torch threads "
        f"{m.get('torch_threads') if m.get('torch_threads') is not None else '—'}; BLAS "
        + ", ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads)"
                    for b in m["blas"]) + ".", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".", "",
        f"Caches: {report['caches']}.", "",
        "| n | numpy reference ms | torch SDPA ms |", "|---:|---:|---:|"]
    for b in report["baselines"]:
        ref = b["numpy_reference"]
        sdpa = b["torch_sdpa"]
        lines.append(f"| {b['seq_len']} | {_ms(ref and ref['median_ms'])} | "
                     f"{_ms(sdpa and sdpa['median_ms'])} |")
    lines += ["", "| category | mechanism | n | backend | ms | numpy ms | ×numpy | torch SDPA ms "
                  "| ×torch | max err vs numpy |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['category']} | {r['mechanism']} | {r['seq_len']} | "
                         f"{r['backend']} | error: {r['error'].replace('|', '/')} "
                         "| | | | | |")
            continue
        err = r.get("max_abs_error_vs_numpy")
        lines.append(
            f"| {r['category']} | {r['mechanism']} | {r['seq_len']} | {r['backend']} | "
            f"{_ms(r['median_ms'])} | {_ms(r.get('numpy_ms'))} | "
            f"{_ratio(r.get('speedup_vs_numpy'))} | {_ms(r.get('torch_sdpa_ms'))} | "
            f"{_ratio(r.get('speedup_vs_torch'))} | "
            f"{'—' if err is None else f'{err:.2g}'} |")
    lines += ["", "numpy: rerank.reference.attention (float64) for the mechanisms equal to exact "
              "attention, else the same mechanism on the numpy backend; skipped above "
              f"n = {s['numpy_max_seq_len']}.", ""]
    return "\n".join(lines)


def plot(report: dict, stem: Path) -> list[str]:
    """One PNG per category, time vs sequence length (log-log) with the torch SDPA and numpy
    reference lines, written as ``<stem>-<category>.png``; ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    categories = list(dict.fromkeys(r["category"] for r in report["results"]))
    for category in categories:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in dict.fromkeys(r["mechanism"] for r in report["results"]
                                  if r["category"] == category):
            points = [(r["seq_len"], r["median_ms"]) for r in report["results"]
                      if r["mechanism"] == name and "median_ms" in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        for key, label, style in (("torch_sdpa", "torch SDPA", "k--"),
                                  ("numpy_reference", "numpy reference", "k:")):
            points = [(b["seq_len"], b[key]["median_ms"]) for b in report["baselines"]
                      if b.get(key)]
            if points:
                ax.plot(*zip(*points), style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel("forward time, ms (median)")
        ax.set_title(f"{category}: dim {report['settings']['dim']}, "
                     f"{report['settings']['heads']} heads")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in category)
        path = stem.parent / f"{stem.name}-{safe}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(str(path))
    return paths


def write_report(report: dict, output: str | os.PathLike) -> dict:
    """Write ``output`` (JSON), the markdown beside it (``.md``) and the PNG plots; returns
    ``{"json", "markdown", "plots", "plots_skipped"?}`` (the JSON written includes it)."""
    import json

    path = Path(output)
    if path.suffix.lower() != ".json":
        raise ValueError(f"--output must be a .json path; got {str(output)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.with_suffix("")
    files = {"json": str(path), "markdown": str(stem) + ".md", "plots": []}
    try:
        files["plots"] = plot(report, stem)
    except ImportError as exc:
        files["plots_skipped"] = (f"matplotlib is not installed ({exc}): no PNG plots; "
                                  "pip install 'rerank[bench]'")
    report["files"] = files
    Path(files["markdown"]).write_text(markdown(report), encoding="utf-8")
    path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return files


__all__ = ["EXACT_MECHANISMS", "BenchmarkSettings", "build", "checksum", "compute", "head_dim",
           "machine_info", "markdown", "plot", "random_inputs", "reference_output",
           "run_benchmark", "total_steps", "write_report"]
