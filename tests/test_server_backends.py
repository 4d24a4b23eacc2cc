"""`rerank serve` works unchanged on PostgreSQL: the same requests over real HTTP connections give
the same answers from a SQLite memory and a PostgreSQL + pgvector memory."""
from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sentence_transformers")
pytest.importorskip("psycopg")

from embeddings_adapter.batching import BatchingEmbedder  # noqa: E402
from rerank.server import create_app, serve_in_thread  # noqa: E402
from rerank.serving import SearchAPI, SearchMemory  # noqa: E402
from test_server import CORPUS  # noqa: E402


@pytest.fixture(scope="module")
def embedder():
    from embeddings_adapter import EmbeddingService

    return EmbeddingService()


def answers(db: str, embedder) -> dict:
    """Store the corpus through the HTTP API of a server over ``db`` and collect its answers."""
    api = SearchAPI(SearchMemory.open(db, embedder=BatchingEmbedder(embedder)))
    try:
        with serve_in_thread(create_app(api, api_key=None)) as url, \
                httpx.Client(base_url=url, timeout=60) as client:
            stored = client.post("/v1/documents", json={"documents": CORPUS})
            assert stored.status_code == 200, stored.text
            out = {"stored": stored.json()}
            for name, body in {
                "late": {"query": "how do I bake bread at home", "k": 4},
                "filtered": {"query": "planets and moons", "k": 3,
                             "filter": {"topic": {"$in": ["space"]}}},
                "memory": {"query": "a football match", "k": 5,
                           "mechanism": "memory-attention"},
            }.items():
                response = client.post("/v1/search", json=body)
                assert response.status_code == 200, response.text
                document = response.json()
                out[name] = {key: document[key] for key in ("mechanism", "results")}
            out["get"] = client.get(f"/v1/documents/{CORPUS[0]['id']}").json()
            out["delete"] = client.delete(f"/v1/documents/{CORPUS[1]['id']}").json()
            out["gone"] = client.get(f"/v1/documents/{CORPUS[1]['id']}").status_code
            out["status"] = client.get("/metrics").status_code
            return out
    finally:
        api.close()


def test_serve_answers_the_same_on_sqlite_and_postgres(tmp_path, pg_url, embedder):
    sqlite = answers(str(tmp_path / "memory.db"), embedder)
    postgres = answers(pg_url, embedder)
    assert sqlite["gone"] == postgres["gone"] == 404
    for name in ("late", "filtered", "memory"):
        a, b = sqlite[name], postgres[name]
        assert a["mechanism"] == b["mechanism"]
        assert [r["corpus_id"] for r in a["results"]] == [r["corpus_id"] for r in b["results"]]
        assert [r["score"] for r in a["results"]] == pytest.approx(
            [r["score"] for r in b["results"]], abs=1e-5)
    assert all(r["metadata"]["topic"] == "space" for r in postgres["filtered"]["results"])
    for key in ("stored", "get", "delete", "status"):
        assert sqlite[key] == postgres[key]
