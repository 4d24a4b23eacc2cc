"""Fuzz `rerank serve` from its own live /openapi.json (schemathesis): no request it generates
gets a 5xx, and every response conforms to the schema (status code, content type, body)."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sentence_transformers")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance,  # noqa: E402
                                               response_schema_conformance,
                                               status_code_conformance)

from embeddings_adapter.batching import BatchingEmbedder  # noqa: E402
from rerank.server import create_app, serve_in_thread  # noqa: E402
from rerank.serving import Limits, SearchAPI, SearchMemory  # noqa: E402

#: Small limits keep every generated request cheap (a store embeds ≤ 5 texts of ≤ 500 chars).
LIMITS = Limits(max_k=10, max_documents=5, max_text_chars=500, max_candidates=8,
                max_body_bytes=256 * 1024, max_query_chars=200)
KEY = "fuzz-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A server (API key on) over a few documents; its URL."""
    from embeddings_adapter import EmbeddingService

    memory = SearchMemory.open(str(tmp_path_factory.mktemp("fuzz") / "memory.db"),
                               embedder=BatchingEmbedder(EmbeddingService()))
    api = SearchAPI(memory, limits=LIMITS)
    api.store([{"id": f"doc-{i}", "text": text, "metadata": {"n": i, "even": i % 2 == 0}}
               for i, text in enumerate(["grep searches text", "scp copies files",
                                         "bread needs yeast", "mars is red"])])
    try:
        with serve_in_thread(create_app(api, api_key=KEY)) as url:
            yield url
    finally:
        api.close()


@pytest.fixture(scope="module")
def api_schema(live):
    import httpx

    document = httpx.get(live + "/openapi.json", headers={"X-API-Key": KEY}).json()
    return schemathesis.openapi.from_dict(document)


OPERATIONS = [("POST", "/v1/documents"), ("GET", "/v1/documents/{id}"),
              ("DELETE", "/v1/documents/{id}"), ("POST", "/v1/search"), ("POST", "/v1/rerank"),
              ("GET", "/v1/mechanisms"), ("GET", "/healthz"), ("GET", "/metrics")]


def fuzz(operation, mode, examples: int, test) -> None:
    """Run ``test(case)`` on ``examples`` cases schemathesis generates for ``operation``
    (deterministic: derandomized, no example database)."""
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        test(case)

    run()


def test_the_schema_lists_every_route(api_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


WITH_INPUT = [op for op in OPERATIONS if op[0] != "GET" or "{" in op[1]]
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + \
    [(m, p, GenerationMode.NEGATIVE) for m, p in WITH_INPUT]     # nothing to break in the rest


@pytest.mark.parametrize("method,path,mode", CASES,
                         ids=[f"{m}-{p}-{mode.value}" for m, p, mode in CASES])
def test_no_5xx_and_responses_match_the_schema(api_schema, live, method, path, mode):
    headers = {"Authorization": f"Bearer {KEY}", "X-API-Key": KEY}  # both generated headers
    fuzz(api_schema[path][method], mode, 30,
         lambda case: case.call_and_validate(base_url=live, headers=headers, checks=CHECKS))


@pytest.mark.parametrize("method,path", OPERATIONS)
def test_without_the_key_only_healthz_answers(api_schema, live, method, path):
    def test(case):
        response = case.call_and_validate(base_url=live, checks=CHECKS)
        assert response.status_code == (200 if path == "/healthz" else 401)

    fuzz(api_schema[path][method], GenerationMode.POSITIVE, 2, test)
