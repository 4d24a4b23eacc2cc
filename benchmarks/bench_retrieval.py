#!/usr/bin/env python
"""Retrieval benchmarks: HNSW build, memory-service ingest, query latency (search, search + rerank,
exact) and recall@10, on clustered synthetic vectors.

Run from the repository root (see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_retrieval.py

Data: a seeded Gaussian mixture of unit vectors (n × 384, n/100 centres), queries are corpus
vectors plus Gaussian noise, re-normalised (see ``make_data``). Protocol (../shared/BENCHMARKS.md):
query latency is timed call by call (``perf_counter_ns``) over R rounds of the whole query set,
contenders interleaved round by round after a warm-up round; we report the median over rounds of
each round's p50/p90/p99. Builds are single passes (a 100k build takes about a minute), reported
as a whole and per batch. Peak RSS growth is VmHWM after − RSS before (VmHWM reset first).
"""
from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

import bench_kernels as bk  # noqa: E402  (environment, machine-noise and VmHWM helpers)
import rerank  # noqa: E402
from rerank.pipeline import Pipeline  # noqa: E402
from rerank.reranker import Candidates, Reranker  # noqa: E402

F32 = np.float32
DIM = 384
MODEL_ID = "synthetic-gmm-384"
BUILD_THREADS = 2
QUERY_THREADS = 1
CANDIDATES = 30          # k · overfetch with k = 10, overfetch = 3
TOP_K = 10
TARGETS = {"ingest_docs_per_s": 1500.0, "search_rerank_p50_ms": 0.5, "search_rerank_p99_ms": 2.0}


# ------------------------------------------------------------------------------------------------
# data

def make_data(n: int, n_queries: int, *, centres: int, spread: float, noise: float, seed: int):
    """Corpus (n, d) and queries (m, d), float32, unit norm.

    Corpus: centre_k ~ N(0, I_d) normalised (``centres`` of them); each vector picks a centre
    uniformly and is centre + spread·g/√d with g ~ N(0, I_d), then normalised (so its noise has
    norm ≈ ``spread``; cosine to its centre ≈ 1/√(1+spread²)). Queries: ``n_queries`` distinct
    corpus vectors (drawn without replacement) + noise·g/√d, normalised."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, DIM), dtype=F32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    labels = rng.integers(0, centres, n)
    x = rng.standard_normal((n, DIM), dtype=F32)
    x *= F32(spread / np.sqrt(DIM))
    x += c[labels]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    source = rng.choice(n, n_queries, replace=False)
    q = x[source] + rng.standard_normal((n_queries, DIM), dtype=F32) * F32(noise / np.sqrt(DIM))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.ascontiguousarray(x), labels, np.ascontiguousarray(q), source


def exact_topk(x: np.ndarray, q: np.ndarray, k: int, chunk: int = 250):
    """Exact top-k ids (m, k) and scores (m, k) by inner product (= cosine: unit vectors), best
    first; BLAS at its default threads (not timed)."""
    ids = np.empty((len(q), k), np.int64)
    scores = np.empty((len(q), k), F32)
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ x.T
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(sim, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        ids[s:s + chunk] = np.take_along_axis(part, order, axis=1)
        scores[s:s + chunk] = np.take_along_axis(ps, order, axis=1)
    return ids, scores


def exact_one(x: np.ndarray, q: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Brute-force top-k for one query: one sgemv over the corpus, argpartition, sort the k."""
    s = x @ q
    top = np.argpartition(-s, k - 1)[:k]
    return top[np.argsort(-s[top], kind="stable")]


WORDS = ("memory vector index graph query answer rerank attention token cluster model store "
         "search recall latency batch record window signal layer").split()


def doc_text(i: int, cluster: int) -> str:
    w = WORDS
    return (f"Document {i} in topic {cluster}: {w[i % 20]} {w[(i // 20) % 20]} "
            f"{w[(i * 7) % 20]} {w[(cluster * 3) % 20]} notes.")


def doc_metadata(i: int, cluster: int) -> dict:
    return {"topic": int(cluster), "source": "synthetic", "shard": i % 8}


# ------------------------------------------------------------------------------------------------
# helpers

def rss_kib() -> int:
    return bk._status_kb("VmRSS")


def hwm_kib() -> int:
    return bk._status_kb("VmHWM")


def cpu_time() -> float:
    t = os.times()
    return t.user + t.system


def fmt_mib(kib) -> str:
    return "–" if kib is None else f"{kib / 1024:.0f} MiB"


def fmt_ms(ns: float) -> str:
    ms = ns / 1e6
    return f"{ms:.3f} ms" if ms < 10 else f"{ms:.1f} ms"


def vid(i: int) -> str:
    return f"doc{i}"


def pct(a: np.ndarray, p: float) -> float:
    return float(np.percentile(a, p))


def load_section(name: str, fn):
    before = bk._cpu_snapshot()
    out = fn()
    load = out["foreign_load"] = bk.foreign_load(before, bk._cpu_snapshot())
    print(f"  section took {load['wall_s']:.0f} s; other processes used "
          f"{load['other_cpus']:.2f} CPUs on average, steal {load['steal_cpus']:.2f}"
          + ("  — WARNING: busy machine, timings are disturbed"
             if load["other_cpus"] + load["steal_cpus"] > 0.15 else ""), flush=True)
    print(flush=True)
    return out


# ------------------------------------------------------------------------------------------------
# 1. index build

def section_build(args, data) -> dict:
    from rerank.retrieval import HNSWIndex

    x = data["x"]
    n = len(x)
    print(f"== 1. HNSWIndex build: {n} × {DIM}, M={args.M}, ef_construction={args.efc}, "
          f"{BUILD_THREADS} threads, batches of {args.build_batch} ==", flush=True)
    rerank.set_num_threads(BUILD_THREADS)
    ids = [vid(i) for i in range(n)]
    gc.collect()
    hwm_reset = bk._reset_hwm()
    rss0 = rss_kib()
    index = HNSWIndex(DIM, space="cosine", model_id=MODEL_ID, M=args.M,
                      ef_construction=args.efc, ef=args.ef)
    threads_used = index.num_threads
    batches = []
    c0, t0 = cpu_time(), time.perf_counter()
    for s in range(0, n, args.build_batch):
        tb = time.perf_counter()
        index.add(ids[s:s + args.build_batch], x[s:s + args.build_batch])
        batches.append(time.perf_counter() - tb)
    wall = time.perf_counter() - t0
    cpu = cpu_time() - c0
    peak, rss1 = hwm_kib() - rss0, rss_kib() - rss0
    rates = [min(args.build_batch, n - i * args.build_batch) / t for i, t in enumerate(batches)]
    out = {"n": n, "dim": DIM, "M": args.M, "ef_construction": args.efc, "ef": args.ef,
           "batch": args.build_batch, "capacity_initial": index.capacity,
           "hnswlib_threads": threads_used, "rerank_threads": rerank.get_num_threads(),
           "seconds": wall, "vectors_per_s": n / wall, "batch_seconds": batches,
           "batch_vectors_per_s": rates, "median_batch_vectors_per_s": statistics.median(rates),
           "cpu_seconds": cpu, "cpus_used": cpu / wall, "peak_rss_growth_kib": peak,
           "rss_growth_after_kib": rss1, "hwm_reset": hwm_reset, "count": index.count}
    print(f"  {n} vectors in {wall:.1f} s = {n / wall:,.0f} vectors/s (hnswlib threads "
          f"{threads_used}; {cpu / wall:.2f} CPUs busy); batches {rates[0]:,.0f} → "
          f"{rates[-1]:,.0f} vectors/s; peak RSS growth {fmt_mib(peak)}, after {fmt_mib(rss1)}",
          flush=True)
    data["index"] = index
    return out


# ------------------------------------------------------------------------------------------------
# 2. ingest through the memory service

class _Timed:
    """Wrap a bound method, adding its wall time to ``self.seconds``."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *a, **kw):
        t = time.perf_counter()
        try:
            return self.fn(*a, **kw)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1


#: mode → (keyword arguments for ``open``, description)
INGEST_MODES = {
    "default": ({}, "`open()` defaults ({settings}): the index file is saved after a batch when "
                    "the last save is old enough, and on close"),
    "every-batch": ({"autosave_seconds": 0}, "{settings}: the whole index file is rewritten "
                                             "after every batch"),
    "bulk": ({"autosave": False}, "{settings}, one `save_index()` at the end (included in the "
                                  "time)"),
}


def open_service(args, db_path, mode: str):
    from memory_adapter.attention_memory import AttentionEnhancedMemory

    return AttentionEnhancedMemory.open(db=str(db_path), dim=DIM, model_id=MODEL_ID, M=args.M,
                                        ef_construction=args.efc, ef=args.ef,
                                        **INGEST_MODES[mode][0])


def autosave_settings(svc) -> str:
    out = f"autosave={svc.autosave}"
    if svc.autosave and hasattr(svc, "autosave_seconds"):
        out += f", autosave_seconds={svc.autosave_seconds:g}"
    return out


def ingest_once(args, data, batches, mode: str) -> tuple[dict, object, Path]:
    n = sum(len(b) for b in batches)
    tmp = Path(tempfile.mkdtemp(prefix="bench_retrieval_", dir=args.tmpdir))
    os.sync()   # flush earlier writes (e.g. the previous mode's files) outside the timing
    gc.collect()
    hwm_reset = bk._reset_hwm()
    rss0 = rss_kib()
    t_open = time.perf_counter()
    svc = open_service(args, tmp / "memory.db", mode)
    t_open = time.perf_counter() - t_open
    source = svc.candidate_source
    put = svc.document_store.put = _Timed(svc.document_store.put)
    add = source.add = _Timed(source.add)
    save = svc.save_index = _Timed(svc.save_index)
    times = []
    c0, t0 = cpu_time(), time.perf_counter()
    for b in batches:
        tb = time.perf_counter()
        svc.store(b)
        times.append(time.perf_counter() - tb)
    if mode == "bulk":
        svc.save_index()
    wall = time.perf_counter() - t0
    cpu = cpu_time() - c0
    peak, rss1 = hwm_kib() - rss0, rss_kib() - rss0
    del svc.document_store.put, source.add, svc.save_index   # back to the class's methods
    rates = [len(b) / t for b, t in zip(batches, times)]
    tenth = max(1, len(batches) // 10)
    files = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
    out = {"mode": mode, "autosave": svc.autosave, "n": n,
           "autosave_seconds": getattr(svc, "autosave_seconds", None),
           "description": INGEST_MODES[mode][1].format(settings=autosave_settings(svc)),
           "batch": len(batches[0]), "seconds": wall, "docs_per_s": n / wall,
           "median_batch_docs_per_s": statistics.median(rates),
           "first_tenth_docs_per_s": sum(map(len, batches[:tenth])) / sum(times[:tenth]),
           "last_tenth_docs_per_s": sum(map(len, batches[-tenth:])) / sum(times[-tenth:]),
           "batch_seconds": times,
           "store_put_seconds": put.seconds, "index_add_seconds": add.seconds,
           "index_save_seconds": save.seconds, "index_saves": save.calls,
           "other_seconds": wall - put.seconds - add.seconds - save.seconds,
           "open_seconds": t_open, "cpu_seconds": cpu, "cpus_used": cpu / wall,
           "hnswlib_threads": source.num_threads, "peak_rss_growth_kib": peak,
           "rss_growth_after_kib": rss1, "hwm_reset": hwm_reset, "files_bytes": files,
           "target_docs_per_s": TARGETS["ingest_docs_per_s"],
           "meets_target": n / wall >= TARGETS["ingest_docs_per_s"],
           "documents": svc.document_store.count(), "indexed": source.count}
    if out["documents"] != n or out["indexed"] != n:
        raise SystemExit(f"ingest ({mode}) stored {out['documents']} documents and indexed "
                         f"{out['indexed']}, expected {n}")
    print(f"  {mode:<11}: {n} documents in {wall:.1f} s = {n / wall:,.0f} docs/s (target ≥ "
          f"{TARGETS['ingest_docs_per_s']:,.0f}{'' if out['meets_target'] else ': MISSED'}); "
          f"store.put {put.seconds:.1f} s, index.add {add.seconds:.1f} s, index save "
          f"{save.seconds:.1f} s ({save.calls}×), other {out['other_seconds']:.1f} s; "
          f"{cpu / wall:.2f} CPUs busy; batches {out['first_tenth_docs_per_s']:,.0f} → "
          f"{out['last_tenth_docs_per_s']:,.0f} docs/s (first → last tenth); peak RSS growth "
          f"{fmt_mib(peak)}; files {files / 2**20:.0f} MiB", flush=True)
    return out, svc, tmp


def section_ingest(args, data) -> dict:
    x, labels = data["x"], data["labels"]
    n = len(x)
    print(f"== 2. ingest through AttentionEnhancedMemory (SQLite + HNSWIndex): {n} documents, "
          f"batches of {args.ingest_batch}, {BUILD_THREADS} threads; modes: "
          f"{', '.join(args.ingest_modes)} ==", flush=True)
    rerank.set_num_threads(BUILD_THREADS)
    batches = []   # built before timing: the caller's data, not the service's work
    for s in range(0, n, args.ingest_batch):
        batches.append([{"id": vid(i), "vector": x[i], "text": doc_text(i, int(labels[i])),
                         "metadata": doc_metadata(i, int(labels[i]))}
                        for i in range(s, min(n, s + args.ingest_batch))])
    rows = []
    for k, mode in enumerate(args.ingest_modes):
        row, svc, tmp = ingest_once(args, data, batches, mode)
        rows.append(row)
        if k < len(args.ingest_modes) - 1:
            t = time.perf_counter()
            svc.close()                  # saves the index if a batch is still unsaved
            row["close_seconds"] = time.perf_counter() - t
            print(f"  {mode:<11}: close() {row['close_seconds']:.1f} s (saves an unsaved index)")
            shutil.rmtree(tmp, ignore_errors=True)
            del svc
        else:          # the last one serves the query sections
            data["service"], data["tmp"], data["service_mode"] = svc, tmp, mode
    example = {k: (v if k != "vector" else f"float32 ({DIM},)") for k, v in batches[0][0].items()}
    return {"rows": rows, "example_document": example, "query_service_mode": data["service_mode"]}


# ------------------------------------------------------------------------------------------------
# 3. query latency (one thread) and 4. recall

def time_calls(fn, queries) -> np.ndarray:
    out = np.empty(len(queries), np.int64)
    clock = time.perf_counter_ns
    for i, q in enumerate(queries):
        t0 = clock()
        fn(q)
        out[i] = clock() - t0
    return out


def section_latency(args, data) -> dict:
    from threadpoolctl import threadpool_info, threadpool_limits

    x, qs = data["x"], data["q"]
    index, svc = data["index"], data["service"]
    m = len(qs)
    queries = list(qs)                          # (d,) rows; their id() keys the fixed inputs
    exact_queries = queries[:args.exact_queries]
    print(f"== 3. query latency on one thread: {m} queries × {args.rounds} rounds (+1 warm-up), "
          f"search {CANDIDATES} → rerank top {TOP_K}; exact search on the first "
          f"{len(exact_queries)} queries ==", flush=True)
    rerank.set_num_threads(QUERY_THREADS)
    reranker = Reranker("memory-attention")

    def candidates(q, n, filter=None):
        r = index.search(q, n)
        return Candidates(vectors=r.vectors[0], ids=r.ids[0]), r.scores[0]

    pipe = Pipeline(candidates, lambda q, c, k: reranker.rank(q, c, top_k=k), overfetch=3, cap=100)
    available = index.count

    def raw_path(q):
        r = index.search(q, CANDIDATES)
        return reranker.rank(q, Candidates(vectors=r.vectors[0], ids=r.ids[0]), top_k=TOP_K)

    # fixed inputs for the component rows: each query's 30 HNSW candidates
    fixed, fixed_ids = {}, {}
    for q in queries:
        r = index.search(q, CANDIDATES)
        fixed[id(q)] = Candidates(vectors=r.vectors[0], ids=r.ids[0])
        fixed_ids[id(q)] = r.ids[0]
    store = svc.document_store
    graph = getattr(getattr(index, "_state", None), "index", None)   # the wrapped hnswlib.Index
    contenders = []
    if graph is not None:
        contenders.append(("hnswlib knn_query k=30 (the wrapped graph)",
                           lambda q: graph.knn_query(q, k=CANDIDATES, num_threads=1), "component"))
    contenders += [
        ("HNSWIndex.search n=30", lambda q: index.search(q, CANDIDATES), "search"),
        ("Reranker.rank 30 → top 10 (candidates given)",
         lambda q: reranker.rank(q, fixed[id(q)], top_k=TOP_K), "component"),
        ("document_store.get(30 ids) (SQLite read)", lambda q: store.get(fixed_ids[id(q)]),
         "component"),
        ("HNSWIndex.search 30 + Reranker.rank top 10", raw_path, "search+rerank"),
        ("Pipeline(HNSWIndex.search, Reranker.rank).run k=10",
         lambda q: pipe.run(q, TOP_K, available=available), "search+rerank"),
        ("service.search k=30 (UnifiedMemoryService)", lambda q: svc.search(q, CANDIDATES),
         "search"),
    ]
    if "documents" in inspect.signature(svc.search).parameters:
        contenders += [
            ("service.search k=30, documents=False (no store read)",
             lambda q: svc.search(q, CANDIDATES, documents=False), "search"),
        ]
        if callable(getattr(store, "documents", None)):   # what retrieve reads for the final k
            contenders.append(("document_store.documents(10 ids) (text + metadata)",
                               lambda q: store.documents(fixed_ids[id(q)][:TOP_K]), "component"))
        else:
            contenders.append(("document_store.get(10 ids) (SQLite read)",
                               lambda q: store.get(fixed_ids[id(q)][:TOP_K]), "component"))
    contenders += [
        ("service.retrieve k=10 (AttentionEnhancedMemory)", lambda q: svc.retrieve(q, TOP_K),
         "search+rerank"),
        ("exact numpy top-10 (brute force, 1 BLAS thread)", lambda q: exact_one(x, q), "exact"),
    ]
    samples = {name: [] for name, _, _ in contenders}
    limiter = threadpool_limits(limits=QUERY_THREADS, user_api="blas")
    try:
        info = threadpool_info()
        thread_state = {"rerank_threads": rerank.get_num_threads(),
                        "hnswlib_threads_search": 1,
                        "index_num_threads": index.num_threads,
                        "service_index_num_threads": svc.candidate_source.num_threads,
                        "threadpool_info": info}
        print(f"  threads: rerank.get_num_threads() = {rerank.get_num_threads()}; hnswlib 1 "
              f"(HNSWIndex.search runs a single query on the calling thread; "
              f"HNSWIndex.num_threads = {index.num_threads}); BLAS:", flush=True)
        for line in bk.blas_summary(info):
            print("   ", line)
        for rnd in range(args.rounds + 1):        # round 0 = warm-up
            line = []
            for name, fn, _ in contenders:
                qset = exact_queries if name.startswith("exact") else queries
                gc.collect()
                t = time_calls(fn, qset)
                if rnd:
                    samples[name].append(t)
                line.append(f"{np.median(t) / 1e3:.0f}")
            print(f"  round {rnd}{' (warm-up)' if rnd == 0 else ''}: p50 µs "
                  + " / ".join(line), flush=True)
        profile = profile_retrieve(svc, queries[:args.profile_queries])
    finally:
        limiter.restore_original_limits()
    rows = []
    for name, _, kind in contenders:
        per = samples[name]
        p50 = [pct(t, 50) for t in per]
        p90 = [pct(t, 90) for t in per]
        p99 = [pct(t, 99) for t in per]
        mean = [float(t.mean()) for t in per]
        row = {"path": name, "kind": kind, "calls_per_round": len(per[0]), "rounds": len(per),
               "p50_ns": statistics.median(p50), "p90_ns": statistics.median(p90),
               "p99_ns": statistics.median(p99), "mean_ns": statistics.median(mean),
               "max_ns": statistics.median([float(t.max()) for t in per]),
               "p50_min_ns": min(p50), "p50_max_ns": max(p50), "p99_min_ns": min(p99),
               "p99_max_ns": max(p99), "qps": 1e9 / statistics.median(mean),
               "rounds_p50_ns": p50, "rounds_p90_ns": p90, "rounds_p99_ns": p99}
        if kind == "search+rerank":
            row["meets_target"] = (row["p50_ns"] <= TARGETS["search_rerank_p50_ms"] * 1e6 and
                                   row["p99_ns"] <= TARGETS["search_rerank_p99_ms"] * 1e6)
        rows.append(row)
        print(f"  {name:<52} p50 {fmt_ms(row['p50_ns']):>9}  p90 {fmt_ms(row['p90_ns']):>9}  "
              f"p99 {fmt_ms(row['p99_ns']):>9}  ({row['qps']:,.0f} q/s)"
              + ("" if "meets_target" not in row else
                 ("  target met" if row["meets_target"] else "  TARGET MISSED")), flush=True)
    print("  cProfile of service.retrieve (tottime per call, top functions):")
    for p in profile["top"][:8]:
        print(f"    {p['tottime_us_per_call']:7.1f} µs  {p['function']}")
    data["reranker"] = reranker
    return {"rows": rows, "threads": thread_state, "ef": index.ef,
            "ef_used_for_30": max(index.ef, CANDIDATES), "queries": m,
            "exact_queries": len(exact_queries), "rounds": args.rounds,
            "gc": "enabled (gc.collect() before each contender's round)",
            "retrieve_profile": profile}


def profile_retrieve(svc, queries) -> dict:
    """cProfile of ``service.retrieve`` over ``queries``: where its time goes, per call."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for q in queries:
        svc.retrieve(q, TOP_K)
    prof.disable()
    stats = pstats.Stats(prof).stats
    n = len(queries)
    top = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in stats.items():
        where = f"{Path(file).name}:{line}({func})" if file != "~" else func
        top.append({"function": where, "calls_per_query": ncalls / n,
                    "tottime_us_per_call": tottime / n * 1e6,
                    "cumtime_us_per_call": cumtime / n * 1e6})
    top.sort(key=lambda r: -r["tottime_us_per_call"])
    total = sum(r["tottime_us_per_call"] for r in top)
    return {"queries": n, "total_us_per_call_profiled": total, "top": top[:25],
            "note": "cProfile adds overhead per Python call; read the shares, not the absolute "
                    "times"}


def recall(found: list[list[str]], truth: np.ndarray, k: int = TOP_K) -> float:
    hits = 0
    for f, t in zip(found, truth):
        hits += len(set(f[:len(f)]) & {vid(i) for i in t[:k]})
    return hits / (k * len(found))


def section_recall(args, data) -> dict:
    print("== 4. recall@10 against exact search (same queries) ==", flush=True)
    qs, truth = data["q"], data["truth_ids"]
    index, svc, reranker = data["index"], data["service"], data["reranker"]
    rerank.set_num_threads(QUERY_THREADS)
    ef0 = index.ef
    rows = []

    def add(what, ef, found, k_found):
        r = recall(found, truth)
        rows.append({"what": what, "ef": ef, "returned": k_found, "recall@10": r})
        print(f"  {what:<64} ef {ef:>4}: recall@10 {r:.4f}", flush=True)
        return r

    found10 = index.search(qs, TOP_K).ids
    add("HNSWIndex.search n=10", max(ef0, TOP_K), found10, TOP_K)
    res30 = index.search(qs, CANDIDATES)
    add("HNSWIndex.search n=30: exact top-10 found among the 30", max(ef0, CANDIDATES), res30.ids,
        CANDIDATES)
    raw = [reranker.rank(q, Candidates(vectors=v, ids=i), top_k=TOP_K).ids
           for q, v, i in zip(qs, res30.vectors, res30.ids)]
    add("search 30 + Reranker.rank (memory-attention) top 10", max(ef0, CANDIDATES), raw, TOP_K)
    served = [svc.retrieve(q, TOP_K).ids for q in qs]
    add("AttentionEnhancedMemory.retrieve top 10", max(ef0, CANDIDATES), served, TOP_K)
    same = float(np.mean([a == b for a, b in zip(raw, served)]))
    print(f"  the raw path and the service return the same top-10 ids for {same:.1%} of queries")
    sweep = []
    for ef in args.ef_sweep:
        index.ef = ef
        t = time_calls(lambda q: index.search(q, TOP_K), list(qs))
        found = index.search(qs, TOP_K).ids
        r = recall(found, truth)
        sweep.append({"ef": ef, "recall@10": r, "p50_ns": pct(t, 50), "p99_ns": pct(t, 99)})
        print(f"  ef sweep: ef {ef:>4}: recall@10 {r:.4f}, HNSWIndex.search n=10 p50 "
              f"{fmt_ms(pct(t, 50))}, p99 {fmt_ms(pct(t, 99))} (one round)", flush=True)
    index.ef = ef0
    return {"rows": rows, "raw_equals_service": same, "ef_sweep": sweep}


# ------------------------------------------------------------------------------------------------
# report

def markdown(report: dict) -> str:
    env, data = report["environment"], report["data"]
    secs = report["sections"]
    blas = "; ".join(f"{Path(b['filepath']).name.split('-')[0]} {b['version']} {b['architecture']}"
                     for b in report["status"]["blas"])
    out = [
        "# Retrieval benchmarks",
        "",
        f"`benchmarks/bench_retrieval.py {' '.join(report['argv'])}`".replace(" `", "`")
        + f" — {env['date_utc']}, {env['cpu']}, {env['usable_cpus']} CPUs, load average at start "
        f"{env['loadavg_start'][0]:.2f}, at end {report['loadavg_end'][0]:.2f}; total run time "
        f"{report['run_time_s']:.0f} s. python {env['python']}, numpy {env['numpy']}, hnswlib "
        f"{report['hnswlib']}, rerank {env['rerank']} (backend {report['status']['backend']}, "
        f"-march=native {report['status']['native']}). BLAS: {blas}. OMP_NUM_THREADS="
        f"{env['OMP_NUM_THREADS']}; OPENBLAS_CORETYPE "
        f"{'not set' if env['OPENBLAS_CORETYPE'] is None else '= ' + env['OPENBLAS_CORETYPE']}.",
        "",
        f"Data: {data['description']}",
    ]

    def load_line(name):
        ld = secs[name]["foreign_load"]
        busy = ld["other_cpus"] + ld["steal_cpus"] > 0.15
        return ["", f"Section time {ld['wall_s']:.0f} s; other processes used "
                f"{ld['other_cpus']:.2f} CPUs on average (steal {ld['steal_cpus']:.2f})"
                + (" — **busy machine: these timings are disturbed**." if busy else ".")]

    if "build" in secs:
        b = secs["build"]
        out += ["", f"## 1. Index build: `HNSWIndex.add` in batches of {b['batch']:,}", "",
                f"M = {b['M']}, ef_construction = {b['ef_construction']}, cosine space, initial "
                f"capacity {b['capacity_initial']} (grows by doubling); hnswlib threads "
                f"{b['hnswlib_threads']} (rerank.set_num_threads({BUILD_THREADS})). One pass "
                "(a build is too long to repeat 7 times in the time budget); the per-batch rates "
                "show the slow-down as the graph grows. Peak RSS growth: VmHWM after the build − "
                "RSS before it (VmHWM reset before; the corpus itself was allocated earlier).", "",
                "| vectors | time | vectors/s | batch rate first → last (median) | CPUs busy | "
                "peak RSS growth | RSS growth after |",
                "|---|---|---|---|---|---|---|",
                f"| {b['n']:,} | {b['seconds']:.1f} s | {b['vectors_per_s']:,.0f} | "
                f"{b['batch_vectors_per_s'][0]:,.0f} → {b['batch_vectors_per_s'][-1]:,.0f} "
                f"({b['median_batch_vectors_per_s']:,.0f}) | {b['cpus_used']:.2f} | "
                f"{fmt_mib(b['peak_rss_growth_kib'])} | {fmt_mib(b['rss_growth_after_kib'])} |"]
        out += load_line("build")
    if "ingest" in secs:
        g = secs["ingest"]
        r0 = g["rows"][0]
        out += ["", f"## 2. Ingest through the memory service: `store()` in batches of "
                f"{r0['batch']:,} documents", "",
                "`AttentionEnhancedMemory.open(db=<temp dir>/memory.db, ...)`: SQLite store "
                "(WAL, synchronous=FULL, one transaction per batch) + HNSWIndex with the same "
                f"graph settings, vectors given, hnswlib threads {r0['hnswlib_threads']}. Each "
                "document: id, a 384-d vector, a short text and 3 metadata fields, e.g. "
                f"`{json.dumps(g['example_document'])}`. Modes: "
                + "; ".join(f"**{r['mode']}** = {r['description']}" for r in g["rows"])
                + ". The split comes from wrapping `document_store.put` (the transaction), "
                "`candidate_source.add` (HNSW insert) and `save_index` (index file); \"other\" is "
                "the rest of `store()` (validation, conversion). One pass per mode; \"close() "
                "after\" (not in the time) is the final save a mode leaves to `close()`.", "",
                "| mode | documents | time | docs/s | target | first → last tenth docs/s | "
                "store.put | index.add | index save | other | CPUs busy | peak RSS growth | "
                "files | close() after |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in g["rows"]:
            out.append(
                f"| {r['mode']} | {r['n']:,} | {r['seconds']:.1f} s | **{r['docs_per_s']:,.0f}** | "
                f"≥ {r['target_docs_per_s']:,.0f} {'✓' if r['meets_target'] else '✗ missed'} | "
                f"{r['first_tenth_docs_per_s']:,.0f} → {r['last_tenth_docs_per_s']:,.0f} | "
                f"{r['store_put_seconds']:.1f} s | {r['index_add_seconds']:.1f} s | "
                f"{r['index_save_seconds']:.1f} s ({r['index_saves']}×) | "
                f"{r['other_seconds']:.1f} s | {r['cpus_used']:.2f} | "
                f"{fmt_mib(r['peak_rss_growth_kib'])} | {r['files_bytes'] / 2**20:.0f} MiB | "
                + (f"{r['close_seconds']:.1f} s |" if "close_seconds" in r else "– |"))
        out += ["", f"The query sections use the service from the {g['query_service_mode']} run."]
        out += load_line("ingest")
    if "latency" in secs:
        lt = secs["latency"]
        th = lt["threads"]
        out += ["", "## 3. Query latency, one thread", "",
                f"rerank.set_num_threads(1) (get_num_threads() = {th['rerank_threads']}); hnswlib "
                "1 thread (`HNSWIndex.search` runs a single query on the calling thread); BLAS "
                "limited to 1 thread with threadpoolctl. Each call is timed alone with "
                f"`perf_counter_ns`: {lt['rounds']} rounds of {lt['queries']:,} queries (exact "
                f"search: the first {lt['exact_queries']} queries per round) after one warm-up "
                "round, the rows interleaved round by round; a cell is the median over rounds of "
                "that round's percentile (p50 min–max over the rounds in the last column). GC "
                f"stays enabled (collected before each row's round). ef = {lt['ef']} (a search "
                f"for 30 uses max(ef, 30) = {lt['ef_used_for_30']}). Component rows (·) time one "
                "step on inputs prepared beforehand (each query's 30 HNSW candidates). Targets for "
                f"search + rerank: p50 ≤ {TARGETS['search_rerank_p50_ms']} ms, p99 ≤ "
                f"{TARGETS['search_rerank_p99_ms']} ms.", "",
                "| path | p50 | p90 | p99 | queries/s | target | p50 min–max |",
                "|---|---|---|---|---|---|---|"]
        for r in lt["rows"]:
            target = "" if "meets_target" not in r else ("✓" if r["meets_target"] else "✗ missed")
            name = ("· " if r["kind"] == "component" else "") + r["path"]
            if r["kind"] == "search+rerank":
                name = f"**{name}**"
            out.append(f"| {name} | {fmt_ms(r['p50_ns'])} | {fmt_ms(r['p90_ns'])} | "
                       f"{fmt_ms(r['p99_ns'])} | {r['qps']:,.0f} | {target} | "
                       f"{fmt_ms(r['p50_min_ns'])}–{fmt_ms(r['p50_max_ns'])} |")
        by = {r["path"]: r["p50_ns"] for r in lt["rows"]}
        knn = next((v for k, v in by.items() if k.startswith("hnswlib knn_query")), None)
        search = by["HNSWIndex.search n=30"]
        rr = by["Reranker.rank 30 → top 10 (candidates given)"]
        retrieve = by["service.retrieve k=10 (AttentionEnhancedMemory)"]
        lean = by.get("service.search k=30, documents=False (no store read)")
        get10 = by.get("document_store.documents(10 ids) (text + metadata)",
                       by.get("document_store.get(10 ids) (SQLite read)"))
        if lean is not None:       # retrieve = search without documents + rerank + read of k
            ssearch, get, get_what = lean, get10, "SQLite read of the final 10 documents"
            search_what = "the rest of service.search(documents=False)"
        else:                      # retrieve = search with documents + rerank
            ssearch = by["service.search k=30 (UnifiedMemoryService)"]
            get = by["document_store.get(30 ids) (SQLite read)"]
            get_what, search_what = "SQLite read of the 30 candidates", "the rest of service.search"
        parts = []
        if knn is not None:
            parts.append(f"hnswlib graph walk {fmt_ms(knn)} + HNSWIndex.search's own work "
                         f"{fmt_ms(search - knn)}")
        else:
            parts.append(f"HNSWIndex.search {fmt_ms(search)}")
        if lean is not None:
            parts += [f"{search_what} {fmt_ms(ssearch - search)}", f"rerank {fmt_ms(rr)}",
                      f"{get_what} {fmt_ms(get)}",
                      f"the rest of retrieve (candidate records, pipeline, available count) "
                      f"{fmt_ms(retrieve - ssearch - rr - get)}"]
        else:
            parts += [f"{get_what} {fmt_ms(get)}",
                      f"{search_what} {fmt_ms(ssearch - search - get)}", f"rerank {fmt_ms(rr)}",
                      f"the rest of retrieve (candidate records, pipeline, count) "
                      f"{fmt_ms(retrieve - ssearch - rr)}"]
        out += ["", f"Where service.retrieve's p50 ({fmt_ms(retrieve)}) goes, from differences of "
                "the p50s above (approximate: medians do not add exactly): " + "; ".join(parts)
                + ".", "",
                f"cProfile of service.retrieve over {lt['retrieve_profile']['queries']} queries "
                "(own time per call; cProfile inflates Python-heavy code, so read the shares):",
                "", "| function | calls per query | own time per query |", "|---|---|---|"]
        for p in lt["retrieve_profile"]["top"][:10]:
            out.append(f"| `{p['function']}` | {p['calls_per_query']:g} | "
                       f"{p['tottime_us_per_call']:.1f} µs |")
        out += load_line("latency")
    if "recall" in secs:
        rc = secs["recall"]
        out += ["", "## 4. Recall@10 against exact search", "",
                f"Same {data['queries']:,} queries; exact top-10 by brute force (cosine). "
                "recall@10 = |returned ∩ exact top-10| / 10, averaged over queries.", "",
                "| what | ef used | recall@10 |", "|---|---|---|"]
        for r in rc["rows"]:
            out.append(f"| {r['what']} | {r['ef']} | {r['recall@10']:.4f} |")
        out += ["", f"The raw path and the service returned identical top-10 id lists for "
                f"{rc['raw_equals_service']:.1%} of the queries.", "",
                "ef sweep (`HNSWIndex.search` n = 10; latency from one round, one thread):", "",
                "| ef | recall@10 | p50 | p99 |", "|---|---|---|---|"]
        for r in rc["ef_sweep"]:
            out.append(f"| {r['ef']} | {r['recall@10']:.4f} | {fmt_ms(r['p50_ns'])} | "
                       f"{fmt_ms(r['p99_ns'])} |")
        out += load_line("recall")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 10k vectors, 500 queries, 3 rounds (< 1 min); writes "
                        "retrieval-quick.{json,md} unless --out is given")
    p.add_argument("-n", "--n", type=int, help="corpus size (default 100000; 10000 with --quick)")
    p.add_argument("--queries", type=int, help="queries (default 2000; 500 with --quick)")
    p.add_argument("--rounds", type=int, help="timed latency rounds (protocol: ≥ 7; default 7; "
                                              "3 with --quick)")
    p.add_argument("--exact-queries", type=int,
                   help="queries per round for the exact-search row (default 200; 100 with "
                        "--quick)")
    p.add_argument("--ingest", choices=tuple(INGEST_MODES), action="append",
                   help="ingest mode (repeatable; default: default then bulk; the last one "
                        "serves the query sections)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmpdir", help="where the temporary memory database goes (default: the "
                                    "system temp dir)")
    p.add_argument("--out", help="output path without extension "
                                 "(default benchmarks/results/retrieval)")
    args = p.parse_args(argv)
    q = args.quick
    args.n = args.n or (10_000 if q else 100_000)
    args.queries = args.queries or (500 if q else 2000)
    args.rounds = args.rounds or (3 if q else 7)
    args.exact_queries = min(args.queries, args.exact_queries or (100 if q else 200))
    if min(args.n, args.queries, args.rounds, args.exact_queries) < 1 or args.queries > args.n:
        p.error("sizes must be ≥ 1 and --queries ≤ --n")
    args.M, args.efc, args.ef = 16, 200, 64
    args.centres = max(1, args.n // 100)
    args.spread, args.noise = 0.7, 0.5
    args.build_batch = 10_000 if not q else 2_000
    args.ingest_batch = 1000
    args.ingest_modes = args.ingest or ["default", "bulk"]
    args.ef_sweep = (16, 32, 64, 128, 256)
    args.profile_queries = min(args.queries, 500)
    args.out = Path(args.out) if args.out else HERE / "results" / ("retrieval-quick" if q
                                                                   else "retrieval")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    t_start = time.perf_counter()
    import hnswlib

    status = rerank.status()
    if status["backend"] != "compiled":
        raise SystemExit(f"rerank's backend is {status['backend']!r}, not 'compiled' "
                         f"({status['reason']}). Build the extension: "
                         ".venv/bin/python setup.py -q build_ext --inplace")
    rerank.set_num_threads(BUILD_THREADS)
    env = bk.environment(with_torch=False)
    bk.print_environment(env, rerank.status())
    hnsw_version = getattr(hnswlib, "__version__", None)
    if hnsw_version is None:
        from importlib.metadata import version

        hnsw_version = version("hnswlib")
    print(f"hnswlib {hnsw_version}; build threads {BUILD_THREADS}, query threads {QUERY_THREADS}",
          flush=True)
    if args.rounds < 7:
        print(f"note: {args.rounds} rounds is below the protocol's 7 (smoke run only)")
    if env["OPENBLAS_CORETYPE"] is not None or env["OPENBLAS_L2_SIZE"] is not None:
        print("WARNING: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set; numbers are not per "
              "protocol. Run under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`.")
    print(flush=True)

    t = time.perf_counter()
    x, labels, q, source = make_data(args.n, args.queries, centres=args.centres,
                                     spread=args.spread, noise=args.noise, seed=args.seed)
    truth_ids, truth_scores = exact_topk(x, q, CANDIDATES)
    desc = (f"{args.n:,} × {DIM} float32 unit vectors from a seeded Gaussian mixture (seed "
            f"{args.seed}): {args.centres:,} centres ~ N(0, I) normalised, each vector = a "
            f"uniformly chosen centre + {args.spread}·N(0, I)/√{DIM}, normalised (cosine to its "
            f"centre ≈ {1 / np.sqrt(1 + args.spread ** 2):.2f}). {args.queries:,} queries = "
            f"distinct corpus vectors + {args.noise}·N(0, I)/√{DIM}, normalised. Exact "
            f"neighbours: mean cosine of the 1st {truth_scores[:, 0].mean():.3f}, of the 10th "
            f"{truth_scores[:, 9].mean():.3f}, of the 30th {truth_scores[:, 29].mean():.3f}; the "
            f"source vector is the exact 1st for {np.mean(truth_ids[:, 0] == source):.1%} of "
            "queries. Synthetic clusters, not real embeddings: recall on real MiniLM embeddings "
            "can differ (../shared/BENCHMARKS.md).")
    print(f"data: {desc} ({time.perf_counter() - t:.1f} s)\n", flush=True)
    data = {"x": x, "labels": labels, "q": q, "truth_ids": truth_ids}
    sections = {}
    try:
        sections["build"] = load_section("build", lambda: section_build(args, data))
        sections["ingest"] = load_section("ingest", lambda: section_ingest(args, data))
        sections["latency"] = load_section("latency", lambda: section_latency(args, data))
        sections["recall"] = load_section("recall", lambda: section_recall(args, data))
    finally:
        svc = data.get("service")
        if svc is not None and hasattr(svc, "close"):
            svc.close()
        if data.get("tmp") is not None:
            shutil.rmtree(data["tmp"], ignore_errors=True)
    report = {
        "argv": argv, "quick": args.quick, "rounds": args.rounds,
        "protocol_ok": args.rounds >= 7 and env["OPENBLAS_CORETYPE"] is None,
        "targets": TARGETS, "hnswlib": hnsw_version,
        "data": {"description": desc, "n": args.n, "dim": DIM, "centres": args.centres,
                 "spread": args.spread, "query_noise": args.noise, "seed": args.seed,
                 "queries": args.queries,
                 "exact_top1_cos": float(truth_scores[:, 0].mean()),
                 "exact_top10_cos": float(truth_scores[:, 9].mean())},
        "environment": env, "status": rerank.status(), "sections": sections,
        "loadavg_end": os.getloadavg(), "run_time_s": time.perf_counter() - t_start,
        "platform": platform.platform(),
        "date_utc_end": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
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
