#!/usr/bin/env python
"""Batch reranking: the local engine against Ray on the same two cores, identical results.

Run from the repository root, as root (it re-runs itself inside `unshare --net`, a network
namespace with only loopback, so Ray's traffic cannot leave the machine):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_batch.py

Workload: 100,000 queries × 90 candidate ids each into a 100,000 × 384 float32 table
(make_data from bench_retrieval.py: a seeded Gaussian mixture; each query's 90 candidates are
drawn from its source vector's cluster, filled up at random when the cluster is smaller), scored
by memory-attention (rerank.batch.rank_rows, chunks of 4,096 queries), all 90 kept and the top
10. Two table layouts: first use (only the rows the candidates use, in order of first use: the
table `rerank batch` builds from the store) and scattered (make_data's order). Local: a pool of 2
threads, the kernel at 1 thread in each. Ray: ray.init(num_cpus=2), one task per chunk with 1
CPU. Ray is started and its two workers warmed up (a small job) before timing; that start-up is
reported on its own. Each timed call includes everything rank_rows does (for Ray: ray.put of the
arrays, the tasks, gathering the results). Rounds interleave the engines (local, ray, ray,
local, …); we report medians and the median of the per-round ratios, and the CPU that processes
outside this session (the bench and its Ray) used meanwhile. The ray results are asserted equal
(bit for bit) to the local ones. Last, one end-to-end run of rerank_batch on files per engine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import bench_kernels as bk  # noqa: E402  (environment and machine-noise helpers)
import rerank  # noqa: E402
from bench_retrieval import DIM, make_data  # noqa: E402
from rerank.batch import rank_rows  # noqa: E402

CANDIDATES = 90
THREADS = 2
TARGET_OVERHEAD = 0.25
INSIDE = "RERANK_BENCH_IN_NETNS"


def candidate_rows(labels: np.ndarray, source: np.ndarray, c: int, seed: int) -> np.ndarray:
    """(m, c) int32: for each query, c distinct rows of its source vector's cluster (filled with
    random rows when the cluster has fewer than c members)."""
    rng = np.random.default_rng(seed + 1)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(labels.max() + 2))
    out = np.empty((len(source), c), dtype=np.int32)
    for i, s in enumerate(source):
        members = order[starts[labels[s]]:starts[labels[s] + 1]]
        if len(members) >= c:
            out[i] = rng.choice(members, c, replace=False)
        else:
            out[i, :len(members)] = members
            out[i, len(members):] = rng.integers(0, len(labels), c - len(members))
    return out


def same(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("rows", "scores", "offsets"))


def end_to_end(args, table, queries, rows) -> dict:
    """rerank_batch on files, once per engine: a SQLite store of the first ``e2e_docs`` table
    rows, ``e2e_queries`` vector queries whose candidates are mapped into those rows."""
    from memory_adapter import Record, SQLiteStore
    from rerank.batch import rerank_batch

    n, m = args.e2e_docs, args.e2e_queries
    tmp = Path(tempfile.mkdtemp(prefix="rr-batch-"))
    try:
        db = tmp / "store.db"
        t = time.perf_counter()
        with SQLiteStore(db, model_id="synthetic-gmm-384", dim=DIM) as store:
            for s in range(0, n, 5000):
                store.put([Record(f"doc{i}", table[i]) for i in range(s, min(s + 5000, n))])
        build_s = time.perf_counter() - t
        src = tmp / "in.jsonl"
        with open(src, "w") as fh:
            for i in range(m):
                cands = ",".join(f'"doc{j}"' for j in rows[i] % n)
                vec = ",".join(f"{x:.7g}" for x in queries[i].tolist())
                fh.write(f'{{"query_id": "q{i}", "query": [{vec}], "candidates": [{cands}]}}\n')
        out = {"docs": n, "queries": m, "input_mb": src.stat().st_size / 2**20,
               "store_build_s": build_s}
        for engine in ("local", "ray"):
            summary = rerank_batch(src, tmp / f"{engine}.jsonl", db=db, engine=engine, top_k=10)
            out[engine] = {"seconds": summary["seconds"], "timings_s": summary["timings_s"]}
            print(f"end to end ({engine}): {summary['seconds']:.2f} s {summary['timings_s']}",
                  flush=True)
        out["identical"] = (tmp / "local.jsonl").read_bytes() == (tmp / "ray.jsonl").read_bytes()
        assert out["identical"], "rerank_batch wrote different files on the two engines"
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def first_use_layout(table: np.ndarray, rows: np.ndarray):
    """The table rerank_batch builds from the store: only the rows the candidates use, in order
    of first use (its id → row map), and the candidates renumbered into it."""
    flat = rows.ravel()
    first = np.full(len(table), flat.size, dtype=np.int64)
    first[flat[::-1]] = np.arange(flat.size - 1, -1, -1)      # the earliest write wins
    used = np.flatnonzero(first < flat.size)
    order = used[np.argsort(first[used], kind="stable")]
    renumber = np.empty(len(table), np.int32)
    renumber[order] = np.arange(len(order), dtype=np.int32)
    return np.ascontiguousarray(table[order]), renumber[rows]


def session_cpu_s() -> float:
    """CPU seconds of every live process in this session (the bench and Ray's processes)."""
    sid, hz, total = os.getsid(0), os.sysconf("SC_CLK_TCK"), 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:                      # fields[0] is the state (field 3)
            total += sum(int(x) for x in fields[11:15])    # utime stime cutime cstime
    return total / hz


def machine_busy_s() -> float:
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)) / \
        os.sysconf("SC_CLK_TCK")


def compare(name, args, queries, rows, table, top_k=None) -> dict:
    """Interleaved rounds of both engines on one layout; asserts identical results."""
    kwargs = {"chunk_size": args.chunk_size, "top_k": top_k}
    runs = {"local": lambda: rank_rows(queries, rows, table, threads=THREADS, **kwargs),
            "ray": lambda: rank_rows(queries, rows, table, engine="ray", threads=1, **kwargs)}
    times, other, identical = {"local": [], "ray": []}, [], None
    for r in range(args.rounds):
        results = {}
        wall0, busy0, own0 = time.perf_counter(), machine_busy_s(), session_cpu_s()
        for engine in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
            t = time.perf_counter()
            results[engine] = runs[engine]()
            times[engine].append(time.perf_counter() - t)
        wall = time.perf_counter() - wall0
        other.append(max(0.0, (machine_busy_s() - busy0) - (session_cpu_s() - own0)) / wall)
        if identical is None:
            identical = same(results["local"], results["ray"])
            assert identical, f"{name}: the ray engine's results differ from the local engine's"
        print(f"{name} round {r + 1}: local {times['local'][-1]:.3f} s, ray "
              f"{times['ray'][-1]:.3f} s (other processes: {other[-1]:.2f} CPUs)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [b / a for a, b in zip(times["local"], times["ray"])]
    overhead = statistics.median(ratios) - 1.0
    return {"table_rows": len(table), "top_k": top_k, "times_s": times, "median_s": med,
            "queries_per_s": {k: len(queries) / v for k, v in med.items()},
            "ray_over_local_per_round": ratios, "ray_overhead": overhead,
            "meets_target": overhead <= TARGET_OVERHEAD, "identical": identical,
            "other_cpus_per_round": other, "disturbed": max(other) > 0.15}


def run_inside(args) -> dict:
    import ray

    rerank.set_num_threads(THREADS)
    env = bk.environment(with_torch=False)
    bk.print_environment(env, rerank.status())
    if rerank.status()["backend"] != "compiled":
        raise SystemExit("the compiled backend is not active: build the extension first")
    t = time.perf_counter()
    table, labels, queries, source = make_data(args.n, args.queries, centres=max(1, args.n // 100),
                                               spread=0.7, noise=0.5, seed=args.seed)
    rows = candidate_rows(labels, source, CANDIDATES, args.seed)
    first_table, first_rows = first_use_layout(table, rows)
    print(f"data: table {table.shape}, queries {queries.shape}, rows {rows.shape}; "
          f"{len(first_table):,} rows used ({time.perf_counter() - t:.1f} s)", flush=True)
    rank_rows(queries[:2000], rows[:2000], table, threads=THREADS, chunk_size=1000)   # warm-up
    temp_dir = tempfile.mkdtemp(prefix="rr-ray-")
    try:
        t = time.perf_counter()
        ray.init(num_cpus=THREADS, include_dashboard=False, _node_ip_address="127.0.0.1",
                 _temp_dir=temp_dir, log_to_driver=False)
        init_s = time.perf_counter() - t
        t = time.perf_counter()
        rank_rows(queries[:2000], rows[:2000], table, engine="ray", chunk_size=1000)
        warm_s = time.perf_counter() - t
        print(f"ray.init {init_s:.2f} s, first job (starts the workers) {warm_s:.2f} s",
              flush=True)
        t = time.perf_counter()
        ref = ray.put(table)
        put_s = time.perf_counter() - t
        del ref
        e2e = end_to_end(args, table, queries, rows)
        layouts = {"first_use": compare("first-use layout", args, queries, first_rows,
                                        first_table),
                   "first_use_top10": compare("first-use layout, top 10", args, queries,
                                              first_rows, first_table, top_k=10),
                   "scattered": compare("scattered layout", args, queries, rows, table)}
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    return {
        "workload": {"queries": args.queries, "table_rows": args.n, "dim": DIM,
                     "candidates_per_query": CANDIDATES,
                     "chunk_size": args.chunk_size, "seed": args.seed},
        "threads": {"local": f"{THREADS}-thread pool, kernel at 1 thread per chunk",
                    "ray": f"ray.init(num_cpus={THREADS}), 1 CPU per task, kernel at 1 thread",
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "ray": {"version": ray.__version__, "init_s": init_s, "first_job_s": warm_s,
                "put_table_s": put_s},
        "rounds": args.rounds, "layouts": layouts, "target_overhead": TARGET_OVERHEAD,
        "end_to_end": e2e, "environment": env, "status": rerank.status(),
        "platform": platform.platform(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def markdown(rep: dict) -> str:
    w, e, ray_info = rep["workload"], rep["end_to_end"], rep["ray"]
    lay = rep["layouts"]
    rows = []
    for key, label in (("first_use", "first-use (as `rerank batch` builds it)"),
                       ("first_use_top10", "first-use"),
                       ("scattered", "scattered (make_data's row order)")):
        r = lay[key]
        kept = "all 90" if r["top_k"] is None else f"top {r['top_k']}"
        rows += [f"| {label} | {kept} | local | {r['median_s']['local']:.3f} s | "
                 f"{r['queries_per_s']['local']:,.0f} | |",
                 f"| | | Ray {ray_info['version']} | {r['median_s']['ray']:.3f} s | "
                 f"{r['queries_per_s']['ray']:,.0f} | {r['ray_overhead']:+.1%} |"]
    busy = max(max(r["other_cpus_per_round"]) for r in lay.values())
    return "\n".join([
        "# Batch reranking: local engine vs Ray",
        "",
        f"{w['queries']:,} queries × {w['candidates_per_query']} candidates (ids into a "
        f"{w['table_rows']:,} × {w['dim']} float32 table), memory-attention, all candidates "
        f"scored (`rerank.batch.rank_rows`), chunks of {w['chunk_size']:,} queries; "
        f"{rep['environment']['cpu']}, {rep['environment']['usable_cpus']} CPUs, "
        f"{rep['date_utc'][:10]}; median of {rep['rounds']} interleaved rounds. Threads: local = "
        f"{rep['threads']['local']}; Ray = {rep['threads']['ray']}. Other processes used at "
        f"most {busy:.2f} CPUs during a round"
        + (" (**a busy machine: the timings are disturbed**)." if busy > 0.15 else "."),
        "",
        "| table layout | results kept | engine | median | queries/s | Ray overhead |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Ray overhead = median of the per-round ratios ray/local − 1 (target ≤ "
        f"{rep['target_overhead']:.0%}). Results identical (rows and scores, bit for bit): "
        f"{'yes' if all(r['identical'] for r in lay.values()) else 'NO'}. The first-use table "
        f"holds the {lay['first_use']['table_rows']:,} rows the candidates use, in order of "
        "first use, as `rerank batch` reads it from the store. Ray start-up, not in the "
        "timings: ray.init "
        f"{ray_info['init_s']:.2f} s, then the first (2,000-query) job "
        f"{ray_info['first_job_s']:.2f} s (it starts the two workers); ray.put of the "
        f"{w['table_rows']:,}-row table alone {ray_info['put_table_s'] * 1e3:.0f} ms (inside the "
        "timed Ray calls). Run in a network namespace with only loopback.",
        "",
        f"End to end through files (`rerank_batch`, one run per engine, top 10): "
        f"{e['queries']:,} vector queries × {w['candidates_per_query']} candidates "
        f"({e['input_mb']:.0f} MiB of JSON lines) against a SQLite store of {e['docs']:,} "
        "documents:",
        "",
        "| engine | total | read + parse | look up vectors | rank | write |",
        "|---|---|---|---|---|---|",
        *(f"| {k} | {e[k]['seconds']:.2f} s | {e[k]['timings_s']['read']:.2f} s | "
          f"{e[k]['timings_s']['lookup']:.2f} s | {e[k]['timings_s']['rank']:.2f} s | "
          f"{e[k]['timings_s']['write']:.2f} s |" for k in ("local", "ray")),
        "",
        f"Files identical: {'yes' if e['identical'] else 'NO'}.",
        ""])


def reexec_in_netns(argv) -> int:
    """Run this script again inside `unshare --net` with lo up; kill its process group after."""
    cmd = "ip link set lo up && exec " + shlex.join(
        [sys.executable, str(Path(__file__).resolve()), *argv])
    env = {**os.environ, INSIDE: "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(["unshare", "--net", "sh", "-c", cmd], cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        return proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=100_000)
    p.add_argument("-n", "--n", type=int, default=100_000, help="table rows")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (protocol: ≥ 7)")
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--e2e-queries", type=int, default=10_000,
                   help="queries of the end-to-end file run (rerank_batch, top 10)")
    p.add_argument("--e2e-docs", type=int, default=20_000, help="documents of its SQLite store")
    p.add_argument("--out", default=str(HERE / "results" / "batch"),
                   help="output path without extension (default benchmarks/results/batch)")
    args = p.parse_args(argv)
    if args.queries > args.n:
        p.error("--queries must be ≤ --n (queries are drawn from the table's vectors)")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not os.environ.get(INSIDE):
        return reexec_in_netns(argv)
    report = run_inside(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    md = markdown(report)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
