"""`make run`: a text memory built from the manual pages installed on this machine.

Each page's DESCRIPTION is a document; its one-line NAME summary is a query whose answer is that
page. The demo writes the collection as a BEIR folder, stores it in an embedded SQLite memory with
the packaged MiniLM model (`rerank index`), measures dense retrieval against the attention
reranks (`rerank eval --cv`), and runs a few searches (`rerank search`). Everything runs through
the real `rerank` command; a second run reuses what is stored.

    python examples/manpages_demo.py [--db PATH] [--documents 3000] [--queries 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from memory_adapter.location import default_db_path
from rerank import manpages

SEARCHES = ["show which processes use the most memory", "copy files to another machine over ssh",
            "compress a folder into an archive"]


def rerank_cli(*args: str, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "rerank", *args]
    print("$ rerank " + " ".join(f'"{a}"' if " " in a else a for a in args), flush=True)
    done = subprocess.run(cmd, check=True, text=True,
                          stdout=subprocess.PIPE if capture else None)
    return done.stdout if capture else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    folder = os.path.dirname(default_db_path())
    parser.add_argument("--db", default=os.path.join(folder, "manpages.db"))
    parser.add_argument("--collection", default=os.path.join(folder, "manpages-beir"))
    parser.add_argument("--documents", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()

    if not os.path.exists(os.path.join(args.collection, "corpus.jsonl")):
        start = time.perf_counter()
        info = manpages.write_collection(args.collection, documents=args.documents,
                                         queries=args.queries)
        print(f"collection: {info['documents']} man pages of {info['available']} usable, "
              f"{info['queries']} queries → {args.collection} "
              f"({time.perf_counter() - start:.1f} s)")
    else:
        print(f"collection: reusing {args.collection}")

    rerank_cli("index", args.collection, "--db", args.db)
    rerank_cli("status", "--db", args.db)
    rerank_cli("eval", args.collection, "--db", args.db, "--cv")
    for query in SEARCHES:
        out = json.loads(rerank_cli("search", query, "-k", "3", "--db", args.db, "--json",
                                    capture=True))
        timings = ", ".join(f"{k} {v:.2f} ms" for k, v in out["timings_ms"].items())
        print(f"  {out['mechanism']} on {out['backend']} — {timings}")
        for rank, hit in enumerate(out["results"], 1):
            title = hit.get("metadata", {}).get("title", hit["corpus_id"])
            body = " ".join(hit.get("text", "").split("\n", 1)[-1].split())   # without the title
            print(f"  {rank}. {title[:32]:<32} {hit['score']:+.3f}  {body[:60]}…")
    print(f"\nthe memory stays in {args.db}; try: rerank search \"your question\" --db {args.db}")


if __name__ == "__main__":
    main()
