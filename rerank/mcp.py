"""MCP tools over stdio: ``search``, ``store``, ``rerank``, ``list_mechanisms`` and ``status``
over a :class:`rerank.serving.SearchAPI`, served with the ``mcp`` SDK (the ``serve`` extra).

Each tool has a typed, described and bounded JSON input schema. A bad call (a value out of
range, an unknown mechanism, a missing field, a vector of the wrong size) comes back as a tool
error (``isError``) whose text names the problem; the server keeps serving. Only protocol goes
to stdout: logs and the model's loading messages go to stderr.
"""
# No ``from __future__ import annotations``: the tools' annotations use limits known only when
# the server is built, so they must be evaluated where they are written.
import contextlib
import json
import logging
import os
import sys
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from .serving import MECHANISMS, Limits, SearchAPI

__all__ = ["build_server", "document_model", "run"]

Vector = Annotated[list[float], Field(min_length=1)]


def document_model(limits: Limits) -> type[BaseModel]:
    """The ``store`` tool's document: ``{id, text, metadata?}`` within ``limits``."""

    class Document(BaseModel):
        """One document to store: a string ``id`` (upserted: storing an id again replaces it),
        its ``text`` and an optional ``metadata`` object (what a search's ``filter`` matches)."""

        model_config = ConfigDict(extra="forbid")

        id: str = Field(min_length=1, max_length=1024, description="The document's id.")
        text: str = Field(max_length=limits.max_text_chars,
                          description="The text to embed and store.")
        metadata: dict[str, Any] | None = Field(
            None, description='Metadata, e.g. {"topic": "cooking"}; search filters match it.')

    return Document


def _tool_errors(fn):
    """Run ``fn``; turn the API's anticipated errors into tool errors carrying their message."""
    try:
        return fn()
    except KeyError as exc:
        raise ToolError(str(exc.args[0]) if exc.args else "unknown id") from exc
    except (ValueError, TypeError) as exc:
        raise ToolError(str(exc)) from exc


def _result(document: Any) -> CallToolResult:
    """One JSON text block (what a model reads) and the same document as structured content
    (an object: a list is wrapped as ``{"result": [...]}``)."""
    structured = document if isinstance(document, dict) else {"result": document}
    text = json.dumps(document, ensure_ascii=False, default=str)
    return CallToolResult(content=[TextContent(type="text", text=text)],
                          structured_content=structured)


def build_server(api: SearchAPI) -> MCPServer:
    """The MCP server exposing ``api`` (a :class:`rerank.serving.SearchAPI`) as five tools; the
    caller owns ``api`` and closes it."""
    limits = getattr(api, "limits", None) or Limits()
    query_type = Annotated[
        Annotated[str, Field(min_length=1, max_length=limits.max_query_chars)] | Vector,
        Field(description="The query: a text (embedded with the store's model) or a query "
                          "vector of the store's dimension."),
    ]
    Document = document_model(limits)
    server = MCPServer(
        "rerank",
        instructions="Semantic search over a document store: store documents, search them "
                     "(vector candidates reranked by attention), rerank candidate texts for a "
                     "query, list the attention mechanisms, report the backend and store.",
        log_level="WARNING",
    )
    read_only = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)

    @server.tool(annotations=read_only)
    def search(
        query: query_type,
        k: Annotated[int, Field(ge=1, le=limits.max_k, description="How many results.")] = 10,
        mechanism: Annotated[
            Literal[MECHANISMS] | None,  # type: ignore[valid-type]
            Field(description="Force a rerank scorer; default: late interaction over stored "
                              "token vectors, else memory-attention."),
        ] = None,
        filter: Annotated[
            dict[str, Any] | None,
            Field(description='Metadata filter: {"field": value} or {"field": {"$in": [...]}}.'),
        ] = None,
    ) -> Annotated[CallToolResult, dict[str, Any]]:
        """The top k stored documents for a query: vector candidates (k·3) reranked by
        attention. Returns the results (corpus_id, score, text, metadata), the mechanism and
        backend that ran, and per-stage timings in ms."""
        return _result(_tool_errors(lambda: api.search(query, k=k, mechanism=mechanism,
                                                       filter=filter)))

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                             idempotent_hint=True, open_world_hint=False))
    def store(
        documents: Annotated[list[Document], Field(min_length=1, max_length=limits.max_documents,
                                                   description="The documents to store.")],
    ) -> Annotated[CallToolResult, dict[str, Any]]:
        """Embed and store documents (upsert by id; committed before this returns). Returns
        what was stored and the count."""
        docs = [d.model_dump(exclude_none=True) for d in documents]
        return _result(_tool_errors(lambda: api.store(docs)))

    @server.tool(annotations=read_only)
    def rerank(
        query: query_type,
        candidates: Annotated[
            Annotated[list[str], Field(min_length=1, max_length=limits.max_candidates)]
            | Annotated[list[Vector], Field(min_length=1, max_length=limits.max_candidates)],
            Field(description="The candidates to order: texts, or vectors of the query's "
                              "dimension."),
        ],
        top_k: Annotated[int | None, Field(ge=1, le=limits.max_candidates,
                                           description="Keep the best top_k (default: all).")]
        = None,
    ) -> Annotated[CallToolResult, list[dict[str, Any]]]:
        """Order candidates for a query (stateless: nothing is stored). Returns
        sentence-transformers' rank shape: [{corpus_id (the candidate's index), score, text?}],
        best first."""
        return _result(_tool_errors(lambda: api.rerank(query, candidates, top_k=top_k)))

    @server.tool(annotations=read_only)
    def list_mechanisms() -> Annotated[CallToolResult, list[dict[str, Any]]]:
        """The attention mechanisms of the registry: name, category, complexity, use case and
        whether a compiled kernel runs it."""
        return _result(_tool_errors(api.mechanisms))

    @server.tool(annotations=read_only)
    def status() -> Annotated[CallToolResult, dict[str, Any]]:
        """The backend that runs (compiled or numpy, why, threads), the embedding model and the
        store (documents, dimension)."""
        return _result(_tool_errors(api.status))

    return server


@contextlib.contextmanager
def _stdout_to_stderr():
    """Point stdout (the Python stream and file descriptor 1) at stderr for the block, so that
    nothing a library prints while the model loads reaches the protocol stream."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run(db=None, *, embedder=None) -> None:
    """Open the store at ``db`` (``RERANK_DB`` / the default location when None) with
    ``embedder`` (default: the packaged model) and serve the tools over stdio until the client
    closes the connection."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    from memory_adapter.location import resolve_db

    db = resolve_db(db)        # a bad --db fails here, before seconds of model loading
    try:                       # transformers' "Loading weights" bar is noise in a client's log
        from transformers.utils import logging as transformers_logging
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    with _stdout_to_stderr():
        api = SearchAPI.open(db, embedder=embedder)
    try:
        build_server(api).run("stdio")
    finally:
        api.close()
