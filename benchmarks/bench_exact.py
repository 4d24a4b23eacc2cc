#!/usr/bin/env python
"""The exact-attention mechanisms side by side: flash-attention-v2, flash-attention-v3 (fp16,
int8), blockwise-attention and flash-decoding against torch SDPA and numpy.

Run from the repository root, the machine otherwise idle (see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_exact.py

The four registry mechanisms compute the same function, exact softmax attention, by different
algorithms (their spec notes say how). Two sections:

1. Self-attention, b = 1, h = 8, d = 64, n ∈ {1024, 4096}, non-causal and causal:
   flash-attention-v2, flash-attention-v3 (fp16), flash-attention-v3 (int8), blockwise-attention,
   torch SDPA (★ baseline) and, at n = 1024 only, a numpy full-matrix softmax.
2. Decoding: 1 query row × h heads against m cached keys/values, d = 64, (h, m) ∈ {(8, 65536),
   (1, 65536), (1, 8192)}: flash-decoding (default splits; and the same on 1 rerank thread, to
   show what the split over the cache buys), flash-attention-v2 (``rerank.attention``), torch SDPA
   (★) and numpy.

Protocol (../shared/BENCHMARKS.md), with the harness of bench_kernels.py: each contender is
checked against ``rerank.reference`` in float64 and warmed up, then the contenders of one shape
are timed interleaved, round by round (A, B, C, A, B, C …); a round runs enough calls for ~50 ms.
We report the median per call over ≥ 7 rounds and, as the ratio, the median over rounds of
(contender ÷ torch) from the same round. Threads: rerank 2, torch 2, the numpy baseline's BLAS
pinned to 1 (threadpoolctl). Peak RSS growth of a call: VmHWM in a fresh subprocess per contender
and shape. Other processes' CPU use is recorded per shape; rows above 0.15 CPUs are marked.

    --quick        smoke run (3 rounds of ~10 ms, small sizes, few memory probes); writes
                   /tmp/rerank-bench/exact-quick.{json,md} unless --out is given
    --rounds N     timed rounds for every shape (default 9; 7 at n = 4096)
    --out PATH     output path without extension (default benchmarks/results/exact)
"""
from __future__ import annotations

import argparse
import contextlib
import gc
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
from rerank import reference, registry  # noqa: E402

import bench_kernels as common  # noqa: E402  (harness, environment, CPU-load and VmHWM helpers)

F32 = np.float32
D = 64
HEADS = 8
BUSY = 0.15            # other processes' CPUs above which a row is marked disturbed
EXACT_ATOL = 1e-4      # exact contenders vs the float64 reference (outputs are O(1))
BASELINE = "torch SDPA (2 threads)"

SELF = {  # key → label, in table order
    "v2": "flash-attention-v2",
    "v3-fp16": "flash-attention-v3 (fp16)",
    "v3-int8": "flash-attention-v3 (int8)",
    "blockwise": "blockwise-attention",
    "torch": BASELINE,
    "numpy": "numpy full matrix (1 BLAS thread)",
}
DECODE = {
    "decoding": "flash-decoding (default splits)",
    "decoding-1t": "flash-decoding, 1 rerank thread",
    "v2": "flash-attention-v2 (rerank.attention)",
    "torch": BASELINE,
    "numpy": "numpy (1 BLAS thread)",
}
MECHANISMS = ("flash-attention-v2", "flash-attention-v3", "blockwise-attention", "flash-decoding")


# ------------------------------------------------------------------------------------------------
# inputs and calls (shared by the timing and the memory subprocess)

def self_inputs(n):
    return common.self_inputs(n, h=HEADS, d=D)


def decode_inputs(h, m, seed=5):
    rng = np.random.default_rng(seed + 7 * h + m)
    q = rng.standard_normal((1, h, 1, D)).astype(F32)
    k = rng.standard_normal((1, h, m, D)).astype(F32)
    v = rng.standard_normal((1, h, m, D)).astype(F32)
    return q, k, v


def make_call(key: str, q, k, v, causal: bool = False):
    """The zero-argument call of one contender on these inputs."""
    if key == "v2" and q.shape[2] == 1:
        return lambda: rerank.attention(q, k, v, causal=causal)
    if key == "v2":
        mech = registry.get("flash-attention-v2")
        return lambda: mech.forward(q, k, v, causal=causal)
    if key in ("v3-fp16", "v3-int8"):
        mech = registry.get("flash-attention-v3", precision=key.split("-")[1])
        return lambda: mech.forward(q, k, v, causal=causal)
    if key == "blockwise":
        mech = registry.get("blockwise-attention")
        return lambda: mech.forward(q, k, v, causal=causal)
    if key in ("decoding", "decoding-1t"):
        mech = registry.get("flash-decoding")
        return lambda: mech.forward(q, k, v, causal=causal)
    if key == "torch":
        import torch.nn.functional as F
        import torch

        qt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))
        return lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
    if key == "numpy":
        addmask = common.causal_addmask(q.shape[2]) if causal else None
        return lambda: common.numpy_full_attention(q, k, v, 1.0 / math.sqrt(D), addmask)
    raise ValueError(key)


def context(key: str):
    return {"torch": common.torch_mode, "numpy": common.numpy_blas_one_thread,
            "decoding-1t": common.rerank_one_thread}.get(key, contextlib.nullcontext)


def as_numpy(out) -> np.ndarray:
    return out.numpy() if hasattr(out, "numpy") else np.asarray(out)


# ------------------------------------------------------------------------------------------------
# correctness before timing

def check_rows(n: int, stride: int) -> np.ndarray:
    """Query rows the error is measured on: all of them, or every stride-th ending at the last."""
    return np.arange(n - 1, -1, -stride)[::-1]


def reference64(q, k, v, causal: bool, rows: np.ndarray) -> np.ndarray:
    """Exact attention in float64 for the given query rows, head by head, by
    ``rerank.reference.attention_weights`` (the float64 core of ``reference.attention``, without
    its final cast to float32); causal as a boolean keep-mask for these rows (key j ≤ row i)."""
    b, h, n, d = q.shape
    m = k.shape[2]
    keep = (np.arange(m)[None, :] <= rows[:, None] + (m - n)) if causal else None
    out = np.empty((b, h, len(rows), v.shape[-1]))
    for i in range(h):
        w = reference.attention_weights(q[:, i, rows], k[:, i], mask=keep)
        out[:, i] = w @ v[:, i].astype(np.float64)
    return out


def v3_extra(key, q, k, v, out, causal, rows) -> dict:
    """flash-attention-v3: its guaranteed error bound (vs exact fp32-input attention) on the
    checked rows, and its error against exact float64 attention of its own dequantised inputs
    ("exact to its precision")."""
    mech = registry.get("flash-attention-v3", precision=key.split("-")[1])
    qd, kd, vd = mech.dequantized(q, k, v)
    exact_own = reference64(qd, kd, vd, causal, rows)
    bound = max(float(mech.error_bound(q[:, i:i + 1, rows], k[:, i:i + 1], v[:, i:i + 1]).max())
                for i in range(q.shape[1]))
    return {"error_bound": bound,
            "vs_own_dequantised_inputs": float(np.abs(out[:, :, rows] - exact_own).max())}


def check_outputs(keys, q, k, v, causal, rows, where: str) -> dict:
    """Every contender's output against float64 exact attention on fp32 inputs; abort if an exact
    contender is off by more than EXACT_ATOL or flash-v3 beyond its own error bound."""
    ref = reference64(q, k, v, causal, rows)
    result = {}
    for key in keys:
        with context(key)():
            out = as_numpy(make_call(key, q, k, v, causal)()).astype(np.float64)
        err = float(np.abs(out[:, :, rows] - ref).max())
        entry = {"max_abs_error": err}
        if key.startswith("v3"):
            entry.update(v3_extra(key, q, k, v, out, causal, rows))
            if err > entry["error_bound"] + 1e-5 or entry["vs_own_dequantised_inputs"] > EXACT_ATOL:
                raise SystemExit(f"sanity check failed: {key} {where}: error {err:.3g} "
                                 f"(bound {entry['error_bound']:.3g}), vs its dequantised inputs "
                                 f"{entry['vs_own_dequantised_inputs']:.3g}")
        elif err > EXACT_ATOL:
            raise SystemExit(f"sanity check failed: {key} {where} differs from float64 exact "
                             f"attention by {err:.3g} (atol {EXACT_ATOL})")
        result[key] = entry
    result["rows_checked"] = int(len(rows))
    result["max_abs_output"] = float(np.abs(ref).max())
    return result


# ------------------------------------------------------------------------------------------------
# memory: a fresh subprocess per contender and shape

def memory_probe(spec: dict) -> dict:
    """In a fresh process: VmHWM growth of the first call (lazy initialisation included) and of a
    second call, VmHWM reset after the inputs are allocated."""
    key = spec["key"]
    common.setup_threads(with_torch=key == "torch")
    if spec["section"] == "self":
        q, k, v = self_inputs(spec["n"])
    else:
        q, k, v = decode_inputs(spec["h"], spec["m"])
    call = make_call(key, q, k, v, spec.get("causal", False))
    result = {}
    with context(key)():
        for label in ("first_kib", "second_kib"):
            gc.collect()
            result["hwm_reset"] = common._reset_hwm()
            before = common._status_kb("VmHWM")
            out = call()
            result[label] = common._status_kb("VmHWM") - before
            del out
    return result


def run_memory_probe(spec: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # see bench_kernels.run_memory_probe
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_mem",
                           json.dumps(spec)], capture_output=True, text=True, timeout=300,
                          cwd=str(ROOT), env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# timing

def timed_group(labels: dict, keys, q, k, v, causal, shape, flops, rounds, target) -> list[dict]:
    contenders = [common.Contender(labels[key], make_call(key, q, k, v, causal), context(key),
                                   shape, flops) for key in keys]
    start = common._cpu_snapshot()
    rows = common.measure(contenders, rounds, target, BASELINE)
    load = common.foreign_load(start, common._cpu_snapshot())
    for key, row in zip(keys, rows):
        row["key"] = key
        row["load"] = load
        row["disturbed"] = load["other_cpus"] + load["steal_cpus"] > BUSY
    print(f"  other processes: {load['other_cpus']:.2f} CPUs (steal {load['steal_cpus']:.2f})"
          + ("  — DISTURBED" if rows[0]["disturbed"] else ""), flush=True)
    return rows


def section_self(args) -> dict:
    print(f"== 1. self-attention: b=1, h={HEADS}, d={D} ==", flush=True)
    rows, checks = [], {}
    before = common._cpu_snapshot()
    for n in args.self_sizes:
        q, k, v = self_inputs(n)
        keys = [key for key in SELF if key != "numpy" or n in args.numpy_sizes]
        stride = 1 if n <= args.full_check_n else args.check_stride
        rounds = args.rounds or (7 if n >= 4096 else 9)
        for causal in (False, True):
            shape = f"n={n}{' causal' if causal else ''}"
            t0 = time.perf_counter()
            check = check_outputs(keys, q, k, v, causal, check_rows(n, stride), shape)
            checks[shape] = check
            print(f"  {shape}: checked {check['rows_checked']} rows per head in "
                  f"{time.perf_counter() - t0:.1f} s: "
                  + ", ".join(f"{key} {check[key]['max_abs_error']:.1e}" for key in keys),
                  flush=True)
            flops = 4 * n * n * D * HEADS / (2 if causal else 1)
            group = timed_group(SELF, keys, q, k, v, causal, shape, flops, rounds, args.target)
            for row in group:
                row.update(n=n, causal=causal, error=check[row["key"]])
            rows.extend(group)
        del q, k, v
        gc.collect()
    load = common.foreign_load(before, common._cpu_snapshot())
    print("  -- peak RSS growth (fresh subprocess per contender and shape; VmHWM)", flush=True)
    for row in rows:
        if args.quick and row["causal"]:
            continue
        row["memory"] = run_memory_probe({"section": "self", "key": row["key"], "n": row["n"],
                                          "causal": row["causal"]})
        print(f"  {row['contender']:<38} {row['shape']:<14} {mem_cell(row)}", flush=True)
    return {"rows": rows, "checks": checks, "foreign_load": load}


def section_decode(args) -> dict:
    print(f"== 2. decoding: 1 query row × h heads × m keys × d={D} ==", flush=True)
    rows, checks = [], {}
    before = common._cpu_snapshot()
    for h, m in args.decode_shapes:
        q, k, v = decode_inputs(h, m)
        keys = list(DECODE)
        shape = f"h={h} m={m}"
        check = check_outputs(keys, q, k, v, False, np.arange(1), shape)
        checks[shape] = check
        print(f"  {shape}: " + ", ".join(f"{key} {check[key]['max_abs_error']:.1e}"
                                         for key in keys), flush=True)
        group = timed_group(DECODE, keys, q, k, v, False, shape, 4 * m * D * h,
                            args.rounds or 9, args.target)
        for row in group:
            row.update(h=h, m=m, error=check[row["key"]])
        rows.extend(group)
        del q, k, v
        gc.collect()
    load = common.foreign_load(before, common._cpu_snapshot())
    print("  -- peak RSS growth (fresh subprocess per contender and shape; VmHWM)", flush=True)
    for row in rows:
        if args.quick and row["h"] != 1:
            continue
        row["memory"] = run_memory_probe({"section": "decode", "key": row["key"], "h": row["h"],
                                          "m": row["m"]})
        print(f"  {row['contender']:<38} {row['shape']:<14} {mem_cell(row)}", flush=True)
    return {"rows": rows, "checks": checks, "foreign_load": load}


# ------------------------------------------------------------------------------------------------
# report

fmt_time = common.fmt_time


def mem_cell(row) -> str:
    mem = row.get("memory")
    if not mem:
        return "–"
    if "error" in mem:
        return "error"
    return f"{common.fmt_kib(mem['first_kib'])} / {common.fmt_kib(mem['second_kib'])}"


def paired(rows, a: str, b: str, **where) -> float:
    """Median over rounds of t(a)/t(b), the two contenders of one shape (same rounds)."""
    group = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    ta = next(r for r in group if r["key"] == a)["rounds_s"]
    tb = next(r for r in group if r["key"] == b)["rounds_s"]
    return statistics.median(x / y for x, y in zip(ta, tb))


def speed(ratio: float) -> str:
    """t(other)/t(this) as "2.1× faster" or "3.0× slower"."""
    return f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"


def find(rows, key, **where):
    return next(r for r in rows if r["key"] == key and all(r.get(k) == v for k, v in where.items()))


def table(rows) -> list[str]:
    head = ["contender", "shape", "median", "ratio vs torch", "GFLOP/s",
            "peak RSS growth 1st / 2nd call", "max abs error vs float64", "min–max",
            "other CPUs (+ steal)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        base = r["contender"] == r["baseline"]
        load = r["load"]["other_cpus"] + r["load"]["steal_cpus"]
        out.append("| " + " | ".join([
            ("★ " if base else "") + r["contender"], r["shape"], fmt_time(r["median_s"]),
            "1 (baseline)" if base else f"{r['ratio']:.2f}", f"{r['gflops']:.1f}",
            mem_cell(r), f"{r['error']['max_abs_error']:.1e}",
            f"{fmt_time(r['min_s'])}–{fmt_time(r['max_s'])}",
            f"{load:.2f}" + (" **disturbed**" if r["disturbed"] else "")]) + " |")
    return out


def facts(report) -> dict:
    """The measured facts quoted under each mechanism's notes."""
    srows = report["sections"]["self"]["rows"]
    drows = report["sections"]["decode"]["rows"]
    big = max(r["n"] for r in srows)
    small = min(r["n"] for r in srows)
    f = {}

    def t(rows, key, **w):
        return fmt_time(find(rows, key, **w)["median_s"])

    def err(rows, key, **w):
        return find(rows, key, **w)["error"]

    lines = []
    for causal in (False, True):
        w = dict(n=big, causal=causal)
        lines.append(f"n = {big}{' causal' if causal else ''}: {t(srows, 'v2', **w)} "
                     f"({find(srows, 'v2', **w)['gflops']:.0f} GFLOP/s) vs torch "
                     f"{t(srows, 'torch', **w)}, ratio {find(srows, 'v2', **w)['ratio']:.2f}")
    w = dict(n=small, causal=False)
    if any(r["key"] == "numpy" and r["n"] == small for r in srows):
        lines.append(f"n = {small}: {t(srows, 'v2', **w)} vs numpy's full matrix "
                     f"{t(srows, 'numpy', **w)} "
                     f"(numpy {paired(srows, 'numpy', 'v2', **w):.1f}× slower), "
                     f"peak RSS growth {mem_cell(find(srows, 'v2', **w))} vs "
                     f"{mem_cell(find(srows, 'numpy', **w))}")
    hm = max((r for r in drows if r["h"] == 1), key=lambda r: r["m"])
    dw = dict(h=1, m=hm["m"])
    lines.append(f"decoding 1 row, h = 1, m = {hm['m']}: {t(drows, 'v2', **dw)} — one work item, "
                 f"one thread busy (flash-decoding: {t(drows, 'decoding', **dw)})")
    f["flash-attention-v2"] = lines

    lines = []
    for key in ("v3-fp16", "v3-int8"):
        prec = key.split("-")[1]
        per = [f"{paired(srows, key, 'v2', n=n, causal=False):.2f}× flash-v2's time at n = {n}"
               for n in sorted({r['n'] for r in srows})]
        e_big = err(srows, key, n=big, causal=False)
        e_small = err(srows, key, n=small, causal=False)
        lines.append(
            f"{prec}: {', '.join(per)} (the rounding/quantisation runs in numpy float64 before the "
            f"fp32 kernel: a cost on a CPU, where there are no fp16/fp8 tensor cores); max |error| "
            f"vs exact fp32-input attention {e_small['max_abs_error']:.1e} (n = {small}), "
            f"{e_big['max_abs_error']:.1e} (n = {big}), guaranteed bound "
            f"{e_big['error_bound']:.2g}; vs exact attention of its own dequantised inputs "
            f"{e_big['vs_own_dequantised_inputs']:.1e} (exact to its precision); peak RSS growth "
            f"at n = {big}: {mem_cell(find(srows, key, n=big, causal=False))} vs flash-v2 "
            f"{mem_cell(find(srows, 'v2', n=big, causal=False))}")
    f["flash-attention-v3"] = lines

    lines = []
    for causal in (False, True):
        for n in sorted({r["n"] for r in srows}):
            w = dict(n=n, causal=causal)
            lines.append(f"n = {n}{' causal' if causal else ''}: {t(srows, 'blockwise', **w)} vs "
                         f"flash-v2 {t(srows, 'v2', **w)} "
                         f"({paired(srows, 'blockwise', 'v2', **w):.2f}× its time, per round); "
                         "peak RSS "
                         f"growth {mem_cell(find(srows, 'blockwise', **w))} vs "
                         f"{mem_cell(find(srows, 'v2', **w))}")
    f["blockwise-attention"] = lines

    lines = []
    for h, m in sorted({(r["h"], r["m"]) for r in drows}, key=lambda x: (-x[1], -x[0])):
        w = dict(h=h, m=m)
        lines.append(
            f"h = {h}, m = {m}: {t(drows, 'decoding', **w)} vs flash-v2 {t(drows, 'v2', **w)} "
            f"({speed(paired(drows, 'v2', 'decoding', **w))}), torch "
            f"{t(drows, 'torch', **w)} (ratio {find(drows, 'decoding', **w)['ratio']:.2f}), numpy "
            f"{t(drows, 'numpy', **w)}; on 1 rerank thread {t(drows, 'decoding-1t', **w)} "
            f"(2 threads {speed(paired(drows, 'decoding-1t', 'decoding', **w))} than 1)")
    f["flash-decoding"] = lines
    return f


def var_state(value) -> str:
    return "not set" if value is None else f"= {value} (NOT per protocol)"


def markdown(report: dict) -> str:
    env, st = report["environment"], report["status"]
    blas = "; ".join(f"{Path(b['filepath']).name.split('-')[0]} {b['version']} kernel "
                     f"{b['architecture']}" for b in st["blas"])
    secs = report["sections"]
    cmd = "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_exact.py"
    out = [
        "# Exact attention: flash-attention-v2, -v3, blockwise-attention, flash-decoding",
        "",
        f"`{cmd}{' ' + ' '.join(report['argv']) if report['argv'] else ''}` — {env['date_utc']}, "
        f"{env['cpu']}, {env['usable_cpus']} CPUs, load average at start "
        f"{env['loadavg_start'][0]:.2f}, at end {report['loadavg_end'][0]:.2f}; run time "
        f"{report['run_time_s']:.0f} s.",
        "",
        f"**Threads**: rerank {env['rerank_num_threads']} (backend {st['backend']}, OpenMP "
        f"{st['openmp']}); torch {env.get('torch_num_threads')} (torch {env.get('torch')}); the "
        "numpy contenders' BLAS pinned to 1 thread (threadpoolctl); elsewhere numpy's BLAS keeps "
        f"its default ({', '.join(str(b['num_threads']) for b in st['blas'])}) — this matters "
        "for flash-v3, whose rounding and rotation run in numpy before the kernel (rerank's kernels "
        f"hold BLAS at 1 thread inside their parallel regions). OMP_NUM_THREADS="
        f"{env['OMP_NUM_THREADS']}; OPENBLAS_CORETYPE "
        f"{var_state(env['OPENBLAS_CORETYPE'])}, OPENBLAS_L2_SIZE "
        f"{var_state(env['OPENBLAS_L2_SIZE'])}"
        f" (unset both in the command, as above). BLAS libraries loaded (threadpoolctl; numpy's "
        f"is libscipy_openblas64_, scipy's libscipy_openblas): {blas}. Extension: "
        + ", ".join(f"{k} {v['sha256']}" for k, v in env["build"].items() if isinstance(v, dict))
        + (" (STALE: older than its sources)" if env["build"]["stale"] else "") + ".",
        "",
        f"**Method**: median over interleaved rounds (A, B, C, A, B, C …; {report['rounds_note']}) "
        f"after a warm-up; each round ≈ {report['target_s'] * 1e3:.0f} ms of repeated calls. "
        "ratio = median over rounds of (contender ÷ ★ torch in the same round): below 1 is faster "
        "than torch. Peak RSS growth: VmHWM after − before a call in a fresh process per contender "
        "and shape (MALLOC_MMAP_THRESHOLD_=64 KiB, VmHWM reset after the inputs are allocated); "
        "the 1st call includes lazy initialisation (thread pools, BLAS buffers), the 2nd is the "
        "steady state. Max abs error: against exact attention in float64 "
        "(`rerank.reference.attention_weights` @ v in float64, i.e. `reference.attention` without "
        "its final float32 cast) on the fp32 inputs — for flash-v3 this is its precision cost. "
        f"{report['check_note']} Every contender was checked before timing (exact ones ≤ "
        f"{EXACT_ATOL:g}; flash-v3 within its `error_bound()` and ≤ {EXACT_ATOL:g} of exact "
        "attention of its own dequantised inputs). 'other CPUs (+ steal)': CPUs that other "
        "processes used, plus CPU time the hypervisor stole, while that shape was timed; above "
        f"{BUSY} the rows are marked **disturbed**.",
        "",
        f"## 1. Self-attention: b = 1, h = {HEADS}, d = {D}",
        "",
        "GFLOP/s counts 4·n²·d·h FLOPs (half with causal). flash-v3 (int8) quantises q, k, v per "
        "block of 128 rows after a seeded random-sign Hadamard rotation of q and k.",
        "",
    ]
    out += table(secs["self"]["rows"])
    out += ["", f"## 2. Decoding: 1 query row × h heads × m keys, d = {D}", "",
            "GFLOP/s counts 4·m·d·h FLOPs. torch SDPA and numpy get q (1, h, 1, d) against k, v "
            "(1, h, m, d); flash-v2 is `rerank.attention` on the same arrays. "
            "flash-decoding's default splits: min(64, m/1024, m/n) chunks per head.", ""]
    out += table(secs["decode"]["rows"])
    out += ["", "## 3. What differs", ""]
    for name in MECHANISMS:
        out += [f"**{name}** — {registry.spec(name).notes}", "", "Measured here:", ""]
        out += [f"- {line}" for line in report["facts"][name]]
        out += [""]
    disturbed = sorted({r["shape"]: r["load"]["other_cpus"] + r["load"]["steal_cpus"]
                        for s in secs.values() for r in s["rows"] if r["disturbed"]}.items(),
                       key=lambda x: x[0])
    steal = {r["shape"]: r["load"]["steal_cpus"] for s in secs.values() for r in s["rows"]}
    disturbed = [f"{shape} ({cpus:.2f} CPUs, of which steal {steal[shape]:.2f})"
                 for shape, cpus in disturbed]
    if disturbed:
        out += [f"**Disturbed shapes** (other processes + steal > {BUSY} CPUs while they ran; "
                "absolute times inflated, the per-round ratios less so): "
                + ", ".join(disturbed) + ".", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 3 rounds, ~10 ms rounds, "
                   "small sizes; writes /tmp/rerank-bench/exact-quick.{json,md}")
    p.add_argument("--rounds", type=int, help="timed rounds for every shape (default 9; 7 at "
                                              "n = 4096; 3 with --quick)")
    p.add_argument("--out", help="output path without extension (default benchmarks/results/exact)")
    p.add_argument("--_mem", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be ≥ 1")
    if args.quick and args.rounds is None:
        args.rounds = 3
    args.target = 0.010 if args.quick else 0.050
    args.self_sizes = (256, 512) if args.quick else (1024, 4096)
    args.numpy_sizes = (256,) if args.quick else (1024,)
    args.full_check_n = 256 if args.quick else 1024
    args.check_stride = 8               # above full_check_n: every 8th query row (last included)
    args.decode_shapes = ((8, 8192), (1, 8192), (1, 2048)) if args.quick else \
        ((8, 65536), (1, 65536), (1, 8192))
    default = Path("/tmp/rerank-bench/exact-quick") if args.quick else HERE / "results" / "exact"
    args.out = Path(args.out) if args.out else default
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._mem:
        print(json.dumps(memory_probe(json.loads(args._mem))))
        return 0
    t_start = time.perf_counter()
    if rerank.status()["backend"] != "compiled":
        raise SystemExit(f"rerank's backend is not compiled ({rerank.status()['reason']}); build "
                         "it: .venv/bin/python setup.py -q build_ext --inplace")
    common.setup_threads(with_torch=True)
    status = rerank.status()
    env = common.environment(with_torch=True)
    common.print_environment(env, status)
    if env["OPENBLAS_CORETYPE"] is not None or env["OPENBLAS_L2_SIZE"] is not None:
        print("WARNING: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set; run under "
              "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` (numpy numbers are not per "
              "protocol).\n")
    if args.rounds is not None and args.rounds < 7:
        print(f"note: {args.rounds} rounds is below the protocol's 7 (smoke run only)\n")
    sections = {"self": section_self(args)}
    print(flush=True)
    sections["decode"] = section_decode(args)
    big = max(args.self_sizes)
    report = {
        "argv": argv, "quick": args.quick, "target_s": args.target,
        "rounds_note": (f"{args.rounds} rounds" if args.rounds else
                        "9 rounds, 7 at n = 4096"),
        "check_note": (f"Self-attention errors at n ≤ {args.full_check_n} are over every query "
                       f"row; at n = {big} over every {args.check_stride}th row (the last "
                       f"included, {big // args.check_stride} rows per head) to keep the float64 "
                       "reference's time down."),
        "protocol_ok": (args.rounds or 7) >= 7 and env["OPENBLAS_CORETYPE"] is None
        and env["OPENBLAS_L2_SIZE"] is None,
        "environment": env, "status": status,
        "specs": {name: registry.spec(name).to_dict() for name in MECHANISMS},
        "sections": sections, "loadavg_end": os.getloadavg(),
    }
    report["facts"] = facts(report)
    report["run_time_s"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md = markdown(report)
    md_path.write_text(md)
    print(md)
    print(f"wrote {json_path} and {md_path.name}; run time {report['run_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
