"""`rerank serve` end to end: /v1/search latency with one client and throughput with 8 concurrent
clients, batching of the query embeddings on and off, over ~2,000 short documents.

The documents are man pages installed on this machine (the start of each DESCRIPTION, 40 words);
the queries are the pages' one-line summaries, every one distinct, so the embedding cache never
hides the forward pass. Each configuration runs a real server subprocess (`python -m rerank serve
--port 0`, its default threads: torch and BLAS use the machine's cores) and clients over loopback
HTTP with keep-alive in this process. Latency is client-side (request sent → JSON parsed),
including the query embedding. The server's own per-stage timings locate the time: embedding,
candidate retrieval, rerank, documents; HTTP + JSON is the client latency minus the server total.

Targets (issue 7): p50 ≤ 15 ms with one client; ≥ 60 searches/s with 8 clients.
Writes ``benchmarks/results/server.{md,json}``.

    .venv/bin/python benchmarks/bench_server.py [--documents 2000] [--single 300] [--concurrent 800]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import httpx  # noqa: E402

from rerank import manpages  # noqa: E402
from rerank.benchmarking import machine_info  # noqa: E402
from rerank.server import default_torch_threads  # noqa: E402

TARGET_P50_MS = 15.0
TARGET_RATE = 60.0
CLIENTS = 8
WARMUP = 30
STAGES = ("embed", "retrieve", "rerank", "documents", "total")


def percentile(values, q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def collection(documents: int, queries: int) -> tuple[list[dict], list[str]]:
    """``documents`` man-page descriptions (40 words) and ``queries`` distinct summaries (the
    first for the pages in the corpus, then other pages')."""
    pages = sorted(manpages.installed_pages(max_words=40), key=lambda p: manpages._shuffle_key(p.id))
    if len(pages) < documents:
        raise SystemExit(f"only {len(pages)} usable man pages here; need {documents}")
    docs = [{"id": p.id, "text": p.description, "metadata": {"section": p.section}}
            for p in pages[:documents]]
    summaries = list(dict.fromkeys(p.summary for p in pages))
    if len(summaries) < queries:
        raise SystemExit(f"only {len(summaries)} distinct man-page summaries; need {queries}")
    return docs, summaries[:queries]


def index(db: str, docs: list[dict]) -> float:
    """Store the documents with the packaged model (in this process); seconds taken."""
    from rerank.serving import SearchAPI

    start = time.perf_counter()
    with SearchAPI.open(db, batching=False) as api:
        for i in range(0, len(docs), 100):
            api.store(docs[i:i + 100])
    return time.perf_counter() - start


class Server:
    """`rerank serve` on a free port; stopped with SIGINT (its normal shutdown)."""

    def __init__(self, db: str, batching: bool, torch_threads: int, log: str):
        args = [sys.executable, "-m", "rerank", "serve", "--db", db, "--port", "0",
                "--torch-threads", str(torch_threads)]
        if not batching:
            args.append("--no-batching")
        env = {k: v for k, v in os.environ.items() if k != "RERANK_API_KEY"}
        self.log = log
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                                     start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://\S+)", open(log).read())
            if found:
                self.url = found.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"rerank serve did not start:\n{open(log).read()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def search(client: httpx.Client, query: str) -> tuple[float, dict]:
    start = time.perf_counter()
    response = client.post("/v1/search", json={"query": query, "k": 10})
    body = response.json()
    ms = (time.perf_counter() - start) * 1e3
    if response.status_code != 200 or len(body["results"]) != 10:
        raise RuntimeError(f"search failed: {response.status_code} {response.text[:300]}")
    return ms, body["timings_ms"]


def single_client(url: str, queries: list[str]) -> dict:
    latencies, stages = [], {s: [] for s in STAGES}
    with httpx.Client(base_url=url, timeout=60) as client:
        for q in queries:
            ms, timings = search(client, q)
            latencies.append(ms)
            for s in STAGES:
                stages[s].append(timings.get(s, 0.0))
    server = {s: statistics.median(v) for s, v in stages.items()}
    p50 = statistics.median(latencies)
    return {"searches": len(latencies), "p50_ms": p50, "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99), "mean_ms": statistics.fmean(latencies),
            "server_median_ms": server, "http_json_ms": p50 - server["total"]}


def concurrent_clients(url: str, queries: list[str], clients: int = CLIENTS) -> dict:
    latencies, embeds, errors = [], [], []
    parts = [queries[i::clients] for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def work(mine):
        with httpx.Client(base_url=url, timeout=120) as client:
            client.get("/healthz")                           # connect before the clock
            barrier.wait()
            for q in mine:
                try:
                    ms, timings = search(client, q)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors.append(repr(exc))
                    continue
                latencies.append(ms)
                embeds.append(timings["embed"])

    threads = [threading.Thread(target=work, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    return {"clients": clients, "searches": len(latencies), "errors": len(errors),
            "seconds": seconds, "searches_per_s": len(latencies) / seconds,
            "p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 99),
            "embed_median_ms": statistics.median(embeds)}


def forward_passes(url: str) -> dict | None:
    text = httpx.get(url + "/metrics").text
    passes = re.search(r"^rerank_embedder_forward_passes_total (\d+)", text, re.M)
    requests = re.search(r"^rerank_embedder_requests_total (\d+)", text, re.M)
    if not passes:
        return None
    return {"forward_passes": int(passes.group(1)), "requests": int(requests.group(1))}


def torch_threads() -> dict:
    import torch

    return {"torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
            "RERANK_NUM_THREADS": os.environ.get("RERANK_NUM_THREADS")}


def run(args) -> dict:
    per_server = WARMUP + args.single + args.concurrent
    docs, queries = collection(args.documents, per_server)
    warm, single, many = (queries[:WARMUP], queries[WARMUP:WARMUP + args.single],
                          queries[WARMUP + args.single:])
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine_info(), "threads": torch_threads(),
              "documents": len(docs), "k": 10,
              "targets": {"p50_ms_one_client": TARGET_P50_MS,
                          "searches_per_s_8_clients": TARGET_RATE},
              "command": "python benchmarks/bench_server.py " + " ".join(sys.argv[1:]),
              "load_average_before": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "memory.db")
        report["index_seconds"] = index(db, docs)
        print(f"indexed {len(docs)} documents in {report['index_seconds']:.1f} s", flush=True)
        default = default_torch_threads()
        configs = [(True, default), (False, default)]
        if args.compare_threads and args.compare_threads != default:
            configs.append((True, args.compare_threads))
        for batching, threads in configs:
            server = Server(db, batching, threads,
                            os.path.join(tmp, f"serve-{batching}-{threads}.log"))
            try:
                with httpx.Client(base_url=server.url, timeout=60) as client:
                    for q in warm:
                        search(client, q)
                row = {"batching": batching, "torch_threads": threads,
                       "one_client": single_client(server.url, single)}
                before = forward_passes(server.url)
                row["concurrent"] = concurrent_clients(server.url, many)
                after = forward_passes(server.url)
                row["embedder"] = None if before is None else {   # the 8-client phase alone
                    key: after[key] - before[key] for key in before}
            finally:
                server.stop()
            report["runs"].append(row)
            one, conc = row["one_client"], row["concurrent"]
            print(f"batching {'on ' if batching else 'off'}, torch {threads}: one client p50 {one['p50_ms']:.1f} "
                  f"ms p99 {one['p99_ms']:.1f} ms (server: embed "
                  f"{one['server_median_ms']['embed']:.1f} ms, total "
                  f"{one['server_median_ms']['total']:.1f} ms); {CLIENTS} clients "
                  f"{conc['searches_per_s']:.1f} searches/s, p50 {conc['p50_ms']:.1f} ms, "
                  f"{conc['errors']} errors", flush=True)
    report["load_average_after"] = os.getloadavg()
    return report


def markdown(report: dict) -> str:
    m, t = report["machine"], report["threads"]
    lines = [
        "# `rerank serve`: /v1/search end to end",
        "",
        f"{report['date']} · {m['cpu']} · {m['usable_cpus']} usable CPUs · the server's torch "
        "threads per row (`rerank serve` default: half the CPUs), rerank kernels 1 thread per "
        f"request ({m['backend']}), OMP_NUM_THREADS={t['OMP_NUM_THREADS']} · "
        f"{report['documents']} man-page documents (40 words), k = 10, every query distinct "
        "(no embedding cache hit) · clients in one process on the same machine.",
        "",
        f"Command: `{report['command'].strip()}` · 1-minute load average "
        f"{report['load_average_before'][0]:.2f} before, {report['load_average_after'][0]:.2f} "
        "after (the machine is shared; this benchmark itself keeps both CPUs busy).",
        "",
        "| batching | torch threads | 1 client p50 | p90 | p99 | server embed | server total | HTTP + JSON "
        f"| {CLIENTS} clients searches/s | p50 | p99 | errors | queries per forward pass ({CLIENTS} "
        "clients) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["runs"]:
        one, conc, emb = row["one_client"], row["concurrent"], row["embedder"]
        per_pass = "1 (none)" if emb is None else \
            f"{emb['requests'] / max(emb['forward_passes'], 1):.2f}"
        lines.append(
            f"| {'on' if row['batching'] else 'off'} | {row['torch_threads']} | "
            f"{one['p50_ms']:.1f} ms | "
            f"{one['p90_ms']:.1f} | {one['p99_ms']:.1f} | "
            f"{one['server_median_ms']['embed']:.1f} | {one['server_median_ms']['total']:.1f} | "
            f"{one['http_json_ms']:.1f} | {conc['searches_per_s']:.1f} | {conc['p50_ms']:.1f} | "
            f"{conc['p99_ms']:.1f} | {conc['errors']} | {per_pass} |")
    on = report["runs"][0]                       # batching on, the default threads
    stages = on["one_client"]["server_median_ms"]
    lines += [
        "",
        "One client, batching on, server-side medians (ms): " + ", ".join(
            f"{s} {stages[s]:.2f}" for s in STAGES) + ".",
        "",
        f"Targets: p50 ≤ {TARGET_P50_MS:g} ms with one client — "
        f"{'met' if on['one_client']['p50_ms'] <= TARGET_P50_MS else 'missed'} "
        f"({on['one_client']['p50_ms']:.1f} ms); ≥ {TARGET_RATE:g} searches/s with {CLIENTS} "
        f"clients — {'met' if on['concurrent']['searches_per_s'] >= TARGET_RATE else 'missed'} "
        f"({on['concurrent']['searches_per_s']:.1f}/s).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--single", type=int, default=300, help="one-client searches")
    parser.add_argument("--concurrent", type=int, default=800, help="searches by 8 clients")
    parser.add_argument("--compare-threads", type=int, default=2,
                        help="also run batching on with this many torch threads (0: skip)")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "server"))
    args = parser.parse_args()
    report = run(args)
    with open(args.output + ".json", "w") as fh:
        json.dump(report, fh, indent=2)
    with open(args.output + ".md", "w") as fh:
        fh.write(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
