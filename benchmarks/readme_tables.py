"""Regenerate the README's benchmark tables from ``benchmarks/results/*.json``.

Each generated table sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in
README.md; this script rewrites what is between the markers and leaves the rest alone.

    python benchmarks/readme_tables.py [--check]     # --check: exit 1 if the README is stale
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")


def load(name: str) -> dict:
    with open(os.path.join(RESULTS, name)) as fh:
        return json.load(fh)


def fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def rows_of(report: dict, section: str) -> dict:
    return {(r["contender"], r["shape"]): r for r in report["sections"][section]["rows"]}


def kernels_table() -> str:
    k = load("kernels.json")
    late = load("late_interaction.json")
    rr, sa = rows_of(k, "rerank"), rows_of(k, "self")
    li = rows_of(late, "late")
    env = k["environment"]
    t = lambda rows, c, s: rows[(c, s)]["median_s"]  # noqa: E731
    out = [f"Machine: {env['cpu']}, {env['usable_cpus']} CPUs; kernels "
           f"{k['environment']['date_utc'][:10]}, late interaction "
           f"{late['environment']['date_utc'][:10]}; rerank and torch at 2 threads unless the "
           "row says 1, numpy's BLAS at 1 thread.", "",
           "| workload | rerank | baselines in the same run |", "|---|---|---|"]
    for shape in ("1×30×384", "1×3000×384"):
        out.append(f"| `memory-attention` `score`, {shape.replace('×', ' × ')} | "
                   f"{fmt(t(rr, 'rerank mech.score (memory-attention)', shape))} | numpy attention "
                   f"{fmt(t(rr, 'numpy attention (1 BLAS thread)', shape))}, torch SDPA "
                   f"{fmt(t(rr, 'torch SDPA (2 threads)', shape))} |")
    batch, loop = (t(rr, "rerank memory_attention batch (2 threads)", "1000×30×384"),
                   t(rr, "numpy loop: attention per query", "1000×30×384"))
    out.append(f"| batch 1000 queries × 30 × 384 | {fmt(batch)} | numpy loop {fmt(loop)} "
               f"({loop / batch:.1f}× slower) |")
    for shape, label in (("n=4096", "exact attention 8 heads × 4096 × 64"),
                         ("n=4096 causal", "same, causal")):
        ours = sa[("rerank.attention compiled (2 threads)", shape)]
        torch = t(sa, "torch SDPA (2 threads)", shape)
        out.append(f"| {label} | {fmt(ours['median_s'])} ({ours['gflops']:.0f} GFLOP/s) | torch "
                   f"SDPA {fmt(torch)} ({torch / ours['median_s']:.2f}× its speed) |")
    shape = next(s for (_, s) in li if s.startswith("24×30"))
    out.append(f"| late interaction 24 tokens × 30 docs × ~100 tokens, int8 tokens, 1 thread | "
               f"{fmt(t(li, 'rerank late_interaction int8 (1 thread)', shape))} | torch padded "
               f"einsum {fmt(t(li, 'torch padded einsum (1 thread)', shape))}, "
               f"sentence-transformers `util.maxsim` "
               f"{fmt(t(li, 'sentence-transformers util.maxsim (1 thread)', shape))} "
               "(1 thread each) |")
    out.append(f"| same, float32 tokens, 1 thread | "
               f"{fmt(t(li, 'rerank late_interaction fp32 (1 thread)', shape))} | numpy sgemm "
               f"alone (no pooling) "
               f"{fmt(t(li, 'numpy sgemm q·Dᵀ alone, no pooling (1 BLAS thread)', shape))} |")
    out.append(f"| hierarchical 30 docs × 8 chunks | "
               f"{fmt(t(li, 'rerank hierarchical', '1×30×8×384'))} | numpy vectorised "
               f"{fmt(t(li, 'numpy vectorised (1 BLAS thread)', '1×30×8×384'))} |")
    return "\n".join(out)


def quality_table() -> str:
    q = load("quality.json")
    res = q["results"]["int8"]
    names = {"dense": "dense (HNSW, MiniLM)", "cross-attention": "**late interaction (default)**",
             "cross-attention (2-fold CV)": "late interaction, 2-fold cross-validated",
             "memory-attention": "memory-attention, 4 heads",
             "hierarchical-cross-attention": "hierarchical, 32-token chunks"}
    out = [f"{q['collection']['documents']:,} documents, {res['queries']:,} queries, rerank "
           f"depth {res['depth']}, {q['date'][:10]}:", "",
           "| method | nDCG@10 | recall@10 | MRR@10 | ms/query | p vs dense |",
           "|---|---|---|---|---|---|"]
    for m in res["methods"]:
        p = m["p_value"]
        p_text = "—" if p is None else ("< 10⁻⁴" if p < 1e-4 else f"{p:.2g}")
        out.append(f"| {names.get(m['method'], m['method'])} | {m['ndcg@10']:.3f} | "
                   f"{m['recall@10']:.3f} | {m['mrr@10']:.3f} | {m['ms_per_query']:.2f} | "
                   f"{p_text} |")
    base = next(m for m in q["results"]["float32"]["methods"] if m["default"])["ndcg@10"]
    out += ["", "Token storage (the default rerank on the same queries):", "",
            "| stored as | bytes per token | per 128-token document | nDCG@10 | Δ vs float32 |",
            "|---|---|---|---|---|"]
    dim = res["storage"]["dim"]
    per_row = {"int8": dim + 4, "float16": 2 * dim, "float32": 4 * dim}
    for fmt_name in ("float32", "float16", "int8"):
        nd = next(m for m in q["results"][fmt_name]["methods"] if m["default"])["ndcg@10"]
        label = "**int8 + scale (default)**" if fmt_name == "int8" else fmt_name
        out.append(f"| {label} | {per_row[fmt_name]:,} | {128 * per_row[fmt_name] / 1024:.1f} KiB "
                   f"| {nd:.4f} | {'—' if fmt_name == 'float32' else f'{nd - base:+.4f}'} |")
    return "\n".join(out)


def retrieval_table() -> str:
    r = load("retrieval.json")
    lat = {row["path"]: row for row in r["sections"]["latency"]["rows"]}
    ms = lambda ns: f"{ns / 1e6:.3f} ms" if ns < 1e7 else f"{ns / 1e6:.1f} ms"  # noqa: E731
    picks = [("HNSWIndex.search 30 + Reranker.rank top 10",
              "HNSW search 30 + memory-attention rerank → top 10"),
             ("Pipeline(HNSWIndex.search, Reranker.rank).run k=10", "the same through `Pipeline.run`"),
             ("service.retrieve k=10 (AttentionEnhancedMemory)",
              "`AttentionEnhancedMemory.retrieve` (also reads the final 10 texts from SQLite)"),
             ("exact numpy top-10 (brute force, 1 BLAS thread)", "exact numpy top-10 (for scale)")]
    out = ["| workload | p50 | p99 |", "|---|---|---|"]
    out += [f"| {label} | {ms(lat[path]['p50_ns'])} | {ms(lat[path]['p99_ns'])} |"
            for path, label in picks]
    recall = r["sections"]["recall"]["rows"][0]["recall@10"]
    ingest = next(row for row in r["sections"]["ingest"]["rows"] if row["mode"] == "default")
    out += ["", f"recall@10 against exact search {recall}; ingest through the memory service "
                f"(SQLite + HNSW, vectors given, batches of {ingest['batch']:,}) "
                f"{ingest['docs_per_s']:,.0f} documents/s."]
    return "\n".join(out)


GENERATORS = {"kernels": kernels_table, "quality": quality_table, "retrieval": retrieval_table}


def render(readme: str) -> str:
    for name, make in GENERATORS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(\n<!-- /generated:{name} -->)",
                             re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no <!-- generated:{name} --> block")
        readme = pattern.sub(lambda m: m.group(1) + make() + m.group(2), readme)
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    path = os.path.join(ROOT, "README.md")
    with open(path, encoding="utf-8") as fh:
        current = fh.read()
    fresh = render(current)
    if args.check:
        print("README tables are up to date" if fresh == current else "README tables are stale")
        return 0 if fresh == current else 1
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(fresh)
    print("README tables regenerated from benchmarks/results/*.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
