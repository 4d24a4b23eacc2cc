"""Rerank quality on the man-page collection, and what token storage costs in quality.

Embeds the collection once (packaged all-MiniLM-L6-v2), stores the same vectors, token vectors and
word-piece ids in three SQLite memories that keep the token vectors as float32, float16 and int8,
and runs ``rerank.evaluation.evaluate`` (with 2-fold cross-validation of the text settings) on
each. Writes ``benchmarks/results/quality.{md,json}``.

    python benchmarks/bench_quality.py [--documents 3000] [--queries 1000] [--threads 2]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import rerank  # noqa: E402
from embeddings_adapter import EmbeddingService  # noqa: E402
from memory_adapter import AttentionEnhancedMemory, SQLiteStore  # noqa: E402
from memory_adapter.sqlite_store import describe  # noqa: E402
from rerank import evaluation, manpages, quantization  # noqa: E402
from rerank.corpus import load_beir  # noqa: E402

FORMATS = ("float32", "float16", "int8")


def embed_corpus(embedder, dataset, batch=64):
    docs = []
    ids = list(dataset.corpus)
    for start in range(0, len(ids), batch):
        part = ids[start:start + batch]
        texts = [dataset.corpus[i]["text"] for i in part]
        vectors = embedder.embed(texts)
        tokens, offsets = embedder.embed_tokens(texts)
        pieces = embedder.token_ids(texts)
        for j, doc_id in enumerate(part):
            docs.append({"id": doc_id, "text": texts[j], "vector": vectors[j],
                         "tokens": tokens[offsets[j]:offsets[j + 1]], "token_ids": pieces[j],
                         "metadata": dataset.corpus[doc_id].get("metadata", {})})
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    rerank.set_num_threads(args.threads)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        info = manpages.write_collection(os.path.join(tmp, "man"), documents=args.documents,
                                         queries=args.queries)
        dataset = load_beir(os.path.join(tmp, "man"))
        embedder = EmbeddingService(cache_size=2 * args.documents + args.queries)
        start = time.perf_counter()
        docs = embed_corpus(embedder, dataset)
        embed_s = time.perf_counter() - start
        results = {}
        for fmt in reversed(FORMATS):       # int8 first: its run embeds the queries
            path = os.path.join(tmp, f"{fmt}.db")
            store = SQLiteStore(path, model_id=embedder.model_id, dim=embedder.dim,
                                token_dtype=fmt)
            with AttentionEnhancedMemory(store, embedder=embedder) as memory:
                for start in range(0, len(docs), 500):
                    memory.store(docs[start:start + 500])
                out = evaluation.evaluate(memory, dataset, cv=(fmt == "int8"))
            out["storage"] = describe(path)
            results[fmt] = out
            print(f"{fmt}: " + ", ".join(f"{m['method']} {m['ndcg@10']:.4f}"
                                         for m in out["methods"]), flush=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "threads": args.threads, "backend": rerank.status()["backend"],
              "collection": info, "embed_seconds": embed_s,
              "seconds": time.perf_counter() - began, "results": results}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quality.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    with open(os.path.join(args.out, "quality.md"), "w") as fh:
        fh.write(markdown(report))
    print(markdown(report))


def markdown(report) -> str:
    res = report["results"]
    main = res["int8"]
    lines = ["# Rerank quality: man-page collection", "",
             f"`benchmarks/bench_quality.py` — {report['date']}, {report['cpus']} CPUs, "
             f"rerank threads {report['threads']}, backend {report['backend']}; "
             f"{report['collection']['documents']} documents, {main['queries']} queries "
             f"(known-item: a page's NAME summary → its DESCRIPTION), rerank depth "
             f"{main['depth']}, dense = HNSW over all-MiniLM-L6-v2 vectors. "
             f"Query embedding {main['embed_ms_per_query']:.2f} ms/query (not in ms/query below).",
             "", "## Methods (token vectors stored as int8)", "",
             "| method | nDCG@10 | recall@10 | recall@100 | MRR@10 | ms/query | p vs dense |",
             "|---|---|---|---|---|---|---|"]
    for m in main["methods"]:
        p = "—" if m["p_value"] is None else f"{m['p_value']:.2g}"
        name = m["method"] + (" ★ default" if m["default"] else "")
        lines.append(f"| {name} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | "
                     f"{m['recall@100']:.4f} | {m['mrr@10']:.4f} | {m['ms_per_query']:.2f} | {p} |")
    cv = main.get("cross_validation")
    if cv:
        lines += ["", f"## 2-fold cross-validation over queries ({cv['family_size']} settings "
                      "declared in advance)", "",
                  "| fold | chosen on the other half | train nDCG@10 | held-out nDCG@10 |",
                  "|---|---|---|---|"]
        for i, f in enumerate(cv["folds"]):
            lines.append(f"| {i + 1} | {f['label']} | {f['train_ndcg@10']:.4f} | "
                         f"{f['test_ndcg@10']:.4f} |")
        lines += ["", "Best five settings on all queries (for reference, not for choosing):", ""]
        lines += [f"- {s['label']}: {s['ndcg@10']:.4f}" for s in cv["settings"][:5]]
    lines += ["", "## Token storage: cost and quality", "",
              "| format | bytes per token | per 128-token document | tokens/doc here | "
              "default nDCG@10 | Δ vs float32 |", "|---|---|---|---|---|---|"]
    dim = main["storage"]["dim"]
    base = next(m for m in res["float32"]["methods"] if m["default"])["ndcg@10"]
    for fmt in FORMATS:
        per = quantization.bytes_per_row(dim, fmt)
        nd = next(m for m in res[fmt]["methods"] if m["default"])["ndcg@10"]
        lines.append(f"| {fmt} | {per} | {128 * per / 1024:.1f} KiB | "
                     f"{res[fmt]['storage']['tokens_per_document']} | {nd:.4f} | "
                     f"{nd - base:+.4f} |")
    lines += ["", f"Total run time {report['seconds']:.0f} s (corpus embedding "
                  f"{report['embed_seconds']:.0f} s).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
