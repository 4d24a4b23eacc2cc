#!/usr/bin/env python
"""Kernel benchmarks for rerank: rerank shape, self-attention and late interaction.

Run from the repository root (see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_kernels.py

Protocol (../shared/BENCHMARKS.md): each contender is warmed up, then the contenders of one shape
are timed round by round, interleaved (A, B, C, A, B, C …); a round runs a contender's call
``inner`` times (enough for ~50 ms) and records the time per call. We report the median over the
rounds and, as the ratio, the median over rounds of (contender ÷ baseline) taken from the same
round. numpy runs with its BLAS pinned to one thread, torch with 2 threads, rerank with 2 threads.
Peak RSS growth is measured in a fresh subprocess per contender (VmHWM from /proc/self/status).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import rerank  # noqa: E402
from rerank import reference, scoring  # noqa: E402

F32 = np.float32
SECTIONS = ("rerank", "self", "late")
RERANK_THREADS = 2
TORCH_THREADS = 2


# ------------------------------------------------------------------------------------------------
# thread settings

_controller = None


def blas_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


def numpy_blas_one_thread():
    """Context: every BLAS library (numpy's and scipy's OpenBLAS) at one thread; OpenMP untouched."""
    return blas_controller().limit(limits=1, user_api="blas")


def torch_mode():
    import torch

    return torch.inference_mode()


def setup_threads(with_torch: bool) -> None:
    rerank.set_num_threads(RERANK_THREADS)
    if with_torch:
        import torch

        torch.set_num_threads(TORCH_THREADS)


def blas_summary(info: list[dict]) -> list[str]:
    return [f"{lib.get('user_api')}: {lib.get('internal_api')} {lib.get('version') or ''} "
            f"kernel={lib.get('architecture', '-')} threads={lib.get('num_threads')} "
            f"({Path(lib.get('filepath', '')).name})" for lib in info]


def environment(with_torch: bool) -> dict:
    from threadpoolctl import threadpool_info

    import scipy

    env = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "rerank": rerank.__version__,
        "cpu": _cpu_model(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "loadavg_start": os.getloadavg(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "rerank_num_threads": rerank.get_num_threads(),
        "threadpool_info": threadpool_info(),
        "build": build_identity(),
    }
    with numpy_blas_one_thread():
        env["threadpool_info_numpy_baseline"] = threadpool_info()
    if with_torch:
        import torch

        env["torch"] = torch.__version__
        env["torch_num_threads"] = torch.get_num_threads()
        env["torch_parallel_info"] = torch.__config__.parallel_info()
    return env


def build_identity() -> dict:
    """Which extension build was measured: hashes and times of the kernel sources and the .so."""
    import hashlib

    import rerank._kernels as kernels

    out = {}
    for path in (Path(kernels.__file__), ROOT / "rerank" / "_kernels.pyx", ROOT / "rerank" / "_simd.h"):
        if path.exists():
            out[path.name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
                              "mtime": datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
                              .isoformat(timespec="seconds")}
    so, pyx = Path(kernels.__file__), ROOT / "rerank" / "_kernels.pyx"
    sources = [p for p in (pyx, ROOT / "rerank" / "_simd.h") if p.exists()]
    out["stale"] = any(p.stat().st_mtime > so.stat().st_mtime for p in sources)
    try:
        out["git_head"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                         capture_output=True, text=True).stdout.strip() or None
    except OSError:
        out["git_head"] = None
    return out


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_environment(env: dict, status: dict) -> None:
    print("== environment ==")
    print(f"CPU: {env['cpu']} ({env['usable_cpus']} usable CPUs), load average "
          f"{', '.join(f'{x:.2f}' for x in env['loadavg_start'])}")
    print(f"python {env['python']}, numpy {env['numpy']}, scipy {env['scipy']}, "
          f"torch {env.get('torch', '-')}, rerank {env['rerank']}")
    print(f"OMP_NUM_THREADS = {env['OMP_NUM_THREADS']!r}")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        state = "NOT set (good)" if env[var] is None else f"SET to {env[var]!r} (slows numpy; unset it)"
        print(f"{var}: {state}")
    print(f"rerank.get_num_threads() = {env['rerank_num_threads']}")
    print("threadpoolctl.threadpool_info():")
    for line in blas_summary(env["threadpool_info"]):
        print("   ", line)
    print("  inside the numpy baseline's limit:")
    for line in blas_summary(env["threadpool_info_numpy_baseline"]):
        print("   ", line)
    print(f"torch.get_num_threads() = {env.get('torch_num_threads', '-')}")
    print("rerank.status():", json.dumps({k: v for k, v in status.items() if k != "blas"}))
    build = env["build"]
    print("extension build:", ", ".join(f"{k} {v['sha256']} ({v['mtime']})" for k, v in build.items()
                                        if isinstance(v, dict)))
    if build["stale"]:
        print("WARNING: the extension is older than its sources; rebuild with "
              ".venv/bin/python setup.py -q build_ext --inplace")
    print(flush=True)


# ------------------------------------------------------------------------------------------------
# machine noise: CPU used by other processes while a section ran

def _cpu_snapshot():
    import resource

    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]
    steal = fields[7] if len(fields) > 7 else 0
    own = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return time.perf_counter(), busy, steal, own


def foreign_load(start, end) -> dict:
    """Average CPUs busy with other processes (and stolen by the hypervisor) between snapshots."""
    hz = os.sysconf("SC_CLK_TCK")
    wall = end[0] - start[0]
    busy = (end[1] - start[1]) / hz
    steal = (end[2] - start[2]) / hz
    own = end[3] - start[3]
    return {"wall_s": wall, "other_cpus": max(0.0, busy - own) / wall, "steal_cpus": steal / wall}


# ------------------------------------------------------------------------------------------------
# timing harness

class Contender:
    def __init__(self, name, fn, ctx=contextlib.nullcontext, shape="", flops=None):
        self.name, self.fn, self.ctx, self.shape, self.flops = name, fn, ctx, shape, flops


def measure(contenders: list[Contender], rounds: int, target_s: float, baseline: str) -> list[dict]:
    """Warm up and calibrate each contender, then time them interleaved, round by round."""
    inner = {}
    for c in contenders:                        # warm-up + calibration: ≥ target/5 of calls
        with c.ctx():
            c.fn()
            t0, calls = time.perf_counter(), 0
            while True:
                c.fn()
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= target_s / 5 or calls >= 100_000:
                    break
        inner[c.name] = max(1, min(1_000_000, round(target_s / (elapsed / calls))))
    times = {c.name: [] for c in contenders}
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for c in contenders:
                n, fn = inner[c.name], c.fn
                with c.ctx():
                    t0 = time.perf_counter()
                    for _ in range(n):
                        fn()
                    t1 = time.perf_counter()
                times[c.name].append((t1 - t0) / n)
    finally:
        if gc_was:
            gc.enable()
    base = times[baseline]
    out = []
    for c in contenders:
        t = times[c.name]
        row = {
            "contender": c.name, "shape": c.shape, "baseline": baseline,
            "median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
            "rounds_s": t, "inner": inner[c.name], "rounds": rounds,
            "ratio": statistics.median(a / b for a, b in zip(t, base)),
            "ratio_of_medians": statistics.median(t) / statistics.median(base),
        }
        if c.flops:
            row["flops"] = c.flops
            row["gflops"] = c.flops / row["median_s"] / 1e9
        out.append(row)
        print(f"  {c.name:<44} {c.shape:<28} {fmt_time(row['median_s']):>10}  "
              f"ratio {row['ratio']:6.2f}  (inner {inner[c.name]}, spread "
              f"{fmt_time(row['min_s'])}–{fmt_time(row['max_s'])})", flush=True)
    return out


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs" if s < 1e-4 else f"{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms" if s < 1e-2 else f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def check_close(what: str, a, b, atol: float, rtol: float = 1e-3) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    err = float(np.max(np.abs(a - b)))
    if not np.allclose(a, b, atol=atol, rtol=rtol):
        raise SystemExit(f"sanity check failed: {what} differ by {err:.3g} (atol {atol})")
    return err


# ------------------------------------------------------------------------------------------------
# 1. rerank shape: one query over c candidates, d = 384

def numpy_attention_one(q, C, scale):
    s = C @ q * scale
    e = np.exp(s - s.max())
    w = e / e.sum()
    return w @ C


def numpy_scores_one(q, C, scale):
    s = C @ q * scale
    e = np.exp(s - s.max())
    return e / e.sum()


def section_rerank(args) -> dict:
    import torch
    import torch.nn.functional as F

    print("== 1. rerank shape: 1 query × c candidates × d=384 ==", flush=True)
    rng = np.random.default_rng(1)
    d = 384
    scale = 1.0 / math.sqrt(d)
    mech = rerank.registry.get("memory-attention")
    results, checks = [], {}
    for c in (30, 300, 3000):
        q = rng.standard_normal(d).astype(F32)
        C = rng.standard_normal((c, d)).astype(F32)
        qt, Ct = torch.from_numpy(q).view(1, 1, 1, d), torch.from_numpy(C).view(1, 1, c, d)
        q2 = q[None]
        shape = f"1×{c}×{d}"
        # sanity: the contenders compute what they claim
        ref = numpy_attention_one(q.astype(np.float64), C.astype(np.float64), scale)
        checks[f"attention c={c}"] = {
            "rerank": check_close(f"rerank.attention c={c}", rerank.attention(q2, C, C)[0], ref, 1e-4),
            "torch": check_close(f"torch SDPA c={c}", F.scaled_dot_product_attention(qt, Ct, Ct)
                                 .reshape(d).numpy(), ref, 1e-4),
            "numpy": check_close(f"numpy c={c}", numpy_attention_one(q, C, scale), ref, 1e-4)}
        checks[f"memory-attention c={c}"] = check_close(
            f"memory-attention c={c}", mech.score(q, C),
            reference.memory_attention_scores(q, C)[0], 1e-5)
        contenders = [
            Contender("rerank mech.score (memory-attention)", lambda: mech.score(q, C), shape=shape),
            Contender("rerank registry.get + score",
                      lambda: rerank.registry.get("memory-attention").score(q, C), shape=shape),
            Contender("numpy attention (1 BLAS thread)", lambda: numpy_attention_one(q, C, scale),
                      numpy_blas_one_thread, shape),
            Contender("numpy scores only (1 BLAS thread)", lambda: numpy_scores_one(q, C, scale),
                      numpy_blas_one_thread, shape),
            Contender("torch SDPA (2 threads)", lambda: F.scaled_dot_product_attention(qt, Ct, Ct),
                      torch_mode, shape),
            Contender("rerank.attention compiled (2 threads)", lambda: rerank.attention(q2, C, C),
                      shape=shape),
        ]
        for row in measure(contenders, args.section_rounds["rerank"], args.target,
                           "numpy attention (1 BLAS thread)"):
            row["group"] = f"c={c}"
            results.append(row)

    # batch: m queries, each over its own 30 candidates
    m, c = args.batch, 30
    Q = rng.standard_normal((m, d)).astype(F32)
    C3 = rng.standard_normal((m, c, d)).astype(F32)
    shape = f"{m}×{c}×{d}"

    def numpy_loop_attention():
        return [numpy_attention_one(Q[i], C3[i], scale) for i in range(m)]

    def numpy_loop_scores():
        return [numpy_scores_one(Q[i], C3[i], scale) for i in range(m)]

    def numpy_batched_memory():  # the memory-attention math, vectorised over the batch
        qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
        kn = C3 / np.linalg.norm(C3, axis=2, keepdims=True)
        s = np.matmul(kn, qn[:, :, None])[:, :, 0] / scoring.MEMORY_TAU
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def rerank_loop():
        return [mech.score(Q[i], C3[i]) for i in range(m)]

    batch_out = scoring.memory_attention(Q, C3)
    checks["memory-attention batch"] = {
        "vs per-query": check_close("batched vs per-query memory-attention", batch_out,
                                    np.stack(rerank_loop()), 1e-6),
        "vs numpy batched": check_close("batched memory-attention vs numpy", batch_out,
                                        numpy_batched_memory(), 1e-5)}
    print(f"  -- batch: {m} queries × {c} candidates × {d}", flush=True)
    contenders = [
        Contender("rerank memory_attention batch (2 threads)",
                  lambda: scoring.memory_attention(Q, C3), shape=shape),
        Contender("numpy loop: attention per query", numpy_loop_attention, numpy_blas_one_thread,
                  shape),
        Contender("numpy loop: scores per query", numpy_loop_scores, numpy_blas_one_thread, shape),
        Contender("numpy batched memory-attention math", numpy_batched_memory,
                  numpy_blas_one_thread, shape),
        Contender("rerank loop: mech.score per query", rerank_loop, shape=shape),
    ]
    batch = measure(contenders, args.section_rounds["rerank"], args.target,
                    "numpy loop: attention per query")
    by = {r["contender"]: r for r in batch}
    rr = by["rerank memory_attention batch (2 threads)"]["rounds_s"]
    speedups = {name: statistics.median(b / a for a, b in zip(rr, by[name]["rounds_s"]))
                for name in by if not name.startswith("rerank memory_attention batch")}
    for name, s in speedups.items():
        print(f"  batch speedup of rerank over {name}: {s:.1f}×")
    for row in batch:
        row["group"] = "batch"
    results.extend(batch)
    return {"rows": results, "batch_speedups": speedups, "checks": checks}


# ------------------------------------------------------------------------------------------------
# 2. self-attention: b=1, h=8, d=64

def numpy_full_attention(q, k, v, scale, addmask=None):
    s = q @ k.swapaxes(-1, -2)
    s *= scale
    if addmask is not None:
        s += addmask
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s @ v


def self_inputs(n, h=8, d=64, seed=2):
    rng = np.random.default_rng(seed + n)
    return tuple(rng.standard_normal((1, h, n, d)).astype(F32) for _ in range(3))


def causal_addmask(n):
    return np.where(np.tril(np.ones((n, n), dtype=bool)), F32(0), F32(-np.inf))


def self_call(contender: str, n: int, causal: bool):
    """The zero-argument call one contender makes on freshly allocated inputs (used by the timing
    and by the memory subprocess alike)."""
    q, k, v = self_inputs(n)
    if contender == "rerank":
        return lambda: rerank.attention(q, k, v, causal=causal)
    if contender == "torch":
        import torch
        import torch.nn.functional as F

        qt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))
        return lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
    if contender == "numpy":
        addmask = causal_addmask(n) if causal else None
        scale = 1.0 / math.sqrt(q.shape[-1])
        return lambda: numpy_full_attention(q, k, v, scale, addmask)
    raise ValueError(contender)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    """Return freed heap memory to the OS, then reset VmHWM to the current RSS (Linux ≥ 4.0:
    write 5 to /proc/self/clear_refs)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_probe(spec: dict) -> dict:
    """Runs in a fresh process: peak RSS growth (VmHWM after − VmHWM before) of the first call in
    the process (includes lazy initialisation: thread pools, BLAS buffers) and of a second call.
    VmHWM is reset to the current RSS after the inputs are allocated, so transient allocations
    made while building the inputs do not hide the call's own peak."""
    contender, n, causal = spec["contender"], spec["n"], spec["causal"]
    setup_threads(with_torch=contender == "torch")
    ctx = {"numpy": numpy_blas_one_thread, "torch": torch_mode}.get(contender, contextlib.nullcontext)
    call = self_call(contender, n, causal)          # inputs allocated here
    result = {}
    with ctx():
        for label in ("first_kib", "second_kib"):
            gc.collect()
            result["hwm_reset"] = _reset_hwm()
            before = _status_kb("VmHWM")
            out = call()
            result[label] = _status_kb("VmHWM") - before
            del out
    result["rss_kib"] = _status_kb("VmRSS")
    return result


def run_memory_probe(contender: str, n: int, causal: bool) -> dict:
    spec = json.dumps({"contender": contender, "n": n, "causal": causal})
    # A fixed mmap threshold keeps glibc from serving a call's large arrays out of heap pages
    # that earlier frees left resident (which would hide them from VmHWM).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_mem", spec],
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT), env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def section_self(args) -> dict:
    import torch.nn.functional as F  # noqa: F401  (imported for the contenders)

    print("== 2. self-attention: b=1, h=8, d=64 ==", flush=True)
    h, d = 8, 64
    results, checks = [], {}
    # sanity at a small size: the three contenders agree with float64 reference attention
    for causal in (False, True):
        q, k, v = self_inputs(256)
        ref = reference.attention(q, k, v, causal=causal)
        checks[f"n=256 causal={causal}"] = {
            name: check_close(f"self-attention {name} causal={causal}", self_call(name, 256, causal)(),
                              ref, 1e-4) for name in ("rerank", "torch", "numpy")}
    for n in args.self_sizes:
        rounds = args.section_rounds["self"] if args.rounds_set or args.quick or n < 4096 else 7
        for causal in (False, True):
            flops = 4 * n * n * d * h / (2 if causal else 1)
            shape = f"n={n}{' causal' if causal else ''}"
            contenders = [
                Contender("rerank.attention compiled (2 threads)", self_call("rerank", n, causal),
                          shape=shape, flops=flops),
                Contender("torch SDPA (2 threads)", self_call("torch", n, causal), torch_mode,
                          shape, flops),
            ]
            if n in args.numpy_self_sizes:
                contenders.append(Contender("numpy full matrix (1 BLAS thread)",
                                            self_call("numpy", n, causal), numpy_blas_one_thread,
                                            shape, flops))
            rows = measure(contenders, rounds, args.target, "torch SDPA (2 threads)")
            for row in rows:
                row["group"] = f"n={n} causal={causal}"
                row["n"], row["causal"] = n, causal
                row["speed_vs_torch"] = 1.0 / row["ratio"]
            results.extend(rows)
            del contenders
            gc.collect()
    # peak memory: one fresh subprocess per contender and shape
    if args.mem_sizes:
        print("  -- peak RSS growth (fresh subprocess per contender; VmHWM)", flush=True)
    names = {"rerank": "rerank.attention compiled (2 threads)", "torch": "torch SDPA (2 threads)",
             "numpy": "numpy full matrix (1 BLAS thread)"}
    for row in results:
        key = next(k for k, v in names.items() if v == row["contender"])
        if row["n"] in args.mem_sizes and (row["causal"] is False or not args.quick):
            mem = run_memory_probe(key, row["n"], row["causal"])
            row["memory"] = mem
            print(f"  {row['contender']:<44} {row['shape']:<28} "
                  f"first call {fmt_kib(mem.get('first_kib'))}, second {fmt_kib(mem.get('second_kib'))}"
                  + (f"  ERROR {mem['error']}" if "error" in mem else ""), flush=True)
    return {"rows": results, "checks": checks}


def fmt_kib(kib) -> str:
    if kib is None:
        return "–"
    return f"{kib / 1024:.1f} MiB" if kib >= 1024 else f"{kib} KiB"


# ------------------------------------------------------------------------------------------------
# 3. late interaction and hierarchical

def section_late(args) -> dict:
    import torch
    import torch.nn.functional as F

    print("== 3. late interaction: 24 query tokens × 30 candidates × 80..120 tokens × d=384 ==",
          flush=True)
    rng = np.random.default_rng(3)
    t, c, d = 24, 30, 384
    lengths = rng.integers(80, 121, size=c)
    offs = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    qt = rng.standard_normal((t, d)).astype(F32)
    dt = rng.standard_normal((int(offs[-1]), d)).astype(F32)
    shape = f"{t}×{c}×{lengths.min()}..{lengths.max()} (T={offs[-1]})×{d}"
    # padded layout for torch, built once (it is a storage layout, not per-call work)
    L = int(lengths.max())
    pad = np.zeros((c, L, d), F32)
    for i in range(c):
        pad[i, :lengths[i]] = dt[offs[i]:offs[i + 1]]
    q_t, pad_t = torch.from_numpy(qt), torch.from_numpy(pad)
    valid = torch.from_numpy(np.arange(L)[None, :] < lengths[:, None])
    invalid = ~valid[:, None, :]
    pad_n = F.normalize(pad_t, dim=-1)

    def torch_maxsim():
        qn = F.normalize(q_t, dim=-1)
        dn = F.normalize(pad_t, dim=-1)
        s = torch.einsum("td,cld->ctl", qn, dn).masked_fill(invalid, float("-inf"))
        return s.amax(dim=-1).mean(dim=-1)

    def torch_maxsim_prenorm():
        s = torch.einsum("td,cld->ctl", F.normalize(q_t, dim=-1), pad_n)
        return s.masked_fill(invalid, float("-inf")).amax(dim=-1).mean(dim=-1)

    def numpy_maxsim_loop():
        qn = qt / np.linalg.norm(qt, axis=1, keepdims=True)
        dn = dt / np.linalg.norm(dt, axis=1, keepdims=True)
        return np.array([(qn @ dn[a:b].T).max(axis=1).mean() for a, b in zip(offs[:-1], offs[1:])])

    sim = scoring.late_interaction(qt, dt, offs, details=True).similarity
    ref = reference.late_interaction_scores(qt, dt, offs)
    checks = {"late maxsim": {
        "rerank vs reference": check_close("late-interaction MaxSim", sim, ref[1], 1e-5),
        "torch vs reference": check_close("torch MaxSim", torch_maxsim().numpy(), ref[1], 1e-5),
        "torch prenorm vs reference": check_close("torch MaxSim (pre-normalised)",
                                                  torch_maxsim_prenorm().numpy(), ref[1], 1e-5),
        "numpy vs reference": check_close("numpy MaxSim", numpy_maxsim_loop(), ref[1], 1e-5),
        "rerank final vs reference": check_close("late-interaction final",
                                                 scoring.late_interaction(qt, dt, offs), ref[0], 1e-4)}}
    checks["late soft tau=0.05"] = check_close(
        "soft MaxSim", scoring.late_interaction(qt, dt, offs, tau=0.05, details=True).similarity,
        reference.late_interaction_scores(qt, dt, offs, tau=0.05)[1], 1e-5)
    contenders = [
        Contender("rerank late_interaction MaxSim", lambda: scoring.late_interaction(qt, dt, offs),
                  shape=shape),
        Contender("rerank late_interaction tau=0.05",
                  lambda: scoring.late_interaction(qt, dt, offs, tau=0.05), shape=shape),
        Contender("torch padded einsum MaxSim (2 threads)", torch_maxsim, torch_mode, shape),
        Contender("torch padded einsum, docs pre-normalised", torch_maxsim_prenorm, torch_mode,
                  shape),
        Contender("numpy loop over candidates (1 BLAS thread)", numpy_maxsim_loop,
                  numpy_blas_one_thread, shape),
    ]
    results = measure(contenders, args.section_rounds["late"], args.target,
                      "torch padded einsum MaxSim (2 threads)")
    for row in results:
        row["group"] = "late"
    one, checks["late 1 thread"] = late_one_thread(qt, dt, offs, pad, lengths, shape, args)
    results.extend(one)

    print("  -- hierarchical: 1 query × 30 docs × 8 chunks × d=384", flush=True)
    k = 8
    qv = rng.standard_normal(d).astype(F32)
    chunks = rng.standard_normal((c * k, d)).astype(F32)
    coffs = np.arange(0, c * k + 1, k, dtype=np.int64)
    hshape = f"1×{c}×{k}×{d}"
    tau = scoring.HIERARCHICAL_TAU

    def numpy_hier_loop():
        qn = qv / np.linalg.norm(qv)
        cn = chunks / np.linalg.norm(chunks, axis=1, keepdims=True)
        out = np.empty(c, F32)
        for i, (a, b) in enumerate(zip(coffs[:-1], coffs[1:])):
            s = cn[a:b] @ qn
            e = np.exp((s - s.max()) / tau)
            out[i] = (e @ s) / e.sum()
        return out

    def numpy_hier_vec():
        qn = qv / np.linalg.norm(qv)
        cn = chunks / np.linalg.norm(chunks, axis=1, keepdims=True)
        s = (cn @ qn).reshape(c, k)
        e = np.exp((s - s.max(axis=1, keepdims=True)) / tau)
        return (e * s).sum(axis=1) / e.sum(axis=1)

    href = reference.hierarchical_scores(qv, chunks, coffs)
    checks["hierarchical"] = {
        "rerank": check_close("hierarchical", scoring.hierarchical(qv, chunks, coffs, details=True)
                              .similarity, href[1], 1e-5),
        "numpy loop": check_close("numpy hierarchical loop", numpy_hier_loop(), href[1], 1e-5),
        "numpy vectorised": check_close("numpy hierarchical", numpy_hier_vec(), href[1], 1e-5)}
    contenders = [
        Contender("rerank hierarchical", lambda: scoring.hierarchical(qv, chunks, coffs),
                  shape=hshape),
        Contender("numpy loop over docs (1 BLAS thread)", numpy_hier_loop, numpy_blas_one_thread,
                  hshape),
        Contender("numpy vectorised (1 BLAS thread)", numpy_hier_vec, numpy_blas_one_thread, hshape),
    ]
    hier = measure(contenders, args.section_rounds["late"], args.target,
                   "numpy loop over docs (1 BLAS thread)")
    for row in hier:
        row["group"] = "hierarchical"
    results.extend(hier)
    return {"rows": results, "checks": checks}


@contextlib.contextmanager
def rerank_one_thread():
    threads = rerank.get_num_threads()
    rerank.set_num_threads(1)
    try:
        yield
    finally:
        rerank.set_num_threads(threads)


@contextlib.contextmanager
def torch_one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)


def late_one_thread(qt, dt, offs, pad, lengths, shape, args):
    """Late interaction side by side, one thread each: rerank on int8 codes (query quantised to 7
    bits inside the kernel) and on float32 tokens, torch's padded einsum, sentence-transformers'
    util.maxsim (when the installed version has it), and numpy's sgemm q·Dᵀ alone (no pooling)."""
    import torch
    import torch.nn.functional as F
    from rerank.quantization import maxsim_error_bound, quantize_int8

    print("  -- the same shape, one thread each", flush=True)
    codes = quantize_int8(dt).codes           # the stored form (built at index time)
    q_t, pad_t = torch.from_numpy(qt), torch.from_numpy(pad)
    valid = torch.from_numpy(np.arange(pad.shape[1])[None, :] < lengths[:, None])
    invalid = ~valid[:, None, :]

    def torch_maxsim():
        s = torch.einsum("td,cld->ctl", F.normalize(q_t, dim=-1), F.normalize(pad_t, dim=-1))
        return s.masked_fill(invalid, float("-inf")).amax(dim=-1).mean(dim=-1)

    ref = reference.late_interaction_scores(qt, dt, offs)[1]
    with rerank_one_thread():
        int8_sim = scoring.late_interaction(qt, codes, offs, details=True).similarity
    bound = maxsim_error_bound(qt, codes, offs)
    if not (np.abs(int8_sim - ref) <= bound + 1e-6).all():
        raise SystemExit("sanity check failed: int8 MaxSim outside maxsim_error_bound")
    checks = {"int8 vs float reference (max error)": float(np.abs(int8_sim - ref).max()),
              "int8 error bound (max)": float(bound.max())}
    with torch_one_thread():
        checks["torch vs reference"] = check_close("torch MaxSim", torch_maxsim().numpy(), ref, 1e-5)
    contenders = [
        Contender("rerank late_interaction int8 (1 thread)",
                  lambda: scoring.late_interaction(qt, codes, offs), rerank_one_thread, shape),
        Contender("rerank late_interaction fp32 (1 thread)",
                  lambda: scoring.late_interaction(qt, dt, offs), rerank_one_thread, shape),
        Contender("torch padded einsum (1 thread)", torch_maxsim, torch_one_thread, shape),
        Contender("numpy sgemm q·Dᵀ alone, no pooling (1 BLAS thread)", lambda: qt @ dt.T,
                  numpy_blas_one_thread, shape),
    ]
    try:
        from sentence_transformers import util as st_util
    except ImportError:
        st_util = None
    if st_util is not None and hasattr(st_util, "maxsim"):
        def st_maxsim():
            return st_util.maxsim(F.normalize(q_t, dim=-1)[None], F.normalize(pad_t, dim=-1),
                                  b_mask=valid, length_normalize=True)[0]

        with torch_one_thread():
            checks["sentence-transformers vs reference"] = check_close(
                "util.maxsim", st_maxsim().numpy(), ref, 1e-5)
        contenders.append(Contender("sentence-transformers util.maxsim (1 thread)", st_maxsim,
                                    torch_one_thread, shape))
    rows = measure(contenders, args.section_rounds["late"], args.target,
                   "torch padded einsum (1 thread)")
    for row in rows:
        row["group"] = "late-1-thread"
    return rows, checks


# ------------------------------------------------------------------------------------------------
# report

def md_table(rows, extra_cols=()) -> list[str]:
    head = ["contender", "shape", "median", "ratio"] + [name for name, _ in extra_cols] + \
        ["min–max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        base = r["contender"] == r["baseline"]
        cells = [("★ " if base else "") + r["contender"], r["shape"], fmt_time(r["median_s"]),
                 "1 (baseline)" if base else f"{r['ratio']:.2f}"]
        cells += [fn(r) for _, fn in extra_cols]
        cells.append(f"{fmt_time(r['min_s'])}–{fmt_time(r['max_s'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    env, st = report["environment"], report["status"]
    blas = "; ".join(f"{Path(b['filepath']).name.split('-')[0]} {b['version']} {b['architecture']}"
                     for b in st["blas"])
    out = [
        "# rerank kernel benchmarks",
        "",
        f"`benchmarks/bench_kernels.py {' '.join(report['argv'])}`".replace(" `", "`"),
        f"— {env['date_utc']}, {env['cpu']}, {env['usable_cpus']} CPUs, "
        f"load average at start {env['loadavg_start'][0]:.2f}, at end {report['loadavg_end'][0]:.2f}; "
        f"total run time {report['run_time_s']:.0f} s.",
        "",
        f"Threads: rerank {env['rerank_num_threads']} (backend {st['backend']}, OpenMP "
        f"{st['openmp']}, -march=native {st['native']}); torch {env.get('torch_num_threads', '-')} "
        f"(torch {env.get('torch', '-')}); numpy baseline BLAS pinned to 1 thread; "
        f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; OPENBLAS_CORETYPE "
        f"{'not set' if env['OPENBLAS_CORETYPE'] is None else '= ' + env['OPENBLAS_CORETYPE']}. "
        f"BLAS: {blas}. Extension: "
        + ", ".join(f"{k} {v['sha256']}" for k, v in env["build"].items() if isinstance(v, dict))
        + (" (STALE: older than its sources)" if env["build"]["stale"] else "") + ".",
        "",
        "Median over interleaved rounds per contender (rounds: "
        + ", ".join(f"{k} {v}" for k, v in report["rounds"].items())
        + ("" if report["quick"] or "--rounds" in " ".join(report["argv"]) else "; 7 for seq 4096")
        + f") after a warm-up; each round ≈ {report['target_s'] * 1e3:.0f} ms of "
        "repeated calls. ratio = median over rounds of (contender time ÷ ★ baseline time in the same "
        "round): below 1 is faster than the baseline.",
    ]
    secs = report["sections"]

    def load_line(name):
        ld = secs[name]["foreign_load"]
        busy = ld["other_cpus"] + ld["steal_cpus"] > 0.15
        return ["", f"Section time {ld['wall_s']:.0f} s; other processes used "
                f"{ld['other_cpus']:.2f} CPUs on average (steal {ld['steal_cpus']:.2f})"
                + (" — **busy machine: these timings are disturbed**." if busy else ".")]

    if "rerank" in secs:
        rows = secs["rerank"]["rows"]
        out += ["", "## 1. Rerank shape: 1 query × c candidates, d = 384", ""]
        out += md_table([r for r in rows if r["group"] != "batch"])
        out += ["", f"Batch: {rows[-1]['shape']} (m queries × 30 candidates × 384):", ""]
        out += md_table([r for r in rows if r["group"] == "batch"])
        sp = secs["rerank"]["batch_speedups"]
        out += ["", "Batch speedup of `rerank.scoring.memory_attention(Q, C)` (2 threads) over: "
                + "; ".join(f"{k} {v:.1f}×" for k, v in sp.items()) + "."]
        out += load_line("rerank")
    if "self" in secs:
        out += ["", "## 2. Self-attention: b = 1, h = 8, d = 64", "",
                "GFLOP/s counts 4·n²·d·h FLOPs (half with causal). Peak RSS growth: VmHWM after − before "
                "one call, in a fresh process per contender (glibc MALLOC_MMAP_THRESHOLD_=64 KiB so "
                "freed large blocks go back to the OS), with VmHWM reset after the inputs "
                "(3 × h·n·d floats) are allocated; the 1st call includes lazy initialisation "
                "(thread pools, BLAS buffers), the 2nd shows the steady state. The output alone is h·n·d·4 bytes "
                "(1, 4, 8 MiB for n = 512, 2048, 4096).", ""]
        out += md_table(secs["self"]["rows"], [
            ("GFLOP/s", lambda r: f"{r['gflops']:.0f}"),
            ("speed vs torch", lambda r: f"{r['speed_vs_torch']:.2f}×"),
            ("peak RSS growth 1st / 2nd call", lambda r: (
                f"{fmt_kib(r['memory'].get('first_kib'))} / {fmt_kib(r['memory'].get('second_kib'))}"
                if "memory" in r and "error" not in r["memory"] else "–"))])
        out += load_line("self")
    if "late" in secs:
        rows = secs["late"]["rows"]
        out += ["", "## 3. Late interaction and hierarchical, d = 384", "",
                "rerank's scorers also compute the pooled dense score and the z-mix "
                "(final = z(dense) + λ·z(sim)); torch and numpy compute the MaxSim / pooled "
                "similarity only. torch's padded tensor is built once, outside the timing.", ""]
        out += md_table([r for r in rows if r["group"] == "late"])
        out += ["", "One thread each (int8: document codes as stored, the query quantised to 7 bits "
                "in the kernel; MaxSim error vs float32 "
                f"{secs['late']['checks']['late 1 thread']['int8 vs float reference (max error)']:.1e}, "
                "bound "
                f"{secs['late']['checks']['late 1 thread']['int8 error bound (max)']:.3f}):", ""]
        out += md_table([r for r in rows if r["group"] == "late-1-thread"])
        out += [""]
        out += md_table([r for r in rows if r["group"] == "hierarchical"])
        out += load_line("late")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 rounds, ~10 ms rounds, smaller sizes (< 1 min); "
                        "writes kernels-quick.{json,md} unless --out is given")
    p.add_argument("--only", choices=SECTIONS, action="append",
                   help="run only this section (repeatable): rerank | self | late")
    p.add_argument("--rounds", type=int, help="timed rounds per contender, all sections (protocol: "
                                              "≥ 7; default 15 for rerank and late, 9 for self, "
                                              "7 for seq 4096; 3 with --quick)")
    p.add_argument("--out", help="output path without extension "
                                 "(default benchmarks/results/kernels)")
    p.add_argument("--_mem", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rounds_set = args.rounds is not None
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be ≥ 1")
    if args.rounds_set:
        args.section_rounds = dict.fromkeys(SECTIONS, args.rounds)
    elif args.quick:
        args.section_rounds = dict.fromkeys(SECTIONS, 3)
    else:
        args.section_rounds = {"rerank": 15, "self": 9, "late": 15}
    args.sections = args.only or list(SECTIONS)
    args.target = 0.010 if args.quick else 0.050
    args.batch = 200 if args.quick else 1000
    args.self_sizes = (512, 2048) if args.quick else (512, 2048, 4096)
    args.numpy_self_sizes = (512,) if args.quick else (512, 2048)
    args.mem_sizes = (2048,) if args.quick else args.self_sizes
    default_out = "kernels-quick" if args.quick else "kernels"
    args.out = Path(args.out) if args.out else HERE / "results" / default_out
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._mem:
        print(json.dumps(memory_probe(json.loads(args._mem))))
        return 0
    t_start = time.perf_counter()
    status = rerank.status()
    if status["backend"] != "compiled":
        raise SystemExit(f"rerank's backend is {status['backend']!r}, not 'compiled' "
                         f"({status['reason']}). Build the extension: "
                         ".venv/bin/python setup.py -q build_ext --inplace")
    setup_threads(with_torch=True)
    status = rerank.status()                      # after set_num_threads
    env = environment(with_torch=True)
    print_environment(env, status)
    min_rounds = min(args.section_rounds[name] for name in args.sections)
    if min_rounds < 7:
        print(f"note: {min_rounds} rounds is below the protocol's 7 (smoke run only)\n")
    if env["OPENBLAS_CORETYPE"] is not None or env["OPENBLAS_L2_SIZE"] is not None:
        print("WARNING: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set; numpy numbers are not "
              "per protocol. Run under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`.\n")
    sections = {}
    runners = {"rerank": section_rerank, "self": section_self, "late": section_late}
    for name in SECTIONS:
        if name in args.sections:
            before = _cpu_snapshot()
            sections[name] = runners[name](args)
            load = sections[name]["foreign_load"] = foreign_load(before, _cpu_snapshot())
            print(f"  section took {load['wall_s']:.0f} s; other processes used "
                  f"{load['other_cpus']:.2f} CPUs on average, steal {load['steal_cpus']:.2f}"
                  + ("  — WARNING: busy machine, timings are disturbed"
                     if load["other_cpus"] + load["steal_cpus"] > 0.15 else ""), flush=True)
            print(flush=True)
    report = {
        "argv": argv, "quick": args.quick, "rounds": {k: v for k, v in args.section_rounds.items() if k in args.sections},
        "target_s": args.target,
        "protocol_ok": min_rounds >= 7 and env["OPENBLAS_CORETYPE"] is None,
        "environment": env, "status": status, "sections": sections,
        "loadavg_end": os.getloadavg(), "run_time_s": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md = markdown(report)
    md_path.write_text(md)
    print(md)
    print(f"wrote {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path} "
          f"and {md_path.name}; run time {report['run_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
