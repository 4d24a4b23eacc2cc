"""Where a single query's embedding time goes (issue 7's one-client latency): the packaged
MiniLM's forward pass for one short query, eager at 1 and 2 torch threads, against a frozen
TorchScript trace of the same encoder and torch's int8 dynamic quantisation (time, and how far
their vectors move from the eager ones), plus one 12 × 384 · 384 × 384 product over weights
not in cache (the memory pace the 37 linear layers run at).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_query_embedding.py

Queries are distinct man-page-like sentences (~12 word pieces); each variant runs every query
once per round, variants interleaved, 5 rounds; the median over all calls is reported.
Writes ``benchmarks/results/query_embedding.{md,json}``.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

QUERIES = [f"list the contents of directory number {i} and show hidden files" for i in range(60)]
ROUNDS = 5


def main() -> None:
    import torch

    from embeddings_adapter.service import EmbeddingService

    service = EmbeddingService()
    encoder = service._model[0].auto_model.eval()
    tokenize = getattr(service._model, "preprocess", None) or service._model.tokenize
    features = [tokenize([q]) for q in QUERIES]
    pieces = statistics.median(int(f["attention_mask"].sum()) - 2 for f in features)

    def eager(f):
        return encoder(input_ids=f["input_ids"], attention_mask=f["attention_mask"])[0]

    with torch.inference_mode():
        first = features[0]
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(
            encoder, (first["input_ids"], first["attention_mask"]), strict=False).eval()))
        quantised = torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder),
                                                           {torch.nn.Linear}, dtype=torch.qint8)

    def frozen(f):
        out = traced(f["input_ids"], f["attention_mask"])
        return out["last_hidden_state"] if isinstance(out, dict) else out[0]

    def int8(f):
        return quantised(input_ids=f["input_ids"], attention_mask=f["attention_mask"])[0]

    def pooled(hidden, f):
        mask = f["attention_mask"][..., None].float()
        v = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(v, dim=-1)[0].numpy()

    variants = {"eager": eager, "frozen TorchScript": frozen, "int8 dynamic": int8}
    rows = []
    with torch.inference_mode():
        reference = [pooled(eager(f), f) for f in features]
        for threads in (1, 2):
            torch.set_num_threads(threads)
            times = {name: [] for name in variants}
            for fn in variants.values():
                fn(features[0])                               # warm up
            for _ in range(ROUNDS):
                for name, fn in variants.items():
                    for f in features:
                        start = time.perf_counter()
                        fn(f)
                        times[name].append((time.perf_counter() - start) * 1e3)
            for name, fn in variants.items():
                cosines = [float(pooled(fn(f), f) @ r) for f, r in zip(features, reference)]
                rows.append({"variant": name, "threads": threads,
                             "p50_ms": statistics.median(times[name]),
                             "min_cosine_to_eager": min(cosines)})

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    weights = [torch.from_numpy(rng.standard_normal((384, 384)).astype(np.float32))
               for _ in range(64)]                            # 37.7 MB: more than fits in cache
    x = torch.from_numpy(rng.standard_normal((12, 384)).astype(np.float32))
    for w in weights:
        x @ w
    start = time.perf_counter()
    for _ in range(5):
        for w in weights:
            x @ w
    product_us = (time.perf_counter() - start) / (5 * len(weights)) * 1e6
    gbps = 384 * 384 * 4 / (product_us * 1e-6) / 1e9

    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "cpus": os.cpu_count(), "queries": len(QUERIES),
              "median_word_pieces": pieces, "rounds": ROUNDS, "rows": rows,
              "uncached_product_us": product_us, "uncached_product_gb_per_s": gbps,
              "loadavg": os.getloadavg()}
    out = os.path.join(HERE, "results", "query_embedding")
    with open(out + ".json", "w") as fh:
        json.dump(report, fh, indent=2)
    md = ["# One query's embedding: MiniLM forward pass", "",
          f"`benchmarks/bench_query_embedding.py` — {report['date']}, torch {report['torch']}, "
          f"{report['cpus']} CPUs (load average {report['loadavg'][0]:.2f}); {len(QUERIES)} "
          f"distinct queries of ~{pieces:.0f} word pieces, {ROUNDS} interleaved rounds; encoder "
          "forward only (no tokenisation, pooling or Python around it).", "",
          "| variant | torch threads | p50 | min cosine of the pooled vector to eager |",
          "|---|---|---|---|"]
    md += [f"| {r['variant']} | {r['threads']} | {r['p50_ms']:.2f} ms | "
           f"{r['min_cosine_to_eager']:.4f} |" for r in rows]
    md += ["", f"One 12 × 384 · 384 × 384 float32 product over weights not in cache (64 distinct "
           f"matrices, 1 thread): {product_us:.0f} µs, i.e. {gbps:.1f} GB/s of weights read.", ""]
    with open(out + ".md", "w") as fh:
        fh.write("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
