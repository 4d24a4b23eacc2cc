"""`rerank serve`: a real uvicorn server on a free loopback port, driven over TCP with httpx.

Every route; auth on and off; limits (k, documents, text length, body size → 413); bad bodies →
422 naming the field; a generic 500; a bounded load test (2,000 searches from 8 clients while
another writes). The crash test is in test_server_crash.py, the fuzzing in test_server_fuzz.py.
"""
from __future__ import annotations

import json
import re
import sys
import threading

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sentence_transformers")

from click.testing import CliRunner  # noqa: E402

from embeddings_adapter.batching import BatchingEmbedder  # noqa: E402
from rerank.cli import main as cli  # noqa: E402
from rerank.server import create_app, serve_in_thread  # noqa: E402
from rerank.serving import Limits, SearchAPI, SearchMemory  # noqa: E402

LIMITS = Limits(max_k=20, max_documents=40, max_text_chars=2000, max_candidates=30,
                max_body_bytes=64 * 1024, max_query_chars=300)
KEY = "s3cret-key"

TOPICS = {
    "unix": ["list the files in a directory with ls", "copy files between machines with scp",
             "change file permissions with chmod", "find files by name with find",
             "search text inside files with grep", "show disk usage of a folder with du"],
    "cooking": ["bake bread with yeast flour and water", "a quick tomato pasta sauce",
                "how long to boil an egg", "roast vegetables in a hot oven",
                "make a vinaigrette with oil and vinegar", "whisk egg whites into peaks"],
    "space": ["the moon orbits the earth every month", "mars is a cold red planet",
              "a rocket needs thrust to reach orbit", "jupiter has dozens of moons",
              "the sun is a main sequence star", "astronauts live on the space station"],
}
CORPUS = [{"id": f"{topic}/{i}", "text": text, "metadata": {"topic": topic, "n": i}}
          for topic, texts in TOPICS.items() for i, text in enumerate(texts)]


@pytest.fixture(scope="module")
def embedder():
    from embeddings_adapter import EmbeddingService

    return EmbeddingService()


@pytest.fixture(autouse=True)
def _no_key_from_env(monkeypatch):
    monkeypatch.delenv("RERANK_API_KEY", raising=False)


def open_api(path, embedder, limits=LIMITS) -> SearchAPI:
    memory = SearchMemory.open(str(path), embedder=BatchingEmbedder(embedder))
    return SearchAPI(memory, limits=limits)


@pytest.fixture(scope="module")
def served(tmp_path_factory, embedder):
    """A server without an API key over the corpus: (url, api, httpx client)."""
    api = open_api(tmp_path_factory.mktemp("serve") / "memory.db", embedder)
    try:
        with serve_in_thread(create_app(api, api_key=None)) as url, \
                httpx.Client(base_url=url, timeout=60) as client:
            response = client.post("/v1/documents", json={"documents": CORPUS})
            assert response.status_code == 200, response.text
            yield url, api, client
    finally:
        api.close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, embedder):
    """A server that requires the API key ``KEY``: its URL."""
    api = open_api(tmp_path_factory.mktemp("guarded") / "memory.db", embedder)
    try:
        with serve_in_thread(create_app(api, api_key=KEY)) as url:
            yield url
    finally:
        api.close()


def fields(response) -> str:
    """The messages of a 422 answer, joined (each names its field)."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    return " | ".join(issue["msg"] for issue in detail)


# ------------------------------------------------------------------------------ routes
def test_healthz_and_openapi(served):
    _, _, client = served
    assert client.get("/healthz").json() == {"status": "ok"}
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/v1/documents", "/v1/documents/{id}", "/v1/search",
                                    "/v1/rerank", "/v1/mechanisms", "/healthz", "/metrics"}
    search = schema["components"]["schemas"]["SearchIn"]["properties"]
    assert search["k"]["maximum"] == LIMITS.max_k        # the limits are in the schema
    assert "securitySchemes" not in schema.get("components", {})


def test_store_get_delete_round_trip(served):
    _, _, client = served
    docs = [{"id": "tmp/a b", "text": "a temporary note about kayaks", "metadata": {"x": [1, 2]}},
            {"id": "tmp/c", "text": "another note"}]
    first = client.post("/v1/documents", json={"documents": docs})
    assert first.status_code == 200
    assert first.json() == {"count": 2, "stored": [docs[0], {**docs[1], "metadata": {}}]}
    again = client.post("/v1/documents", json={"documents": docs})     # idempotent upsert
    assert again.json() == first.json()
    assert client.get("/v1/documents/tmp/a b").json() == docs[0]
    changed = client.post("/v1/documents", json={"documents": [{"id": "tmp/c", "text": "new"}]})
    assert changed.json()["stored"][0]["text"] == "new"
    assert client.get("/v1/documents/tmp/c").json()["text"] == "new"
    for doc_id in ("tmp/a b", "tmp/c"):
        assert client.delete(f"/v1/documents/{doc_id}").json() == {"id": doc_id, "deleted": True}
        assert client.get(f"/v1/documents/{doc_id}").status_code == 404
        assert client.delete(f"/v1/documents/{doc_id}").status_code == 404
    assert f"rerank_documents {len(CORPUS)}\n" in client.get("/metrics").text


def test_search_ranks_and_reports(served):
    _, _, client = served
    body = client.post("/v1/search", json={"query": "how do I copy a file to another computer",
                                           "k": 3}).json()
    assert set(body) == {"query", "mechanism", "backend", "timings_ms", "results"}
    assert body["mechanism"] == "cross-attention" and body["backend"] in ("compiled", "numpy")
    assert list(body["timings_ms"]) == ["embed", "retrieve", "rerank", "documents", "total"]
    assert body["timings_ms"]["total"] >= body["timings_ms"]["embed"]
    assert [r["corpus_id"] for r in body["results"]][0] == "unix/1"
    assert len(body["results"]) == 3
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["results"][0]["metadata"] == {"topic": "unix", "n": 1}


def test_search_filter_mechanism_vector_and_small_collections(served, embedder):
    _, _, client = served
    only = client.post("/v1/search", json={"query": "eggs", "k": 20,
                                           "filter": {"topic": {"$in": ["space"]}}}).json()
    assert len(only["results"]) == 6                  # k above the matches: all of them
    assert {r["metadata"]["topic"] for r in only["results"]} == {"space"}
    assert client.post("/v1/search", json={"query": "eggs", "filter": {"topic": "none"}}
                       ).json()["results"] == []
    forced = client.post("/v1/search", json={"query": "boil an egg", "k": 2,
                                             "mechanism": "memory-attention"}).json()
    assert forced["mechanism"] == "memory-attention"
    assert forced["results"][0]["corpus_id"] == "cooking/2"
    vector = embedder.embed(["mars is a cold red planet"])[0].tolist()
    by_vector = client.post("/v1/search", json={"query": vector, "k": 1}).json()
    assert by_vector["results"][0]["corpus_id"] == "space/1"


def test_search_is_the_cli_document(served, embedder):
    _, api, client = served
    query = "search text inside files"
    over_http = client.post("/v1/search", json={"query": query, "k": 4}).json()
    result = CliRunner().invoke(cli, ["search", query, "-k", "4", "--json", "--db",
                                      api.memory.document_store.path],
                                obj={"embedder": embedder})
    assert result.exit_code == 0, result.output
    from_cli = json.loads(result.output)
    assert set(from_cli) == set(over_http)
    assert list(from_cli["timings_ms"]) == list(over_http["timings_ms"])
    assert [r["corpus_id"] for r in from_cli["results"]] == \
        [r["corpus_id"] for r in over_http["results"]]
    np.testing.assert_allclose([r["score"] for r in from_cli["results"]],
                               [r["score"] for r in over_http["results"]], rtol=1e-4, atol=1e-5)


def test_rerank_texts_and_vectors(served, embedder):
    _, _, client = served
    candidates = ["the stock market fell", "a kitten sleeping on a sofa", "rain tomorrow"]
    ranked = client.post("/v1/rerank", json={"query": "a small cat", "candidates": candidates}
                         ).json()
    assert [r["corpus_id"] for r in ranked][0] == 1
    assert sorted(r["corpus_id"] for r in ranked) == [0, 1, 2]
    assert all(r["text"] == candidates[r["corpus_id"]] for r in ranked)
    top = client.post("/v1/rerank", json={"query": "a small cat", "candidates": candidates,
                                          "top_k": 1}).json()
    assert top == ranked[:1]
    # vectors: memory-attention with one head orders exactly as the cosine does
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((6, embedder.dim)).astype(np.float32)
    query = rng.standard_normal(embedder.dim).astype(np.float32)
    ranked = client.post("/v1/rerank", json={"query": query.tolist(),
                                             "candidates": vectors.tolist()}).json()
    cosine = vectors @ query / np.linalg.norm(vectors, axis=1)
    assert [r["corpus_id"] for r in ranked] == np.argsort(-cosine).tolist()
    assert "text" not in ranked[0]
    assert abs(sum(r["score"] for r in ranked) - 1) < 1e-4       # attention weights
    mixed = client.post("/v1/rerank", json={"query": "a small cat",
                                            "candidates": embedder.embed(candidates).tolist()}
                        ).json()
    assert mixed[0]["corpus_id"] == 1


def test_mechanisms_is_the_cli_list(served):
    _, _, client = served
    listed = client.get("/v1/mechanisms").json()
    result = CliRunner().invoke(cli, ["list", "--json"])
    assert listed == json.loads(result.output)
    assert {"memory-attention", "cross-attention"} <= {m["name"] for m in listed}


def test_metrics_prometheus_text(served):
    _, _, client = served
    client.get("/v1/documents/no-such-id")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert "# TYPE rerank_http_requests_total counter" in text
    assert re.search(r'rerank_http_requests_total\{method="GET",route="/v1/documents/\{id\}",'
                     r'status="404"\} [1-9]', text)
    assert "# TYPE rerank_http_request_duration_seconds histogram" in text
    pattern = re.compile(r'rerank_http_request_duration_seconds_bucket\{method="POST",'
                         r'route="/v1/search",le="([^"]+)"\} (\d+)')
    buckets = [(le, int(n)) for le, n in pattern.findall(text)]
    counts = [n for _, n in buckets]
    assert buckets and buckets[-1][0] == "+Inf" and counts == sorted(counts)   # cumulative
    total = re.search(r'rerank_http_request_duration_seconds_count\{method="POST",'
                      r'route="/v1/search"\} (\d+)', text)
    assert int(total.group(1)) == counts[-1] > 0
    for line in text.splitlines():                  # every sample line parses
        assert line.startswith("#") or re.fullmatch(
            r'[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? [0-9.e+-]+', line), line


# ------------------------------------------------------------------------------ auth
@pytest.mark.parametrize("path", ["/v1/mechanisms", "/metrics", "/openapi.json",
                                  "/v1/documents/x"])
def test_auth_required_everywhere_but_healthz(guarded, path):
    bare = httpx.get(guarded + path)
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"].startswith("Bearer")
    assert "detail" in bare.json()
    assert httpx.get(guarded + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(guarded + path, headers={"X-API-Key": KEY + "x"}).status_code == 401
    assert httpx.get(guarded + path, headers={"Authorization": KEY}).status_code == 401
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"},
                    {"X-API-Key": KEY}):
        assert httpx.get(guarded + path, headers=headers).status_code in (200, 404)


def test_auth_healthz_open_and_schema_declares_the_key(guarded):
    assert httpx.get(guarded + "/healthz").json() == {"status": "ok"}
    post = httpx.post(guarded + "/v1/search", json={"query": "x"})
    assert post.status_code == 401                       # before any validation or work
    schema = httpx.get(guarded + "/openapi.json", headers={"X-API-Key": KEY}).json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert schema["paths"]["/healthz"]["get"]["security"] == []


def test_auth_off_needs_no_header(served):
    url, _, _ = served
    assert httpx.get(url + "/v1/mechanisms").status_code == 200


# ------------------------------------------------------------------------------ limits
def test_limits(served):
    _, _, client = served
    assert "k:" in fields(client.post("/v1/search", json={"query": "x", "k": 21}))
    assert "query:" in fields(client.post("/v1/search", json={"query": "x" * 301}))
    docs = [{"id": str(i), "text": "t"} for i in range(41)]
    assert "documents:" in fields(client.post("/v1/documents", json={"documents": docs}))
    long = [{"id": "long", "text": "y" * 2001}]
    assert "documents[0].text:" in fields(client.post("/v1/documents", json={"documents": long}))
    many = {"query": "x", "candidates": ["c"] * 31}
    assert "candidates:" in fields(client.post("/v1/rerank", json=many))


def test_body_size_limit_413(served):
    _, _, client = served
    big = json.dumps({"query": "x", "pad": "z" * (70 * 1024)}).encode()
    declared = client.post("/v1/search", content=big,
                           headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "limit" in declared.json()["detail"]

    def stream():                                  # chunked: no Content-Length to trust
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    streamed = httpx.post(client.base_url.join("/v1/search"), content=stream(),
                          headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert client.get("/healthz").status_code == 200


NAN_VECTOR = b'{"query": [NaN' + b", 0.5" * 383 + b"]}"
BAD_BODIES = [
    ("/v1/search", {}, "query:"),
    ("/v1/search", {"query": 5}, "query:"),
    ("/v1/search", {"query": "   "}, "query:"),
    ("/v1/search", {"query": []}, "query:"),
    ("/v1/search", {"query": [0.5] * 383}, "query:"),
    ("/v1/search", NAN_VECTOR, "query[0]:"),
    ("/v1/search", {"query": [0.0] * 384}, "query is all zeros"),
    ("/v1/search", {"query": "x", "k": "ten"}, "k:"),
    ("/v1/search", {"query": "x", "k": 0}, "k:"),
    ("/v1/search", {"query": "x", "mechanism": "nope"}, "mechanism:"),
    ("/v1/search", {"query": "x", "filter": [1]}, "filter:"),
    ("/v1/search", {"query": "x", "filter": {"$or": []}}, "filter.$or"),
    ("/v1/search", {"query": "x", "filter": {"topic": {"$gt": 1}}}, "filter.topic"),
    ("/v1/search", {"query": "x", "filter": {"topic": ["a", "b"]}}, "filter.topic"),
    ("/v1/search", {"query": "x", "extra": 1}, "extra:"),
    ("/v1/search", b'{"query": "x", "k": ', "body"),
    ("/v1/documents", {"documents": []}, "documents:"),
    ("/v1/documents", {"documents": [{"id": "a"}]}, "documents[0].text:"),
    ("/v1/documents", {"documents": [{"id": "", "text": "x"}]}, "documents[0].id:"),
    ("/v1/documents", {"documents": [{"id": "a", "text": 3}]}, "documents[0].text:"),
    ("/v1/documents", {"documents": [{"id": "a\u0000b", "text": "x"}]}, "documents[0].id:"),
    ("/v1/documents", {"documents": [{"id": "a", "text": "x", "metadata": [1]}]},
     "documents[0].metadata:"),
    ("/v1/documents", b'{"documents": [{"id": "a", "text": "x", "metadata": {"v": NaN}}]}',
     "documents[0].metadata.v"),
    ("/v1/documents", {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
     "documents[1].id"),
    ("/v1/rerank", {"query": "x", "candidates": []}, "candidates:"),
    ("/v1/rerank", {"query": "x", "candidates": ["a", [1.0]]}, "candidates[1]:"),
    ("/v1/rerank", {"query": "x", "candidates": ["a"], "top_k": 0}, "top_k:"),
    ("/v1/rerank", {"query": [1.0] * 383, "candidates": ["a"]}, "query:"),
    ("/v1/rerank", {"candidates": ["a"]}, "query:"),
]


@pytest.mark.parametrize("path,body,field", BAD_BODIES,
                         ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(BAD_BODIES)])
def test_bad_bodies_are_422_naming_the_field(served, path, body, field):
    _, _, client = served
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert field in fields(response)
    assert "Traceback" not in response.text


def test_ids_with_control_characters_are_refused(served):
    _, _, client = served
    for method in ("GET", "DELETE"):
        assert "id:" in fields(client.request(method, "/v1/documents/a%00b"))


def test_unexpected_error_is_a_generic_500(served, monkeypatch):
    _, api, client = served

    def broken():
        raise RuntimeError("secret internal detail at /srv/x.py line 3")

    monkeypatch.setattr(api, "mechanisms", broken)
    response = client.get("/v1/mechanisms")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error (the server logged it)"}
    assert "secret" not in response.text and "Traceback" not in response.text
    assert 'route="/v1/mechanisms",status="500"' in client.get("/metrics").text


# ------------------------------------------------------------------------------ load
def test_load_2000_searches_from_8_clients_while_writing(served):
    url, _, _ = served
    queries = [f"{verb} {thing}" for verb in ("how to", "why", "what is", "where")
               for thing in ("copy files", "bake bread", "orbit the moon", "grep text",
                             "boil eggs", "red planet", "chmod", "roast", "rockets", "du")]
    failures, written, done = [], [], threading.Event()

    def searcher(n: int):
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(250):
                body = {"query": queries[(n * 7 + i) % len(queries)], "k": 5}
                response = client.post("/v1/search", json=body)
                if response.status_code != 200 or len(response.json()["results"]) != 5:
                    failures.append((response.status_code, response.text[:200]))

    def writer():
        with httpx.Client(base_url=url, timeout=60) as client:
            i = 0
            while not done.is_set():
                doc = {"id": f"load/{i}", "text": f"load test document {i} about rockets"}
                response = client.post("/v1/documents", json={"documents": [doc]})
                if response.status_code != 200:
                    failures.append((response.status_code, response.text[:200]))
                written.append(doc["id"])
                i += 1

    write = threading.Thread(target=writer)
    write.start()
    threads = [threading.Thread(target=searcher, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    done.set()
    write.join(60)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert written
    with httpx.Client(base_url=url) as client:
        for doc_id in written:
            assert client.get(f"/v1/documents/{doc_id}").status_code == 200
            client.delete(f"/v1/documents/{doc_id}")


# ------------------------------------------------------------------------------ the pieces
def test_search_api_without_a_server(tmp_path, embedder):
    with open_api(tmp_path / "empty.db", embedder) as api:
        empty = api.search("anything", k=3)
        assert empty["results"] == [] and empty["mechanism"] == "none"
        api.store([{"id": "one", "text": "a single document"}])
        assert [r["corpus_id"] for r in api.search("document", k=5)["results"]] == ["one"]
        assert api.get("one") == {"id": "one", "text": "a single document", "metadata": {}}
        assert api.delete("one") and not api.delete("one") and api.get("one") is None
        status = api.status()
        assert status["store"]["documents"] == 0 and status["limits"]["max_k"] == LIMITS.max_k
        assert status["embedder"]["batching"]["forward_passes"] >= 1
        with pytest.raises(ValueError, match=r"k must be ≤ 20 \(the server's limit\); got 500"):
            api.search("x", k=500)
        with pytest.raises(TypeError, match="documents must be a list"):
            api.store({"id": "x", "text": "y"})


def test_a_token_read_that_misses_a_candidate_is_retried(tmp_path, embedder, monkeypatch):
    with open_api(tmp_path / "race.db", embedder) as api:
        api.store([{"id": str(i), "text": f"note {i} about boats"} for i in range(4)])
        real, calls = api.memory.candidate_tokens, []

        def racing(ids):                      # the first read finds a candidate gone
            calls.append(list(ids))
            if len(calls) == 1:
                raise KeyError(f"1 id(s) are not stored: {ids[:1]!r}")
            return real(ids)

        monkeypatch.setattr(api.memory, "candidate_tokens", racing)
        assert len(api.search("boats", k=2)["results"]) == 2
        assert len(calls) == 2


def test_a_filtered_search_resolves_the_filter_once(tmp_path, embedder, monkeypatch):
    with open_api(tmp_path / "filter.db", embedder) as api:
        api.store([{"id": str(i), "text": f"note {i} about boats", "metadata": {"odd": i % 2}}
                   for i in range(6)])
        store, calls = api.memory.document_store, []
        resolve = type(store).resolve_filter
        monkeypatch.setattr(type(store), "resolve_filter",
                            lambda self, f: calls.append(f) or resolve(self, f))
        body = api.search("boats", k=10, filter={"odd": 1})
        assert sorted(r["corpus_id"] for r in body["results"]) == ["1", "3", "5"]
        assert len(calls) == 1


@pytest.mark.parametrize("field", ["max_k", "max_documents", "max_body_bytes"])
def test_limits_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        Limits(**{field: 0})


def test_serve_without_the_extra_says_so_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)          # as if not installed
    result = CliRunner().invoke(cli, ["serve", "--db", "unused.db"])
    assert result.exit_code != 0
    assert "pip install 'rerank[serve]'" in result.output
    assert "Traceback" not in result.output
