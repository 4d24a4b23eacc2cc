"""``rerank serve``: the semantic search HTTP API (FastAPI on uvicorn) over one memory.

Routes: ``POST /v1/documents``, ``GET``/``DELETE /v1/documents/{id}``, ``POST /v1/search``,
``POST /v1/rerank``, ``GET /v1/mechanisms``, ``GET /healthz``, ``GET /metrics`` (Prometheus text
format 0.0.4) and ``/openapi.json``. The work is :class:`rerank.serving.SearchAPI`'s; this module
adds the wire: request models whose constraints are the limits (so the OpenAPI schema says them),
the API key, the body-size limit (413), 422 for bad input naming the field, a generic 500.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations, and
the request models are built per app (their limits are the app's). Endpoints are plain
functions: FastAPI runs them in its thread pool, so searches run concurrently (the kernels and
the embedding forward pass release the GIL); the memory serialises writes and a store request is
answered only after its transaction committed.
"""
import contextlib
import hmac
import ipaddress
import logging
import math
import os
import re
import threading
import time
from typing import Annotated, Any, Literal, Union

from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field,
                      StringConstraints, Tag, WithJsonSchema)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .serving import ID_PATTERN, MAX_ID_CHARS, MECHANISMS, Limits, SearchAPI

__all__ = ["ENV_API_KEY", "create_app", "default_torch_threads", "make_server", "serve",
           "serve_in_thread"]

log = logging.getLogger("rerank.server")

#: The environment variable holding the API key (unset or empty: no key required).
ENV_API_KEY = "RERANK_API_KEY"
#: What a client learns of an unexpected error.
INTERNAL_ERROR = "internal server error (the server logged it)"
#: Paths that never need the API key.
OPEN_PATHS = frozenset({"/healthz"})
_CONVERTER = re.compile(r":\w+\}")
#: Upper bounds (seconds) of the latency histogram buckets.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# ------------------------------------------------------------------------------ wire models
class Problem(BaseModel):
    """An error: what went wrong, in one line (no traceback)."""
    detail: str


class Issue(BaseModel):
    """One invalid field: where (``loc``), what (``msg``, starting with the field's name)."""
    loc: list[Union[str, int]]
    msg: str
    type: str


class ValidationProblem(BaseModel):
    """422: the request was understood but a field is invalid."""
    detail: list[Issue]


_SCALAR_SCHEMA = {"anyOf": [{"type": "string", "maxLength": 1024}, {"type": "number"},
                            {"type": "boolean"}, {"type": "null"}]}


def _scalar(value):
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        if len(value) > 1024:
            raise ValueError("must have ≤ 1024 characters")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value
    raise ValueError('must be a string, number, boolean or null (several values: {"$in": '
                     '[...]})')


#: A metadata value a filter compares with.
Scalar = Annotated[Any, AfterValidator(_scalar), WithJsonSchema(_SCALAR_SCHEMA)]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=256,
                                             pattern=r'^[^$"][^"]*$')]


class InFilter(BaseModel):
    """``{"$in": [values]}``: the field equals any of the values."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    in_: list[Scalar] = Field(alias="$in", max_length=1000)


def _tagged(expected: str, by, **tags):
    """A union of ``tags`` (name → type) chosen by ``by(value)`` (a tag name, or ``None``: the
    value is none of them, "must be ``expected``"), so an error names one branch's problem,
    not every branch's. Tags start with "as " (:func:`_issue_path` leaves them out)."""
    return Annotated[Union[tuple(Annotated[t, Tag(name)] for name, t in tags.items())],
                     Discriminator(by, custom_error_type="union_type",
                                   custom_error_message=f"must be {expected}")]


FilterValue = _tagged("a value or {\"$in\": [values]}",
                      lambda v: "as $in" if isinstance(v, dict) else "as value",
                      **{"as value": Scalar, "as $in": InFilter})
FILTER_SCHEMA = {"type": "object", "maxProperties": 32,
                 "propertyNames": {"minLength": 1, "maxLength": 256, "pattern": '^[^$"][^"]*$'},
                 "additionalProperties": {"anyOf": [
                     *_SCALAR_SCHEMA["anyOf"],
                     {"type": "object", "additionalProperties": False, "required": ["$in"],
                      "properties": {"$in": {"type": "array", "maxItems": 1000,
                                             "items": _SCALAR_SCHEMA}}}]}}
#: A metadata filter: ``{"field": value}`` or ``{"field": {"$in": [...]}}`` (fields AND).
Filter = Annotated[dict[FieldName, FilterValue], Field(max_length=32),
                   WithJsonSchema(FILTER_SCHEMA)]


#: A document id: no control characters, not blank.
DocumentId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS,
                                              pattern=ID_PATTERN)]

IdInPath = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]


class Document(BaseModel):
    """A stored document."""
    id: str
    text: str | None
    metadata: dict[str, Any]


class StoreResult(BaseModel):
    """What a store request wrote (committed), in request order."""
    stored: list[Document]
    count: int


class Deleted(BaseModel):
    """The document ``id`` was deleted."""
    id: str
    deleted: bool


class SearchHit(BaseModel):
    """One result: the document id, its rerank score, text and metadata."""
    corpus_id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None


class SearchResult(BaseModel):
    """``rerank search --json``'s document: the mechanism and backend that ran, per-stage
    timings (ms; ``embed`` is the query's embedding), ``fallback`` when the rerank failed and the
    results are in vector order."""
    query: Union[str, list[float]]
    mechanism: str
    backend: str
    timings_ms: dict[str, float]
    results: list[SearchHit]
    fallback: str | None = None


class Ranked(BaseModel):
    """One ranked candidate (sentence-transformers' ``CrossEncoder.rank`` shape): its index in
    the request's candidates, its score, its text for text candidates."""
    corpus_id: int
    score: float
    text: str | None = None


class MechanismInfo(BaseModel):
    """A registered attention mechanism (``rerank list --json``)."""
    name: str
    category: str
    complexity: str
    use_case: str
    compiled: bool


class Health(BaseModel):
    """The server is up."""
    status: Literal["ok"]


def _request_models(limits: Limits, dim: int):
    """The request bodies, their constraints taken from ``limits`` and the model's ``dim``."""
    QueryText = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_query_chars,
                                                 pattern=r"\S")]
    Vector = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]],
                       Field(min_length=dim, max_length=dim)]
    Text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_text_chars)]

    class DocumentIn(BaseModel):
        """A document to store (upsert by id)."""
        model_config = ConfigDict(extra="forbid")
        id: DocumentId
        text: Text
        metadata: dict[str, Any] | None = None

    class DocumentsIn(BaseModel):
        """DESIGN.md's body: ``{"documents": [{"id", "text", "metadata"?}]}``, one transaction;
        an id appears once per request."""
        model_config = ConfigDict(extra="forbid")
        documents: list[DocumentIn] = Field(min_length=1, max_length=limits.max_documents)

    def text_or_vector(value):
        return "as text" if isinstance(value, str) else \
            "as vector" if isinstance(value, list) else None

    def texts_or_vectors(value):
        if not isinstance(value, list):
            return None
        return "as vectors" if value and isinstance(value[0], list) else "as texts"

    Query = _tagged("a string or a list of numbers", text_or_vector,
                    **{"as text": QueryText, "as vector": Vector})
    bound = Field(min_length=1, max_length=limits.max_candidates)
    Candidates = _tagged("a list of strings or a list of vectors", texts_or_vectors,
                         **{"as texts": Annotated[list[Text], bound],
                            "as vectors": Annotated[list[Vector], bound]})

    class SearchIn(BaseModel):
        """A search: ``query`` text (or a vector of the model's dimension), ``k`` results,
        ``mechanism`` to force a rerank scorer (null: the memory's choice), ``filter`` over
        metadata: ``{"field": value}`` or ``{"field": {"$in": [...]}}`` (fields AND)."""
        model_config = ConfigDict(extra="forbid")
        query: Query
        k: int = Field(10, ge=1, le=limits.max_k)
        mechanism: Literal[MECHANISMS] | None = None  # type: ignore[valid-type]
        filter: Filter | None = None

    class RerankIn(BaseModel):
        """A stateless rerank: ``query`` (text or a vector) and ``candidates`` (texts, or
        vectors of the model's dimension); ``top_k`` (null: all)."""
        model_config = ConfigDict(extra="forbid")
        query: Query
        candidates: Candidates
        top_k: int | None = Field(None, ge=1, le=limits.max_candidates)

    return DocumentsIn, SearchIn, RerankIn


# ------------------------------------------------------------------------------ metrics
def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Request counters by (method, route template, status) and latency histograms by
    (method, route template), rendered in the Prometheus text format 0.0.4."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._hist: dict[tuple[str, str], list] = {}   # → [bucket counts…, sum, count]

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and add its latency to its route's histogram."""
        with self._lock:
            key = (method, route, str(status))
            self._counts[key] = self._counts.get(key, 0) + 1
            hist = self._hist.setdefault((method, route), [0] * len(BUCKETS) + [0.0, 0])
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    hist[i] += 1
            hist[-2] += seconds
            hist[-1] += 1

    def render(self, extra: list[str] = ()) -> str:
        """The exposition text (counters, histograms with cumulative buckets, ``extra`` lines)."""
        with self._lock:
            counts = sorted(self._counts.items())
            hists = sorted((k, list(v)) for k, v in self._hist.items())
        out = ["# HELP rerank_http_requests_total HTTP requests by method, route and status.",
               "# TYPE rerank_http_requests_total counter"]
        for (method, route, status), n in counts:
            out.append(f'rerank_http_requests_total{{method="{_label(method)}",'
                       f'route="{_label(route)}",status="{status}"}} {n}')
        out += ["# HELP rerank_http_request_duration_seconds HTTP request latency by method "
                "and route.",
                "# TYPE rerank_http_request_duration_seconds histogram"]
        for (method, route), hist in hists:
            labels = f'method="{_label(method)}",route="{_label(route)}"'
            for bound, n in zip(BUCKETS, hist):
                out.append(f'rerank_http_request_duration_seconds_bucket{{{labels},'
                           f'le="{bound:g}"}} {n}')
            out.append(f'rerank_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} '
                       f'{hist[-1]}')
            out.append(f"rerank_http_request_duration_seconds_sum{{{labels}}} {hist[-2]:.6f}")
            out.append(f"rerank_http_request_duration_seconds_count{{{labels}}} {hist[-1]}")
        out += list(extra)
        return "\n".join(out) + "\n"


class PrometheusResponse(PlainTextResponse):
    """``text/plain; version=0.0.4``: the Prometheus text exposition format."""
    media_type = "text/plain; version=0.0.4; charset=utf-8"


# ------------------------------------------------------------------------------ ASGI layers
async def _send_json(send, status: int, body: bytes, headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def _problem(detail: str) -> bytes:
    return Problem(detail=detail).model_dump_json().encode()


class _Guard:
    """The outer ASGI layer: timing for the metrics, the API key, the body-size limit.

    Order: the request is timed (and counted, with the route template as its label, or
    ``<unmatched>``); the API key is checked (401 with ``WWW-Authenticate: Bearer``); the body
    is read up to ``max_body_bytes`` (413 past it, by ``Content-Length`` or by what arrives)
    and handed to the app."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, metrics: Metrics):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [499]      # nginx's "client closed request": no response was sent
        started = [False]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
            await send(message)

        try:
            await self._handle(scope, receive, send_status)
        except Exception as exc:  # noqa: BLE001 - the policy: a generic 500, logged here
            # Starlette re-raises what its 500 handler answered (and logged); anything else
            # is logged now. Either way the client gets a complete generic answer.
            if not started[0]:
                log.error("%s %s failed", scope["method"], scope["path"], exc_info=exc)
                status[0] = 500
                await _send_json(send, 500, _problem(INTERNAL_ERROR))
        finally:
            self.metrics.observe(scope["method"], self._template(scope), status[0],
                                 time.perf_counter() - start)

    def _template(self, scope) -> str:
        """The route template the request matched (looked up when the guard answered before
        the router ran), or ``<unmatched>``."""
        route = scope.get("route")
        if route is None:
            for candidate in getattr(self.app, "routes", ()):
                if candidate.matches(scope)[0] is Match.FULL:
                    route = candidate
                    break
        path = getattr(route, "path", None)
        return _CONVERTER.sub("}", path) if path else "<unmatched>"   # {id:path} → {id}

    def _authorised(self, scope) -> bool:
        if self.api_key is None or scope["path"] in OPEN_PATHS:
            return True
        given = []
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                given.append(value)
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                given.append(value[7:].strip())
        return any([hmac.compare_digest(key, self.api_key) for key in given])  # each compared

    async def _handle(self, scope, receive, send):
        if not self._authorised(scope):
            await _send_json(send, 401, _problem("missing or wrong API key: send "
                                                 "'Authorization: Bearer <key>' or "
                                                 "'X-API-Key: <key>'"),
                             [(b"www-authenticate", b'Bearer realm="rerank"')])
            return
        limit = self.max_body_bytes
        too_large = _problem(f"the request body is larger than {limit} bytes (the server's "
                             "limit)")
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, _problem("Content-Length is not an integer"))
                    return
                if declared > limit:
                    await _send_json(send, 413, too_large, [(b"connection", b"close")])
                    return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await _send_json(send, 413, too_large, [(b"connection", b"close")])
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# ------------------------------------------------------------------------------ the app
def _issue_path(loc) -> str:
    """``body.documents[0].text``-style name of an error's location (union tags left out)."""
    text = ""
    for i, p in enumerate(loc):
        if i == 0 and p in ("body", "path", "query", "header"):
            continue
        if isinstance(p, int):
            text += f"[{p}]" if text else f"body (character {p})"   # JSON syntax: an offset
        elif p == "[key]":
            text += " (a field name)"
        elif not p.startswith("as "):
            text += f".{p}" if text else p
    return text or "body"


def create_app(api: SearchAPI, *, api_key: str | None = None):
    """The ASGI application serving ``api``: a FastAPI app (routes, schema) inside the guard
    layer (metrics, API key, body limit). ``api_key``: required on every route but
    ``/healthz`` when given (``None``: ``$RERANK_API_KEY`` when set and not empty). The
    FastAPI app is the returned object's ``fastapi`` attribute."""
    if not isinstance(api, SearchAPI):
        raise TypeError(f"api must be a rerank.serving.SearchAPI; got {type(api).__name__}")
    if api_key is None:
        api_key = os.environ.get(ENV_API_KEY) or None
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ValueError("api_key must be a non-empty string (or None: no key)")
    limits, metrics = api.limits, Metrics()
    DocumentsIn, SearchIn, RerankIn = _request_models(limits, api.embedder.dim)
    errors = {401: {"model": Problem, "description": "Missing or wrong API key"},
              413: {"model": Problem, "description": "Request body too large"},
              422: {"model": ValidationProblem, "description": "Invalid field"},
              500: {"model": Problem, "description": "Internal error (logged by the server)"}}
    not_found = {404: {"model": Problem, "description": "No document with this id"}}
    app = FastAPI(title="rerank", version=_version(),
                  description="Semantic search with attention rerank over one memory.",
                  docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        issues = [{"loc": list(e.get("loc", ())),
                   "msg": f"{_issue_path(e.get('loc', ()))}: {e.get('msg', 'invalid')}",
                   "type": str(e.get("type", "value_error"))} for e in exc.errors()]
        return JSONResponse({"detail": issues}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:   # a body FastAPI could not decode (e.g. not UTF-8)
            return JSONResponse({"detail": [{"loc": ["body"], "msg": f"body: {exc.detail} (send "
                                             "UTF-8 JSON)", "type": "json_invalid"}]},
                                status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(ValueError)
    @app.exception_handler(TypeError)
    async def rejected(request: Request, exc: Exception):
        where = "body" if request.method in ("POST", "PUT", "PATCH") else "path"
        return JSONResponse({"detail": [{"loc": [where], "msg": str(exc),
                                         "type": "value_error"}]}, status_code=422)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)

    @app.post("/v1/documents", response_model=StoreResult, responses=errors,
              summary="Store documents (upsert by id)")
    def store_documents(body: DocumentsIn) -> dict:
        """Embed and store the documents in one transaction; answered once it committed."""
        return api.store([d.model_dump() for d in body.documents])

    @app.get("/v1/documents/{id:path}", response_model=Document,
             responses={**errors, **not_found}, summary="Get a document")
    def get_document(id: IdInPath):
        """The stored document ``id`` (ids may contain ``/``)."""
        found = api.get(id)
        if found is None:
            return JSONResponse({"detail": f"no document with id {id!r}"}, status_code=404)
        return found

    @app.delete("/v1/documents/{id:path}", response_model=Deleted,
                responses={**errors, **not_found}, summary="Delete a document")
    def delete_document(id: IdInPath):
        """Delete the document ``id``."""
        if not api.delete(id):
            return JSONResponse({"detail": f"no document with id {id!r}"}, status_code=404)
        return {"id": id, "deleted": True}

    @app.post("/v1/search", response_model=SearchResult, response_model_exclude_none=True,
              responses=errors, summary="Search with attention rerank")
    def search(body: SearchIn) -> dict:
        """Vector candidates (k·3), attention rerank, the top k (all of them when fewer match)."""
        filter = None if body.filter is None else {
            f: ({"$in": v.in_} if isinstance(v, InFilter) else v) for f, v in body.filter.items()}
        return api.search(body.query, body.k, body.mechanism, filter)

    @app.post("/v1/rerank", response_model=list[Ranked], response_model_exclude_none=True,
              responses=errors, summary="Rank candidates for a query (stateless)")
    def rerank(body: RerankIn) -> list:
        """Candidates ranked best first (``corpus_id``: the candidate's index)."""
        return api.rerank(body.query, body.candidates, body.top_k)

    @app.get("/v1/mechanisms", response_model=list[MechanismInfo], responses=errors,
             summary="The attention mechanisms")
    def mechanisms() -> list:
        """Every registered mechanism: name, category, complexity, use case, compiled."""
        return api.mechanisms()

    @app.get("/healthz", response_model=Health, responses={500: errors[500]},
             summary="Liveness (no API key needed)")
    def healthz() -> dict:
        """``{"status": "ok"}`` while the server runs."""
        return {"status": "ok"}

    as_json = {code: {"description": spec["description"], "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{spec['model'].__name__}"}}}}
        for code, spec in errors.items()}

    @app.get("/metrics", response_class=PrometheusResponse, responses=as_json,
             summary="Prometheus metrics")
    def prometheus() -> PrometheusResponse:
        """Request counts by method, route and status; latency histograms by route."""
        return PrometheusResponse(metrics.render(_gauges(api)))

    if api_key:
        _declare_security(app)
    guard = _Guard(app, api_key=api_key, max_body_bytes=limits.max_body_bytes, metrics=metrics)
    guard.fastapi = app
    guard.metrics = metrics
    return guard


def _gauges(api: SearchAPI) -> list[str]:
    out = ["# HELP rerank_documents Documents in the store.", "# TYPE rerank_documents gauge",
           f"rerank_documents {api.memory.count()}"]
    stats = getattr(api.embedder, "stats", None)
    if callable(stats):
        s = stats()
        out += ["# HELP rerank_embedder_forward_passes_total Forward passes of the embedding "
                "model (each serves a batch of concurrent requests).",
                "# TYPE rerank_embedder_forward_passes_total counter",
                f"rerank_embedder_forward_passes_total {s['forward_passes']}",
                "# HELP rerank_embedder_requests_total Embedding requests served by forward "
                "passes.", "# TYPE rerank_embedder_requests_total counter",
                f"rerank_embedder_requests_total {s['requests']}"]
    return out


def _declare_security(app: FastAPI) -> None:
    """Say in the OpenAPI schema that every route but /healthz needs the key (either header)."""
    build = app.openapi

    def openapi():
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            for path in OPEN_PATHS:
                for operation in schema["paths"].get(path, {}).values():
                    operation["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("rerank")
    except Exception:  # noqa: BLE001 - not installed: a source checkout
        return "0"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_torch_threads() -> int:
    """Threads for the embedding forward pass: half the usable CPUs (at least 1), leaving the
    rest to HTTP, retrieval and rerank. On 2 vCPUs a second torch thread did not shorten a
    forward pass and cost throughput (benchmarks/results/server.md)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)


def serve(db: str | None = None, host: str = "127.0.0.1", port: int = 8000, *,
          api_key: str | None = None, limits: Limits | None = None, batching: bool = True,
          torch_threads: int | None = None, access_log: bool = False, ready=None) -> None:
    """Open the memory at ``db`` (created when missing) with the packaged embedding model and
    serve it on ``host:port`` until interrupted (SIGINT/SIGTERM: finish requests, save the
    index). ``api_key``: ``None`` → ``$RERANK_API_KEY``. ``torch_threads``: intra-op threads of
    the forward pass (``None``: :func:`default_torch_threads`; process-wide). The rerank kernels
    run one thread per request unless ``RERANK_NUM_THREADS`` is set. ``ready(url)`` is called
    once the socket listens."""
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0…65535; got {port!r}")
    threads = default_torch_threads() if torch_threads is None else torch_threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"torch_threads must be a positive integer; got {torch_threads!r}")
    if api_key is None:
        api_key = os.environ.get(ENV_API_KEY) or None
    try:
        import torch
    except ImportError:
        raise ImportError("rerank serve embeds queries with sentence-transformers (and torch): "
                          "pip install 'rerank[embeddings]'") from None
    torch.set_num_threads(threads)
    if not os.environ.get("RERANK_NUM_THREADS"):
        # Requests run in parallel; one query's rerank is too small to split across threads
        # (a split region waits for a core the forward pass holds: 0.5 → 8 ms measured).
        from . import backend

        backend.set_num_threads(1)
    api = SearchAPI.open(db, limits=limits, batching=batching)
    try:
        app = create_app(api, api_key=api_key)
        if not is_loopback(host) and not api_key:
            log.warning("serving on %s without an API key: anyone who can reach this port can "
                        "read and write the memory (set %s)", host, ENV_API_KEY)
        config = uvicorn.Config(app, host=host, port=port, access_log=access_log,
                                log_level="info", lifespan="off",
                                limit_concurrency=1024, timeout_keep_alive=30)
        make_server(config, ready).run()
    finally:
        api.close()


def make_server(config, ready=None):
    """A ``uvicorn.Server`` for ``config`` that calls ``ready(url)`` (the bound address: useful
    with port 0) once its socket listens."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started and ready is not None and self.servers:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                ready(f"http://{host}:{port}")

    return Server(config)


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 30.0):
    """Serve ``app`` (from :func:`create_app`) on a background thread for the ``with`` block;
    yields its URL (port 0: a free port chosen by the OS). The server stops (finishing its
    requests) when the block exits, even on error; the API is not closed."""
    import uvicorn

    started = threading.Event()
    urls: list[str] = []

    def ready(url: str) -> None:
        urls.append(url)
        started.set()

    server = make_server(uvicorn.Config(app, host=host, port=port, lifespan="off",
                                        log_level="warning", access_log=False), ready)
    thread = threading.Thread(target=server.run, name="rerank-serve", daemon=True)
    thread.start()
    try:
        while not started.wait(0.05):
            if not thread.is_alive():
                raise RuntimeError(f"the server on {host}:{port} did not start (see the log)")
            timeout -= 0.05
            if timeout <= 0:
                raise RuntimeError(f"the server on {host}:{port} did not start in time")
        yield urls[0]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
