"""How long ``import rerank`` takes in a fresh interpreter (goal ≤ 150 ms), next to ``import numpy``
alone, and what it does not import (torch, sentence-transformers, scipy, the extension: loaded on
first use). Median of 15 fresh processes each, interleaved. Writes benchmarks/results/import.{md,json}.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PROBE = """
import sys, time, json
t = time.perf_counter()
import {module}
elapsed = time.perf_counter() - t
heavy = [m for m in ("torch", "sentence_transformers", "scipy", "rerank._kernels") if m in sys.modules]
print(json.dumps({{"ms": elapsed * 1e3, "heavy": heavy}}))
"""


def once(module: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    rounds = {"numpy": [], "rerank": []}
    heavy = []
    for module in ("numpy", "rerank"):          # warm the file cache
        once(module)
    for _ in range(15):
        for module in rounds:
            result = once(module)
            rounds[module].append(result["ms"])
            if module == "rerank":
                heavy = result["heavy"]
    med = {m: statistics.median(v) for m, v in rounds.items()}
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "python": sys.version.split()[0], "median_ms": med,
              "min_ms": {m: min(v) for m, v in rounds.items()},
              "rerank_beyond_numpy_ms": med["rerank"] - med["numpy"],
              "imported_by_rerank": heavy, "goal_ms": 150}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "import.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    md = ["# `import rerank`", "", f"`benchmarks/bench_import.py` — {report['date']}, Python "
          f"{report['python']}; median (min) of 15 fresh processes, interleaved.", "",
          "| import | median | min |", "|---|---|---|",
          f"| numpy alone | {med['numpy']:.0f} ms | {report['min_ms']['numpy']:.0f} ms |",
          f"| rerank (numpy included) | {med['rerank']:.0f} ms | {report['min_ms']['rerank']:.0f} ms |",
          "", f"rerank beyond numpy: {report['rerank_beyond_numpy_ms']:.0f} ms (goal for the whole "
          f"import: ≤ 150 ms). Heavy modules imported by `import rerank`: "
          f"{', '.join(heavy) or 'none'} (torch, sentence-transformers, scipy and the compiled "
          "extension load on first use)."]
    with open(os.path.join(HERE, "results", "import.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
