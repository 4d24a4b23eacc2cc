"""`rerank list`, `recommend`, `compute` and `benchmark` through click's runner: every option,
`--json` parses, bad arguments exit non-zero with a clear one-line message on stderr."""
import hashlib
import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from rerank import benchmarking, reference
from rerank.cli import main
from rerank.mechanisms import registry
from rerank.selector import MechanismSelector

from conftest import assert_close

CATEGORIES = ["multi-head", "self-attention", "cross-attention", "sparse", "linear", "flash", "moe"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok_json(*args):
    out = run(*args)
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def fails(*args, needle: str):
    """The command exits non-zero with ``needle`` on stderr and no traceback."""
    out = run(*args)
    assert out.exit_code != 0, out.output
    assert needle in out.stderr, out.stderr
    assert "Traceback" not in out.output and out.stdout == ""
    return out


# -------------------------------------------------------------------------------------- list
def test_list_json_has_the_39_mechanisms_with_the_design_keys():
    rows = ok_json("list", "--json")
    assert len(rows) == 39
    assert [r["name"] for r in rows] == registry.names()
    for row in rows:
        assert set(row) == {"name", "category", "complexity", "use_case", "compiled"}
        spec = registry.spec(row["name"])
        assert (row["category"], row["complexity"], row["use_case"], row["compiled"]) == \
            (spec.category, spec.complexity, spec.use_case, spec.compiled)
    assert sorted({r["category"] for r in rows}) == sorted(CATEGORIES)


def test_list_table_shows_39_rows():
    out = run("list")
    assert out.exit_code == 0, out.output
    rows = [line for line in out.stdout.splitlines()
            if line.startswith("│") and line.split("│")[1].strip() in registry.names()]
    assert len(rows) == 39
    assert "39 attention mechanisms" in out.stdout
    header = next(line for line in out.stdout.splitlines() if "complexity" in line)
    for column in ("name", "category", "complexity", "use case", "compiled"):
        assert column in header
    talking = next(r for r in rows if "talking-heads-attention" in r)
    assert talking.split("│")[5].strip() == "no"          # its forward is numpy


@pytest.mark.parametrize("category", CATEGORIES)
def test_list_category(category):
    rows = ok_json("list", "--category", category, "--json")
    assert rows and {r["category"] for r in rows} == {category}
    assert [r["name"] for r in rows] == [s.name for s in registry.by_category(category)]
    table = run("list", "--category", category).stdout
    assert all(r["name"] in table for r in rows)


def test_list_compiled_only_and_combined():
    rows = ok_json("list", "--compiled-only", "--json")
    assert [r["name"] for r in rows] == [s.name for s in registry.compiled_only()]
    assert all(r["compiled"] for r in rows) and "talking-heads-attention" not in \
        [r["name"] for r in rows]
    both = ok_json("list", "--category", "self-attention", "--compiled-only", "--json")
    assert {r["name"] for r in both} == {s.name for s in registry.by_category("self-attention")
                                         if s.compiled}
    assert "compiled only" in run("list", "--compiled-only").stdout


def test_list_unknown_category_lists_the_categories():
    out = fails("list", "--category", "sparsest", needle="unknown category 'sparsest'")
    for category in CATEGORIES:
        assert category in out.stderr


# --------------------------------------------------------------------------------- recommend
@pytest.mark.parametrize("args, kwargs", [
    (["--seq-len", "512"], {}),
    (["--seq-len", "10000"], {}),
    (["--seq-len", "40000", "--batch-size", "8"], {"batch_size": 8}),
    (["--seq-len", "512", "--hierarchical"], {"is_hierarchical": True}),
    (["--seq-len", "512", "--graph"], {"has_graph_structure": True}),
    (["--seq-len", "512", "--moe"], {"is_moe": True}),
])
def test_recommend_json_agrees_with_the_selector(args, kwargs):
    doc = ok_json("recommend", *args, "--json")
    seq_len = int(args[1])
    choice = MechanismSelector().explain(seq_len, kwargs.pop("batch_size", 1), **kwargs)
    assert doc["mechanism"] == choice.mechanism and doc["reason"] == choice.reason
    assert doc["rule"] == choice.rule + 1 and doc["condition"] == choice.condition


def test_recommend_text_and_flags():
    assert run("recommend", "--seq-len", "100").stdout.startswith("flash-attention-v2:")
    assert ok_json("recommend", "--seq-len", "9000", "--json")["mechanism"] == "linear-attention"
    assert ok_json("recommend", "--seq-len", "100", "--hierarchical", "--json")["mechanism"] == \
        "hierarchical-cross-attention"
    assert ok_json("recommend", "--seq-len", "100", "--graph", "--json")["mechanism"] == \
        "star-attention"
    assert ok_json("recommend", "--seq-len", "100", "--moe", "--json")["mechanism"] == \
        "moe-attention"


def test_recommend_bad_arguments():
    fails("recommend", "--seq-len", "0", needle="--seq-len")
    fails("recommend", needle="Missing option '--seq-len'")
    fails("recommend", "--seq-len", "10", "--batch-size", "0", needle="--batch-size")
    fails("recommend", "--seq-len", "ten", needle="'ten' is not a valid integer")


# ----------------------------------------------------------------------------------- compute
def test_compute_json_shape_checksum_and_exact_error():
    doc = ok_json("compute", "--mechanism", "flash-attention-v2", "--seq-len", 48, "--dim", 32,
                  "--heads", 2, "--seed", 7, "--json")
    assert doc["shape"] == doc["input_shape"] == [2, 48, 16]
    assert doc["mechanism"] == "flash-attention-v2" and doc["backend"] in ("compiled", "numpy")
    assert doc["ms"] >= 0 and doc["seed"] == 7 and doc["causal"] is False
    # the checksum is the sha256 of this output: recompute it independently
    q, k, v = benchmarking.random_inputs(48, 32, 2, seed=7)
    out = registry.get("flash-attention-v2").forward(q, k, v)
    assert doc["checksum"]["sha256"] == hashlib.sha256(out.tobytes()).hexdigest()
    assert doc["checksum"]["sum"] == pytest.approx(float(out.sum(dtype=np.float64)), rel=1e-9)
    assert doc["checksum"]["mean"] == pytest.approx(float(out.mean(dtype=np.float64)),
                                                    rel=1e-9)
    ref = doc["reference"]
    assert ref["kind"] == "exact" and ref["within_tolerance"] is True
    expected_err = float(np.abs(out.astype(np.float64) - reference.attention(q, k, v)).max())
    assert ref["max_abs_error"] == pytest.approx(expected_err, rel=1e-6, abs=1e-12)
    assert ref["max_abs_error"] < 1e-5


def test_compute_checksum_is_stable_for_a_seed_and_changes_with_it():
    args = ("compute", "-m", "linear-attention", "--seq-len", 40, "--dim", 16, "--json")
    first = ok_json(*args, "--seed", 3)["checksum"]
    assert ok_json(*args, "--seed", 3)["checksum"] == first
    assert ok_json(*args, "--seed", 4)["checksum"]["sha256"] != first["sha256"]


def test_compute_default_heads_and_seed():
    doc = ok_json("compute", "-m", "standard-mha", "--seq-len", 16, "--dim", 8, "--json")
    assert doc["heads"] == 1 and doc["seed"] == 0 and doc["shape"] == [1, 16, 8]


def test_compute_causal():
    doc = ok_json("compute", "-m", "flash-attention-v2", "--seq-len", 33, "--dim", 16,
                  "--heads", 2, "--causal", "--json")
    assert doc["causal"] is True and doc["reference"]["within_tolerance"]
    plain = ok_json("compute", "-m", "flash-attention-v2", "--seq-len", 33, "--dim", 16,
                    "--heads", 2, "--json")
    assert plain["checksum"]["sha256"] != doc["checksum"]["sha256"]


def test_compute_without_an_exact_reference():
    doc = ok_json("compute", "-m", "performer-attention", "--seq-len", 32, "--dim", 16, "--json")
    assert doc["reference"]["kind"] is None and "no exact reference" in doc["reference"]["note"]
    text = run("compute", "-m", "performer-attention", "--seq-len", 32, "--dim", 16)
    assert text.exit_code == 0 and "no exact reference" in text.stdout
    assert "checksum sha256" in text.stdout and "(1, 32, 16)" in text.stdout


def test_compute_sparse_mechanism_against_its_own_pattern():
    doc = ok_json("compute", "-m", "local-attention", "--seq-len", 300, "--dim", 16, "--heads",
                  2, "--json")
    ref = doc["reference"]
    assert ref["kind"] == "pattern" and ref["within_tolerance"] and ref["max_abs_error"] < 1e-5
    star = ok_json("compute", "-m", "star-attention", "--seq-len", 20, "--dim", 8, "--json")
    assert star["reference"]["kind"] is None      # its pattern spans relay keys too


def test_compute_text_output_for_an_exact_mechanism():
    out = run("compute", "-m", "flash-attention-v3", "--seq-len", 32, "--dim", 16, "--heads", 2)
    assert out.exit_code == 0, out.output
    assert "within the tolerance" in out.stdout and "flash-attention-v3 on" in out.stdout


def test_compute_bad_arguments():
    out = fails("compute", "-m", "flash-atention-v2", "--seq-len", 8, "--dim", 8,
                needle="unknown mechanism 'flash-atention-v2'")
    assert "did you mean flash-attention-v2" in out.stderr
    fails("compute", "-m", "flash-attention-v2", "--seq-len", 0, "--dim", 8, needle="--seq-len")
    out = fails("compute", "-m", "flash-attention-v2", "--seq-len", 8, "--dim", 10, "--heads",
                4, needle="dim (10) must be a multiple of heads (4)")
    assert "--dim" in out.stderr
    fails("compute", "-m", "flash-attention-v2", "--seq-len", 8, "--dim", 0, needle="--dim")
    fails("compute", "-m", "flash-attention-v2", "--seq-len", 8, "--dim", 8, "--heads", 0,
          needle="--heads")
    fails("compute", "-m", "flash-attention-v2", "--seq-len", 8, "--dim", 8, "--seed", -1,
          needle="--seed")
    fails("compute", "--seq-len", 8, "--dim", 8, needle="Missing option '--mechanism'")
    # a mechanism that cannot serve the request: its reason, one line, no traceback
    fails("compute", "-m", "bidirectional-self-attention", "--seq-len", 8, "--dim", 8,
          "--causal", needle="does not support causal masking")


def test_debug_shows_the_exception():
    out = CliRunner().invoke(main, ["--debug", "compute", "-m", "star-attention", "--seq-len",
                                    "8", "--dim", "8", "--causal"])
    assert out.exit_code != 0 and isinstance(out.exception, ValueError)


# ------------------------------------------------------------- the exact-reference table
def test_every_listed_mechanism_equals_exact_attention():
    for name, tol in benchmarking.EXACT_MECHANISMS.items():
        for causal in (False, True):
            mech = benchmarking.build(name)
            if causal and not mech.supports_causal:
                continue
            q, k, v = benchmarking.random_inputs(40, 24, 3, seed=1)
            assert_close(mech.forward(q, k, v, causal=causal),
                         reference.attention(q, k, v, causal=causal), tol=tol,
                         what=f"{name} causal={causal}")


def test_the_table_misses_no_dense_mechanism_equal_to_exact_attention():
    """Outside the sparse category (whose patterns cover short inputs whole), a mechanism not in
    the table computes another function."""
    q, k, v = benchmarking.random_inputs(64, 32, 2, seed=2)
    expected = reference.attention(q, k, v)
    for spec in registry.list():
        if spec.name in benchmarking.EXACT_MECHANISMS or spec.category == "sparse":
            continue
        err = np.abs(benchmarking.build(spec.name).forward(q, k, v) - expected).max()
        assert err > 1e-3, f"{spec.name} equals exact attention: add it to EXACT_MECHANISMS"


# --------------------------------------------------------------------------------- benchmark
TINY = ("--seq-len", "32,48", "--dim", "16", "--heads", "2", "--rounds", "2")


def test_benchmark_tiny_writes_json_markdown_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    output = tmp_path / "out" / "report.json"
    doc = ok_json("benchmark", "-m", "flash-attention-v2", "-m", "linear-attention", *TINY,
                  "--output", output, "--json")
    assert json.loads(output.read_text()) == doc
    assert (tmp_path / "out" / "report.md").exists()
    assert doc["files"]["plots"] == [str(tmp_path / "out" / f"report-{c}.png")
                                     for c in ("flash", "linear")]
    for png in doc["files"]["plots"]:
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert [(r["mechanism"], r["seq_len"]) for r in doc["results"]] == [
        ("flash-attention-v2", 32), ("flash-attention-v2", 48),
        ("linear-attention", 32), ("linear-attention", 48)]
    for row in doc["results"]:
        assert row["median_ms"] > 0 and len(row["rounds_ms"]) == 2 and "error" not in row
        assert row["numpy_ms"] > 0 and row["speedup_vs_numpy"] > 0
    flash, linear = doc["results"][0], doc["results"][2]
    assert flash["numpy"] == "rerank.reference.attention" and flash["max_abs_error_vs_numpy"] < 1e-5
    assert linear["numpy"] == "the mechanism on the numpy backend"
    machine = doc["machine"]
    assert machine["rerank_threads"] >= 1 and machine["usable_cpus"] >= 1
    assert {"rerank", "numpy", "scipy"} <= set(machine["versions"])
    assert doc["settings"]["seq_lens"] == [32, 48] and doc["head_dim"] == 8
    assert "bypassed" in doc["caches"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| flash | flash-attention-v2 | 32 |" in md and "| linear | linear-attention | 48 |" in md


def test_benchmark_compares_with_torch_sdpa_when_installed(tmp_path):
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    doc = ok_json("benchmark", "-m", "flash-attention-v2", *TINY, "--output",
                  tmp_path / "t.json", "--json")
    assert all(b["torch_sdpa"]["median_ms"] > 0 for b in doc["baselines"])
    assert all(r["torch_sdpa_ms"] > 0 and r["speedup_vs_torch"] > 0 for r in doc["results"])
    assert doc["machine"]["versions"]["torch"] == torch.__version__
    assert torch.get_num_threads() == threads               # restored
    no_torch = ok_json("benchmark", "-m", "flash-attention-v2", *TINY, "--no-torch",
                       "--output", tmp_path / "n.json", "--json")
    assert all(b["torch_sdpa"] is None for b in no_torch["baselines"])
    assert all("torch_sdpa_ms" not in r for r in no_torch["results"])


def test_benchmark_without_matplotlib_still_writes_json_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib → ImportError
    out = run("benchmark", "-m", "local-attention", *TINY, "--no-torch", "--output",
              tmp_path / "r.json")
    assert out.exit_code == 0, out.output
    assert (tmp_path / "r.json").exists() and (tmp_path / "r.md").exists()
    assert not list(tmp_path.glob("*.png"))
    assert "matplotlib is not installed" in out.stderr and "rerank[bench]" in out.stderr
    assert "plots_skipped" in json.loads((tmp_path / "r.json").read_text())["files"]
    assert "local-attention" in out.stdout and "wrote" in out.stdout


def test_benchmark_rounds_get_new_inputs(tmp_path, monkeypatch):
    """No timing is a repeat of earlier inputs: every forward call sees a new q."""
    seen = []
    real_build = benchmarking.build

    class Recording:
        def __init__(self, mech):
            self.mech, self.spec = mech, mech.spec

        @property
        def backend(self):
            return self.mech.backend

        def forward(self, q, k, v, **kw):
            seen.append(hashlib.sha256(q.tobytes()).hexdigest())
            return self.mech.forward(q, k, v, **kw)

    monkeypatch.setattr(benchmarking, "build", lambda name, n=0: Recording(real_build(name, n)))
    ok_json("benchmark", "-m", "flash-attention-v2", "--seq-len", 16, "--seq-len", 24, "--dim",
            8, "--rounds", 4, "--no-torch", "--output", tmp_path / "r.json", "--json")
    assert len(seen) == 2 * (1 + 4)            # warm-up + rounds, per length
    assert len(set(seen)) == len(seen)


def test_benchmark_bypasses_the_service_and_its_cache(tmp_path, monkeypatch):
    """No timing goes through AttentionService or the attention cache (where they exist)."""
    cache = pytest.importorskip("rerank.cache")

    def forbidden(*args, **kwargs):
        raise AssertionError("the benchmark touched the service or its cache")

    for name in ("get", "put"):
        monkeypatch.setattr(cache.AttentionCache, name, forbidden)
    try:
        from rerank import service
    except ImportError:
        service = None
    if service is not None:
        monkeypatch.setattr(service.AttentionService, "__init__", forbidden)
    out = run("benchmark", "-m", "flash-attention-v2", "-m", "local-attention", "--seq-len", 16,
              "--dim", 8, "--rounds", 2, "--no-torch", "--output", tmp_path / "r.json")
    assert out.exit_code == 0, out.output


def test_benchmark_skips_numpy_above_its_limit(tmp_path):
    doc = ok_json("benchmark", "-m", "linear-attention", "--seq-len", "16,40", "--dim", 8,
                  "--rounds", 1, "--numpy-max-seq-len", 20, "--no-torch", "--output",
                  tmp_path / "r.json", "--json")
    small, large = doc["results"]
    assert small["numpy_ms"] > 0
    assert large["numpy"] is None and "numpy_max_seq_len 20" in large["numpy_skipped"]
    assert doc["baselines"][1]["numpy_reference"] is None


def test_benchmark_all_runs_every_mechanism(tmp_path):
    doc = ok_json("benchmark", "--all", "--seq-len", 24, "--dim", 16, "--heads", 2, "--rounds",
                  1, "--no-torch", "--output", tmp_path / "all.json", "--json")
    assert [r["mechanism"] for r in doc["results"]] == registry.names()
    assert [r for r in doc["results"] if "error" in r] == []
    compiled = [r for r in doc["results"] if r["compiled"]]
    assert {r["backend"] for r in compiled} <= {"compiled", "numpy"}


def test_benchmark_table_output(tmp_path):
    out = run("benchmark", "-m", "flash-attention-v2", "--seq-len", 16, "--dim", 8, "--rounds",
              1, "--no-torch", "--output", tmp_path / "r.json")
    assert out.exit_code == 0, out.output
    assert "flash-attention-v2" in out.stdout and str(tmp_path / "r.md") in out.stdout.replace(
        "\n", "")


def test_benchmark_defaults(tmp_path, monkeypatch):
    """Without options the engine gets the documented defaults (256, 1024, 4096; 4 × 64)."""
    captured = {}

    def fake_run(settings, progress=None):
        captured["settings"] = settings
        raise RuntimeError("stop here")

    monkeypatch.setattr(benchmarking, "run_benchmark", fake_run)
    out = run("benchmark", "--all", "--output", tmp_path / "r.json")
    assert out.exit_code != 0 and "stop here" in out.stderr
    s = captured["settings"]
    assert s.seq_lens == [256, 1024, 4096] and (s.dim, s.heads, s.rounds) == (256, 4, 3)
    assert len(s.mechanisms) == 39 and s.numpy_max_seq_len == 1024 and s.torch


def test_benchmark_bad_arguments(tmp_path):
    out = tmp_path / "r.json"
    fails("benchmark", "--output", out, needle="give --mechanism M (repeatable) or --all")
    fails("benchmark", "--all", "-m", "linear-attention", "--output", out, needle="not both")
    o = fails("benchmark", "-m", "linear-atention", "--output", out,
              needle="unknown mechanism 'linear-atention'")
    assert "did you mean linear-attention" in o.stderr
    fails("benchmark", "-m", "linear-attention", "--seq-len", "0", "--output", out,
          needle="0 is not a positive sequence length")
    fails("benchmark", "-m", "linear-attention", "--seq-len", "64,abc", "--output", out,
          needle="'abc' is not an integer")
    fails("benchmark", "-m", "linear-attention", "--dim", 30, "--heads", 4, "--output", out,
          needle="dim (30) must be a multiple of heads (4)")
    fails("benchmark", "-m", "linear-attention", "--rounds", 0, "--output", out,
          needle="--rounds")
    fails("benchmark", "-m", "linear-attention", "--output", tmp_path / "r.txt",
          needle="must be a .json path")
    assert not out.exists()


def test_markdown_reports_an_error_row():
    report = {"settings": {"mechanisms": ["x"], "seq_lens": [8], "dim": 8, "heads": 1,
                           "rounds": 1, "seed": 0, "numpy_max_seq_len": 8},
              "head_dim": 8, "caches": "bypassed",
              "machine": {"cpu": "cpu", "usable_cpus": 1, "machine": "m", "platform": "p",
                          "backend": "numpy", "rerank_threads": 1, "torch_threads": None,
                          "blas": [], "versions": {"rerank": "0"}},
              "baselines": [{"seq_len": 8, "numpy_reference": None, "torch_sdpa": None}],
              "results": [{"mechanism": "x", "category": "c", "backend": "numpy", "seq_len": 8,
                           "error": "ValueError: needs n | m"}]}
    md = benchmarking.markdown(report)
    assert "| c | x | 8 | numpy | error: ValueError: needs n / m |" in md


def test_settings_validate_names_the_field():
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        benchmarking.BenchmarkSettings(mechanisms=["linear-attention"], rounds=0).validate()
    with pytest.raises(ValueError, match="unknown mechanism"):
        benchmarking.BenchmarkSettings(mechanisms=["nope"]).validate()
    with pytest.raises(ValueError, match="at least one mechanism"):
        benchmarking.BenchmarkSettings(mechanisms=[]).validate()
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        benchmarking.random_inputs(0, 8)
