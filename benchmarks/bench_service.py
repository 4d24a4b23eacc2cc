"""AttentionService costs: a cache lookup against the computation it saves, the input size below
which hashing costs more than computing (the service's MIN_CACHE_BYTES), and selection time.

1. seq 128 / 512 / 2048 (d = 64, one head, flash-attention-v2): the computation (cache off, fresh
   inputs every round so nothing is a hit), the key + lookup alone, and a whole ``forward`` that
   hits (lookup + copy of the output). Goal: lookup ≤ 10 % of the computation at seq ≥ 512.
2. Small inputs (n = 2 … 128 rows, d = 64 and d = 16): hashing + lookup against the mechanism's
   computation; the crossover (in q + k + v bytes) is where caching starts to pay.
3. ``MechanismSelector.select`` and ``AttentionService.recommend`` (goal ≤ 5 µs).

Best of several rounds (a shared machine); one Python thread. Writes ``benchmarks/results/service.{md,json}``.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from rerank import backend, registry  # noqa: E402
from rerank.cache import AttentionCache, cache_key  # noqa: E402
from rerank.selector import MechanismSelector  # noqa: E402
from rerank.service import MIN_CACHE_BYTES, AttentionService  # noqa: E402

MECH = "flash-attention-v2"


def _best_time(fn, number: int, repeat: int) -> float:
    """Best of ``repeat`` rounds of ``number`` calls, per call (the machine is shared: the
    minimum is the figure least disturbed by other processes)."""
    fn()
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def _inputs(rng, n, d):
    return tuple(rng.standard_normal((n, d)).astype(np.float32) for _ in range(3))


def _lookup_cost(q, k, v, cache):
    params = {" causal": False, " precision": "fp32", " backend": backend.active()}
    return lambda: cache.get(cache_key((q, k, v), mechanism=MECH, params=params))


def lookup_vs_compute(rng) -> list[dict]:
    rows = []
    mech = registry.get(MECH)
    for n, rounds in ((128, 200), (512, 20), (2048, 3)):
        fresh = [_inputs(rng, n, 64) for _ in range(3)]
        times = []
        for _ in range(7):                         # inputs change every call: never a hit
            for q, k, v in fresh:
                t0 = time.perf_counter()
                mech.forward(q, k, v)
                times.append(time.perf_counter() - t0)
        compute = min(times)
        q, k, v = fresh[0]
        service = AttentionService()
        service.forward(q, k, v)
        lookup = _best_time(_lookup_cost(q, k, v, service.cache), rounds * 5, 7)
        hit = _best_time(lambda: service.forward(q, k, v), rounds * 5, 7)
        assert service.forward(q, k, v).cache_hit
        rows.append({"seq_len": n, "d": 64, "input_bytes": 3 * q.nbytes,
                     "compute_us": compute * 1e6, "lookup_us": lookup * 1e6,
                     "forward_hit_us": hit * 1e6, "lookup_fraction": lookup / compute,
                     "hit_fraction": hit / compute})
    return rows


def small_input_crossover(rng) -> dict:
    out = {}
    cache = AttentionCache()
    for d in (64, 16):
        rows, mech = [], registry.get(MECH)
        for n in (2, 4, 8, 16, 24, 32, 48, 64, 96, 128):
            q, k, v = _inputs(rng, n, d)
            hash_s = _best_time(_lookup_cost(q, k, v, cache), 2000, 7)
            compute_s = _best_time(lambda: mech.forward(q, k, v), 500, 7)
            rows.append({"n": n, "d": d, "input_bytes": 3 * q.nbytes, "hash_lookup_us":
                         hash_s * 1e6, "compute_us": compute_s * 1e6})
        pays = [r["input_bytes"] for r in rows if r["hash_lookup_us"] < r["compute_us"]]
        # the smallest size from which on hashing stays cheaper than computing
        crossover = None
        for i, r in enumerate(rows):
            if all(x["hash_lookup_us"] < x["compute_us"] for x in rows[i:]):
                crossover = r["input_bytes"]
                break
        out[f"d={d}"] = {"rows": rows, "crossover_bytes": crossover,
                         "smallest_paying_bytes": min(pays) if pays else None}
    return out


def selection_times() -> list[dict]:
    selector = MechanismSelector()
    service = AttentionService()
    cases = {
        "MechanismSelector.select(seq_len=512)": lambda: selector.select(seq_len=512),
        "MechanismSelector.select(seq_len=40000)": lambda: selector.select(seq_len=40000),
        "AttentionService.recommend(512) (memoised)": lambda: service.recommend(512),
        "AttentionService.recommend(20000, 4) (memoised)": lambda: service.recommend(20000, 4),
        "MechanismSelector.explain(512) (recommend's first call)":
            lambda: selector.explain(512),
    }
    return [{"case": label, "best_us": _best_time(fn, 20000, 7) * 1e6}
            for label, fn in cases.items()]


def main() -> None:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "backend": backend.active(), "threads": backend.get_num_threads(),
                    "load_avg": os.getloadavg()},
        "min_cache_bytes": MIN_CACHE_BYTES,
        "lookup_vs_compute": lookup_vs_compute(rng),
        "small_inputs": small_input_crossover(rng),
        "selection": selection_times(),
    }
    report["seconds"] = time.perf_counter() - start
    out = os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "service.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    m = report["machine"]
    lines = ["# AttentionService: cache and selection costs", "",
             f"`benchmarks/bench_service.py` — {report['date']}; {m['cpus']} CPUs, backend "
             f"{m['backend']}, {m['threads']} kernel threads, load average "
             f"{m['load_avg'][0]:.1f} (shared machine); best of several rounds.", "",
             f"## Cache lookup vs the computation it saves ({MECH}, d = 64)", "",
             "| seq | compute | key + lookup | lookup / compute | whole hit (lookup + copy) "
             "| hit / compute |", "|---|---|---|---|---|---|"]
    for r in report["lookup_vs_compute"]:
        lines.append(f"| {r['seq_len']} | {r['compute_us']:.0f} µs | {r['lookup_us']:.1f} µs | "
                     f"{100 * r['lookup_fraction']:.2f} % | {r['forward_hit_us']:.1f} µs | "
                     f"{100 * r['hit_fraction']:.2f} % |")
    lines += ["", "Goal: lookup ≤ 10 % of the computation at seq ≥ 512.", "",
              "## Small inputs: hashing + lookup vs computing", "",
              "| d | n | q+k+v bytes | hash + lookup | compute |", "|---|---|---|---|---|"]
    for key, block in report["small_inputs"].items():
        for r in block["rows"]:
            lines.append(f"| {r['d']} | {r['n']} | {r['input_bytes']} | "
                         f"{r['hash_lookup_us']:.1f} µs | {r['compute_us']:.1f} µs |")
    lines += [""] + [f"- {key}: hashing stays cheaper than computing from "
                     f"{block['crossover_bytes']} input bytes on" for key, block in
                     report["small_inputs"].items()]
    lines += [f"- the service caches inputs of at least `MIN_CACHE_BYTES` = {MIN_CACHE_BYTES} "
              "bytes", "", "## Selection (goal ≤ 5 µs)", "", "| call | best |", "|---|---|"]
    lines += [f"| {r['case']} | {r['best_us']:.2f} µs |" for r in report["selection"]]
    lines += ["", f"Ran in {report['seconds']:.0f} s."]
    with open(os.path.join(out, "service.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
