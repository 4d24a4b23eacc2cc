#!/usr/bin/env python
"""Scaling of the linear attention mechanisms: forward time at n = 4,096 and n = 65,536.

Run from the repository root (the machine otherwise idle; see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_mechanisms.py

One head, d = dv = 64, self-attention (n = m), each mechanism with its registry defaults, on the
compiled backend with 2 rerank threads; numpy's BLAS (the feature maps' and projections' products)
keeps its default thread count, printed at start. For each mechanism the two lengths are timed
interleaved round by round (4096, 65536, 4096, …) after a warm-up; a round runs enough calls for
~50 ms. We report the median time per call and the scaling ratio t(65,536)/t(4,096) as the median
over rounds of the per-round ratio: linear scaling gives 16, and the acceptance bound is 20.
Exact attention is timed for contrast at n = 4,096 and 8,192 only (O(n²): ratio ≈ 4 for 2×).
Peak RSS growth of one call is measured in a fresh subprocess per (mechanism, n) (VmHWM).
Results: benchmarks/results/mechanisms.{json,md}.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import rerank  # noqa: E402
from rerank import registry  # noqa: E402

import bench_kernels as common  # noqa: E402  (environment, CPU-load and VmHWM helpers)

D = 64
SHORT, LONG = 4096, 65536
EXACT_LONG = 8192
THREADS = 2
BOUND = 20.0
LINEAR = [s.name for s in registry.by_category("linear")]


def contenders():
    """(label, factory of a call taking q, k, v, largest n) in table order."""
    rows = []
    for name in LINEAR:
        mech = registry.get(name)
        rows.append((name, mech.spec.notes, lambda q, k, v, m=mech: m.forward(q, k, v), LONG))
    causal = registry.get("linear-attention")
    rows.append(("linear-attention (causal)", "the prefix-sum recurrence kernel, one thread "
                 "(parallel over batch × kv head only)",
                 lambda q, k, v, m=causal: m.forward(q, k, v, causal=True), LONG))
    rows.append(("exact attention (contrast)", "rerank.attention: compiled FlashAttention-2 "
                 "kernel, O(n²)", lambda q, k, v: rerank.attention(q, k, v), EXACT_LONG))
    return rows


def make_inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    return tuple((rng.standard_normal((n, D)) * 0.5).astype(np.float32) for _ in range(3))


def calls_for(fn, args, target_s):
    start = time.perf_counter()
    fn(*args)
    once = time.perf_counter() - start
    return max(1, int(round(target_s / max(once, 1e-9))))


def time_pair(fn, n_short, n_long, rounds, target_s):
    """Interleaved rounds at two lengths; per-call times and per-round ratios."""
    args = {n: make_inputs(n) for n in (n_short, n_long)}
    inner = {}
    for n in (n_short, n_long):
        fn(*args[n])                                   # warm-up (lazy weights, thread pools)
        inner[n] = calls_for(fn, args[n], target_s)
    times = {n_short: [], n_long: []}
    gc.disable()
    try:
        for _ in range(rounds):
            for n in (n_short, n_long):
                start = time.perf_counter()
                for _ in range(inner[n]):
                    fn(*args[n])
                times[n].append((time.perf_counter() - start) / inner[n])
    finally:
        gc.enable()
    ratios = [b / a for a, b in zip(times[n_short], times[n_long])]
    return times, ratios, inner


def memory_probe(spec: dict) -> dict:
    """In a fresh process: peak RSS growth of the second call (VmHWM reset before it)."""
    rerank.set_num_threads(THREADS)
    label, n = spec["label"], spec["n"]
    fn = next(c[2] for c in contenders() if c[0] == label)
    args = make_inputs(n)
    out = fn(*args)                                    # first call: lazy weights, pools
    del out
    gc.collect()
    reset = common._reset_hwm()
    before = common._status_kb("VmHWM")
    out = fn(*args)
    return {"peak_rss_growth_kib": common._status_kb("VmHWM") - before, "hwm_reset": reset,
            "inputs_kib": 3 * n * D * 4 // 1024, "output_kib": out.nbytes // 1024}


def run_memory_probe(label: str, n: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_mem",
                           json.dumps({"label": label, "n": n})], capture_output=True, text=True,
                          timeout=600, cwd=str(ROOT), env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_agreement(n=1024) -> dict:
    """Before timing: every mechanism's compiled forward against its numpy backend."""
    q, k, v = make_inputs(n, seed=1)
    errors = {}
    for label, _, fn, _ in contenders():
        out = fn(q, k, v)
        with rerank.use_backend("numpy"):
            expected = fn(q, k, v)
        errors[label] = float(np.abs(out - expected).max())
        if not np.isfinite(out).all() or errors[label] > 1e-3 * max(1.0, np.abs(expected).max()):
            raise SystemExit(f"{label}: compiled and numpy disagree by {errors[label]:.3g}")
    return errors


def extension_identity() -> dict:
    import rerank._kernels as kernels

    out = {}
    for path in (Path(kernels.__file__), ROOT / "rerank" / "_kernels_linear.pxi",
                 ROOT / "rerank" / "mechanisms" / "linear.py"):
        out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def fmt_mib(kib) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Linear attention mechanisms: scaling from n = 4,096 to 65,536",
        "",
        f"Generated by `benchmarks/bench_mechanisms.py` on {env['date_utc']} ({env['cpu']}, "
        f"{env['usable_cpus']} CPUs). One head, d = dv = {D}, self-attention (n = m), registry "
        f"defaults, compiled backend, rerank threads = {env['rerank_num_threads']}, numpy BLAS "
        f"threads = {report['numpy_blas_threads']}, OMP_NUM_THREADS = {env['OMP_NUM_THREADS']!r}, "
        f"OPENBLAS_CORETYPE {'unset' if env['OPENBLAS_CORETYPE'] is None else 'SET'}. Median of "
        f"{report['rounds']} interleaved rounds (each ≥ ~{report['target_ms']} ms of calls) after "
        "a warm-up; ratio = median over rounds of the per-round t(long)/t(short). Linear scaling "
        f"gives 16 (exact attention: 4 for 2×); the bound is {BOUND:g}. Peak RSS growth: one call "
        "in a fresh process (VmHWM), after a first call.",
        "",
        "| mechanism | t(4,096) | t(long) | long n | ratio | ratio of medians | ≤ 20 | "
        "RSS growth 4,096 | RSS growth long | other CPUs busy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        ok = "n/a" if row["n_long"] != LONG else ("yes" if row["ratio"] <= BOUND else "**NO**")
        long_n = str(row["n_long"])
        rss = {n: fmt_mib(row["memory"][n].get("peak_rss_growth_kib")) for n in (str(SHORT), long_n)}
        lines.append(
            f"| {row['label']} | {fmt_ms(row['median_s'][str(SHORT)])} | "
            f"{fmt_ms(row['median_s'][long_n])} | {row['n_long']:,} | {row['ratio']:.2f} | "
            f"{row['ratio_of_medians']:.2f} | {ok} | {rss[str(SHORT)]} | {rss[long_n]} | "
            f"{row['load']['other_cpus']:.2f} |")
    exact = next(r for r in report["rows"] if r["n_long"] != LONG)
    per_doubling = exact["ratio"]
    doublings = math.log2(LONG / exact["n_long"])
    guess = exact["median_s"][str(exact["n_long"])] * per_doubling ** doublings
    busy = [r["label"] for r in report["rows"] if r["load"]["other_cpus"] > 0.15]
    lines += ["", f"Exact attention extrapolated to n = {LONG:,} at its measured "
              f"×{per_doubling:.2f} per doubling: ~{fmt_ms(guess)} (not run: O(n²))."]
    if busy:
        lines += ["", f"**Disturbed**: other processes kept > 0.15 CPUs busy while these rows ran "
                  f"(absolute times are inflated; the ratios are per-round, side by side): "
                  f"{', '.join(busy)}."]
    lines += ["", "Notes per mechanism (spec notes):", ""]
    for row in report["rows"]:
        lines.append(f"- **{row['label']}**: {row['notes']}")
    lines += ["", "Compiled vs numpy backend before timing (n = 1,024, max |Δ|): "
              + ", ".join(f"{k} {v:.1e}" for k, v in report["agreement"].items()), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=50.0)
    parser.add_argument("--out", default=str(HERE / "results" / "mechanisms"))
    parser.add_argument("--_mem", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._mem:
        print(json.dumps(memory_probe(json.loads(args._mem))))
        return 0
    if args.rounds < 5:
        parser.error("--rounds must be ≥ 5")
    rerank.set_num_threads(THREADS)
    status = rerank.status()
    if status["backend"] != "compiled":
        raise SystemExit(f"the compiled backend is required: {status['reason']}")
    env = common.environment(with_torch=False)
    common.print_environment(env, status)
    from threadpoolctl import threadpool_info

    blas_threads = sorted({lib["num_threads"] for lib in threadpool_info()
                           if lib.get("user_api") == "blas"})
    print("extension:", extension_identity())
    agreement = check_agreement()
    print("compiled vs numpy (n = 1024):", {k: f"{v:.1e}" for k, v in agreement.items()})
    rows = []
    for label, notes, fn, n_long in contenders():
        print(f"== {label}: n = {SHORT} and {n_long}", flush=True)
        start = common._cpu_snapshot()
        times, ratios, inner = time_pair(fn, SHORT, n_long, args.rounds, args.target_ms / 1e3)
        load = common.foreign_load(start, common._cpu_snapshot())
        medians = {str(n): statistics.median(t) for n, t in times.items()}
        memory = {str(n): run_memory_probe(label, n) for n in (SHORT, n_long)}
        row = {"label": label, "notes": notes, "n_long": n_long, "median_s": medians,
               "rounds_s": {str(n): t for n, t in times.items()}, "calls_per_round":
               {str(n): c for n, c in inner.items()}, "ratio": statistics.median(ratios),
               "ratio_of_medians": medians[str(n_long)] / medians[str(SHORT)],
               "round_ratios": ratios, "memory": memory, "load": load}
        rows.append(row)
        print(f"   t({SHORT}) {fmt_ms(medians[str(SHORT)])}, t({n_long}) "
              f"{fmt_ms(medians[str(n_long)])}, ratio {row['ratio']:.2f}, RSS growth "
              f"{fmt_mib(memory[str(SHORT)].get('peak_rss_growth_kib'))} → "
              f"{fmt_mib(memory[str(n_long)].get('peak_rss_growth_kib'))}, other CPUs "
              f"{load['other_cpus']:.2f}", flush=True)
    report = {"environment": env, "extension": extension_identity(), "rounds": args.rounds,
              "target_ms": args.target_ms, "threads": THREADS, "numpy_blas_threads": blas_threads,
              "d": D, "bound": BOUND, "agreement": agreement, "rows": rows,
              "failures": [r["label"] for r in rows if r["n_long"] == LONG and r["ratio"] > BOUND]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out}.json and {out}.md")
    if report["failures"]:
        print("ratio above the bound:", ", ".join(report["failures"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
