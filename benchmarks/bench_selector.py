"""How long ``MechanismSelector.select`` takes (design budget: ≤ 5 µs per selection).

Median of 9 rounds of 20,000 calls per case, after a warm-up; one Python thread. Writes
``benchmarks/results/selector.{md,json}``.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from rerank.selector import MechanismSelector  # noqa: E402

CASES = {
    "first rule matches (seq_len 40,000)": {"seq_len": 40000},
    "default rule (seq_len 512)": {"seq_len": 512},
    "moe (5th rule)": {"seq_len": 512, "is_moe": True},
}


def main() -> None:
    selector = MechanismSelector()
    custom = MechanismSelector(["(seq_len > 4096 and batch_size >= 8) or graph -> star-attention",
                                "not moe and seq_len <= 2048 -> flash-attention-v2",
                                "default -> linear-attention"])
    rows = []
    for label, (sel, kwargs) in {**{f"default rules, {k}": (selector, v) for k, v in CASES.items()},
                                 "3 custom rules with and/or/not, last matches":
                                     (custom, {"seq_len": 3000, "is_moe": True})}.items():
        call = (lambda s=sel, kw=kwargs: s.select(**kw))
        call()
        times = [t / 20000 for t in timeit.repeat(call, number=20000, repeat=9)]
        rows.append({"case": label, "median_us": statistics.median(times) * 1e6,
                     "min_us": min(times) * 1e6, "max_us": max(times) * 1e6})
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "budget_us": 5.0, "rows": rows}
    out = os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "selector.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    lines = ["# MechanismSelector.select", "", f"`benchmarks/bench_selector.py` — {report['date']}; "
             "median of 9 rounds × 20,000 calls. Budget 5 µs.", "",
             "| case | median | min–max |", "|---|---|---|"]
    lines += [f"| {r['case']} | {r['median_us']:.2f} µs | {r['min_us']:.2f}–{r['max_us']:.2f} µs |"
              for r in rows]
    with open(os.path.join(out, "selector.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
