"""The ``rerank`` command line.

``rerank [--debug] COMMAND``: ``status``, ``index PATH``, ``search QUERY``, ``eval DIR``, ``list``,
``recommend``, ``compute``, ``benchmark``, ``batch INPUT OUTPUT``, ``serve`` (HTTP) and ``mcp``
(MCP tools over stdio).
Errors print one line (``Error: …``) on stderr and exit non-zero; ``--debug`` (or ``RERANK_DEBUG=1``) shows the
traceback instead. ``--json`` prints one JSON document on stdout (progress and messages go to
stderr). Commands that embed text load the packaged embedding model lazily, so ``rerank status``
stays fast.
"""
from __future__ import annotations

import json
import os
import re
import time

import click
from rich.console import Console
from rich.table import Table

#: The rerank scorers ``search --mechanism`` can force (``rerank.reranker.SCORERS``; repeated
#: here so that importing the CLI does not import the mechanisms).
MECHANISMS = ("memory-attention", "cross-attention", "hierarchical-cross-attention")


class _Group(click.Group):
    """A click group that turns any error of a command into a one-line message (no traceback)
    unless ``--debug`` is given."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the policy: no traceback without --debug
            if (ctx.obj or {}).get("debug"):
                raise
            raise click.ClickException(_message(exc)) from None


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, (ValueError, TypeError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc} (rerank --debug … shows the traceback)"


@click.group(cls=_Group)
@click.version_option(package_name="rerank")
@click.option("--debug", is_flag=True, envvar="RERANK_DEBUG",
              help="Show the traceback of an error (also: RERANK_DEBUG=1).")
@click.pass_context
def main(ctx, debug):
    """rerank: attention kernels and rerank scorers for retrieval."""
    obj = ctx.ensure_object(dict)
    obj["debug"] = bool(debug or obj.get("debug"))


DB_HELP = ("Database: a file path (SQLite) or a postgresql:// URL; default $RERANK_DB, else "
           "a per-user data directory.")


@main.command()
@click.option("--db", default=None, help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def status(db, as_json):
    """Which backend runs (compiled or numpy), why, with how many threads; the store if one exists."""
    from . import backend

    info = backend.status()
    try:
        from memory_adapter.location import describe, index_path_for, is_postgres_url, resolve_db
    except ImportError as exc:  # the memory extra (sqlite-utils) is not installed
        info["store"] = {"error": f"memory_adapter unavailable: {exc}"}
        describe = None
    try:
        path = resolve_db(db) if describe else None
        store = describe(path) if path else None
        if store is not None:
            if not is_postgres_url(path):   # PostgreSQL: the index is in the database
                index = index_path_for(path)
                store["index_path"] = index
                store["index_bytes"] = (os.path.getsize(index) if index and os.path.exists(index)
                                        else 0)
            info["store"] = store
    except (ValueError, ConnectionError, ImportError) as exc:   # ConnectionError: server down
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    table = Table(title="rerank status", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key in ("backend", "requested", "compiled", "extension_built", "reason", "threads",
                "openmp", "native"):
        table.add_row(key, "" if info[key] is None else str(info[key]))
    for key, value in info.get("store", {}).items():
        table.add_row(f"store.{key}", str(value))
    for lib in info["blas"]:
        table.add_row("blas", f"{lib['internal_api']} {lib['version']} ({lib['architecture']}, "
                              f"{lib['num_threads']} threads) {lib['filepath']}")
    Console().print(table)


# ------------------------------------------------------------------------------ shared helpers
def _stderr() -> Console:
    return Console(stderr=True)


def _resolve_db(db) -> str:
    from memory_adapter.location import resolve_db

    return resolve_db(db)


def _shown(db_path: str) -> str:
    """The database as messages show it: a URL without its password."""
    from memory_adapter.location import redact_url

    return redact_url(db_path)


def _describe(path: str) -> dict | None:
    """What the store at ``path`` (a file or a PostgreSQL URL) holds, or None when there is none
    (read-only)."""
    from memory_adapter.location import describe

    return describe(path)


def _expected_model_id(ctx) -> str:
    embedder = (ctx.find_root().obj or {}).get("embedder")
    if embedder is not None:
        return embedder.model_id
    from embeddings_adapter.service import PACKAGED_MODEL_ID

    return PACKAGED_MODEL_ID


def _check_model(ctx, path: str, store: dict | None) -> None:
    """Refuse a store of another embedding model before spending seconds loading ours."""
    if store is None:
        return
    model_id = _expected_model_id(ctx)
    if store.get("model_id") != model_id:
        raise click.ClickException(
            f"the store at {_shown(path)} holds vectors of model {store.get('model_id')!r} (dim "
            f"{store.get('dim')}); this command embeds with {model_id!r}: vectors of different "
            "models are not comparable. Use another --db")


def _embedder(ctx):
    """The embedder: one given in ``ctx.obj["embedder"]`` (tests, embedding programs), else the
    packaged model (loaded here, ~3 s)."""
    obj = ctx.find_root().obj
    if obj is not None and obj.get("embedder") is not None:
        return obj["embedder"]
    try:
        from embeddings_adapter import EmbeddingService
    except ImportError as exc:
        raise click.ClickException(f"embedding text needs sentence-transformers: {exc} "
                                   "(pip install 'rerank[embeddings]')") from None
    try:   # transformers' "Loading weights" bar is noise on a command line
        from transformers.utils import logging as transformers_logging
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
    console = _stderr()
    if console.is_terminal:
        with console.status("loading the embedding model…"):
            embedder = EmbeddingService()
    else:
        embedder = EmbeddingService()
    if obj is not None:
        obj["embedder"] = embedder
    return embedder


def _echo_json(document) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


# ------------------------------------------------------------------------------------ index
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def split_chunks(text: str, *, min_chars: int = 200, max_chunks: int = 64) -> list[str]:
    """Passages of ``text`` for hierarchical rerank: sentences (split after ``.``, ``!`` or
    ``?`` and at blank lines) merged in order until each holds at least ``min_chars``
    characters; at most ``max_chunks`` (the rest joins the last). A short text is one chunk."""
    parts = [p.strip() for p in _SENTENCE_END.split(text) if p and p.strip()]
    chunks: list[str] = []
    for part in parts:
        if chunks and (len(chunks[-1]) < min_chars or len(chunks) >= max_chunks):
            chunks[-1] = f"{chunks[-1]} {part}"
        else:
            chunks.append(part)
    return chunks or [text]


def _add_chunks(embedder, batch: list[dict]) -> None:
    """Embed every document's passages (one call for the batch) into ``doc["chunks"]``."""
    pieces = [split_chunks(doc["text"]) for doc in batch]
    vectors = embedder.embed([p for ps in pieces for p in ps])
    start = 0
    for doc, ps in zip(batch, pieces):
        doc["chunks"] = vectors[start:start + len(ps)]
        start += len(ps)


def _progress(console: Console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text("– docs/s" if not speed else f"{speed:,.1f} docs/s")

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    disable=not console.is_terminal)


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=str))
@click.option("--db", default=None, help=DB_HELP)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Documents embedded and committed together (one transaction each).")
@click.option("--chunks", "with_chunks", is_flag=True,
              help="Also store passage vectors (sentences merged to ~200 characters) for "
                   "search --mechanism hierarchical-cross-attention (embeds each text again).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def index(ctx, path, db, batch_size, with_chunks, as_json):
    """Embed and store the documents at PATH.

    PATH is a JSON-lines file ({"id"|"_id", "text", "title"?, "metadata"?} per line), a BEIR
    folder (its corpus.jsonl) or a folder of text files (id = relative path). A title is kept in
    metadata["title"] and indexed as "title\\ntext". The file is checked before anything is
    stored. Resumable: ids already in the store are skipped (their text is not compared), and
    every finished batch is committed, so an interrupted run loses at most one batch."""
    from memory_adapter import AttentionEnhancedMemory

    from .corpus import open_corpus

    start = time.perf_counter()
    source = open_corpus(path)
    db_path = _resolve_db(db)
    store = _describe(db_path)
    _check_model(ctx, db_path, store)
    ids = [doc["id"] for doc in source]          # reads (and validates) every document
    if not ids:
        raise click.ClickException(f"{path}: no documents to index")
    stored = 0

    def report(skipped: int, documents: int) -> None:
        seconds = time.perf_counter() - start
        rate = stored / seconds if seconds > 0 else 0.0
        if as_json:
            _echo_json({"path": path, "db": _shown(db_path), "stored": stored,
                        "skipped": skipped, "seconds": round(seconds, 3),
                        "docs_per_second": round(rate, 2), "documents": documents})
        else:
            click.echo(f"stored {stored} documents, skipped {skipped} already stored, in "
                       f"{seconds:.1f} s ({rate:,.1f} docs/s); {_shown(db_path)} holds "
                       f"{documents} documents")

    if store is not None and store["documents"] >= len(ids):
        # everything may be stored already: find out without loading the embedding model
        from memory_adapter.location import open_store

        with open_store(db_path, model_id=store["model_id"], dim=store["dim"]) as existing:
            stored_ids = set(existing.ids())
        if all(i in stored_ids for i in ids):
            report(len(ids), len(stored_ids))
            return
    embedder = _embedder(ctx)
    console = _stderr()
    with AttentionEnhancedMemory.open(db_path, embedder=embedder) as memory:
        existing = set(memory.document_store.ids())
        skipped = sum(1 for i in ids if i in existing)
        todo = len(ids) - skipped
        try:
            with _progress(console) as progress:
                task = progress.add_task("indexing", total=todo)
                batch: list[dict] = []

                def flush():
                    nonlocal stored
                    if with_chunks:
                        _add_chunks(embedder, batch)
                    memory.store(batch)
                    stored += len(batch)
                    progress.advance(task, len(batch))
                    batch.clear()

                for doc in source:
                    if doc["id"] in existing:
                        continue
                    batch.append({"id": doc["id"], "text": doc["text"],
                                  "metadata": doc["metadata"]})
                    if len(batch) >= batch_size:
                        flush()
                if batch:
                    flush()
        except KeyboardInterrupt:
            click.echo(f"interrupted: {stored} documents stored in this run, {memory.count()} in "
                       f"{_shown(db_path)}; run the same command again to resume (stored "
                       "documents are skipped)", err=True)
            ctx.exit(130)
        documents = memory.count()
    report(skipped, documents)


# ----------------------------------------------------------------------------------- search
def _search_memory_class():
    """The memory ``search`` uses: :class:`rerank.serving.SearchMemory` (imported on first use:
    it imports the reranker)."""
    from .serving import SearchMemory

    return SearchMemory


def _parse_filter(text: str | None):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc.msg} (column {exc.colno})",
                                 param_hint="--filter") from None
    if not isinstance(value, dict) or not value:
        raise click.BadParameter('a JSON object {"field": value} or {"field": {"$in": [...]}}',
                                 param_hint="--filter")
    return value


def _one_line(text, width: int = 80) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


@main.command()
@click.argument("query")
@click.option("-k", "--k", "k", default=10, show_default=True, type=click.IntRange(min=1),
              help="How many results.")
@click.option("--db", default=None, help=DB_HELP)
@click.option("--mechanism", type=click.Choice(MECHANISMS), default=None,
              help="Force a rerank scorer (default: late interaction over stored token vectors, "
                   "else memory-attention).")
@click.option("--filter", "filter_json", default=None, metavar="JSON",
              help='Metadata filter: {"field": value} or {"field": {"$in": [...]}}.')
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def search(ctx, query, k, db, mechanism, filter_json, as_json):
    """The top K documents for QUERY: vector candidates (k·3), attention rerank, top K."""
    if not query.strip():
        raise click.BadParameter("must not be empty", param_hint="QUERY")
    filter = _parse_filter(filter_json)
    db_path = _resolve_db(db)
    store = _describe(db_path)
    if store is None:
        raise click.ClickException(f"no database at {_shown(db_path)}: index documents first "
                                   f"(rerank index PATH --db {_shown(db_path)})")
    if store["documents"] == 0:
        raise click.ClickException(f"the database {_shown(db_path)} holds no documents: index "
                                   f"some first (rerank index PATH --db {_shown(db_path)})")
    if filter is None and k > store["documents"]:
        raise click.ClickException(f"k = {k} but the database {_shown(db_path)} holds only "
                                   f"{store['documents']} documents; ask for at most "
                                   f"{store['documents']}")
    if mechanism == "cross-attention" and store.get("documents_with_tokens") == 0:
        raise click.ClickException(f"cross-attention needs stored token vectors and the "
                                   f"database {_shown(db_path)} has none; use --mechanism "
                                   "memory-attention, or re-index with token vectors")
    _check_model(ctx, db_path, store)
    embedder = _embedder(ctx)
    with _search_memory_class().open(db_path, embedder=embedder, mechanism=mechanism) as memory:
        ranked = memory.retrieve(query, k, filter=filter)
    from .serving import search_document

    document = search_document(query, ranked)
    timings, results = document["timings_ms"], document["results"]
    if ranked.fallback:
        click.echo(f"warning: the rerank failed, results are in vector order: "
                   f"{ranked.fallback}", err=True)
    if as_json:
        _echo_json(document)
        return
    table = Table(title=f"{query!r}: top {len(results)}")
    table.add_column("#", justify="right")
    table.add_column("id", overflow="fold")
    table.add_column("score", justify="right")
    table.add_column("text")
    for rank, item in enumerate(results, start=1):
        table.add_row(str(rank), str(item["corpus_id"]), f"{item['score']:.4f}",
                      _one_line(item.get("text")))
    console = Console()
    console.print(table)
    parts = [f"{key} {value:.2f} ms" for key, value in timings.items()]
    console.print(f"{ranked.mechanism} on {ranked.backend} · " + " · ".join(parts),
                  highlight=False)


# ------------------------------------------------------------------------------------- eval
@main.command("eval")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--db", default=None, help=DB_HELP + " It must hold the collection's corpus "
              "(rerank index DIR --db …).")
@click.option("--split", default="test", show_default=True, help="The qrels file: qrels/SPLIT.tsv.")
@click.option("--depth", default=30, show_default=True, type=click.IntRange(min=1),
              help="How many dense candidates the rerank methods reorder.")
@click.option("--cv", is_flag=True, help="Also choose the text rerank's settings by 2-fold "
              "cross-validation over queries (from the family declared in rerank.text_settings).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def eval_(ctx, directory, db, split, depth, cv, as_json):
    """Measure dense retrieval and each rerank scorer on the BEIR collection in DIRECTORY
    (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv): nDCG@10, recall@10/100, MRR@10, ms per
    query, and a paired sign-flip test of each method's nDCG@10 against dense."""
    from memory_adapter import AttentionEnhancedMemory

    from .corpus import load_beir
    from .evaluation import evaluate

    dataset = load_beir(directory, split=split)
    db_path = _resolve_db(db)
    store = _describe(db_path)
    if store is None or store["documents"] == 0:
        raise click.ClickException(f"no indexed documents at {_shown(db_path)}: index the "
                                   f"collection first (rerank index {directory} --db "
                                   f"{_shown(db_path)})")
    _check_model(ctx, db_path, store)
    if store["documents"] < len(dataset.corpus):
        click.echo(f"warning: {_shown(db_path)} holds {store['documents']} documents but the "
                   f"corpus has {len(dataset.corpus)}: finish `rerank index {directory}` for "
                   "comparable numbers", err=True)
    embedder = _embedder(ctx)
    console = _stderr()
    with AttentionEnhancedMemory.open(db_path, embedder=embedder) as memory, \
            _progress(console) as progress:
        task = progress.add_task("evaluating", total=len(dataset.queries))
        result = evaluate(memory, dataset, depth=depth, cv=cv,
                          progress=lambda done, total: progress.update(task, completed=done))
    if as_json:
        _echo_json(result)
        return
    table = Table(title=f"{result['dataset']}: {result['queries']} queries, "
                        f"{result['documents']} documents, rerank depth {result['depth']}")
    for column in ("method", "nDCG@10", "recall@10", "recall@100", "MRR@10", "ms/query",
                   "p vs dense"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for m in result["methods"]:
        table.add_row(m["method"] + (" ★" if m["default"] else ""), f"{m['ndcg@10']:.4f}",
                      f"{m['recall@10']:.4f}", f"{m['recall@100']:.4f}", f"{m['mrr@10']:.4f}",
                      f"{m['ms_per_query']:.2f}",
                      "—" if m["p_value"] is None else f"{m['p_value']:.2g}")
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)         # a file or a pipe: wide enough for the method names
    out.print(table)
    out.print(f"★ default · query embedding {result['embed_ms_per_query']:.2f} ms/query (not in "
              "ms/query)", highlight=False)
    for i, fold in enumerate(result.get("cross_validation", {}).get("folds", [])):
        out.print(f"CV fold {i + 1}: chose {fold['label']} on {fold['train_queries']} queries "
                  f"(nDCG@10 {fold['train_ndcg@10']:.4f}); held-out {fold['test_queries']} "
                  f"queries: {fold['test_ndcg@10']:.4f}", highlight=False)


# ------------------------------------------------------------------------------------- list
def _categories() -> list[str]:
    from .mechanisms import registry

    return list(dict.fromkeys(spec.category for spec in registry.list()))


def _wide_console(stderr: bool = False) -> Console:
    """A console for tables: the terminal's width, or 140 columns into a file or a pipe."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=140)


def _check_mechanism(name: str) -> str:
    from .mechanisms import registry

    try:
        registry.spec(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--mechanism") from None
    return name


@main.command("list")
@click.option("--category", default=None, metavar="C",
              help="Only this category (multi-head, self-attention, cross-attention, sparse, "
                   "linear, flash, moe).")
@click.option("--compiled-only", is_flag=True,
              help="Only mechanisms whose forward runs through a compiled kernel.")
@click.option("--json", "as_json", is_flag=True,
              help='Print a JSON list of {"name", "category", "complexity", "use_case", '
                   '"compiled"}.')
def list_(category, compiled_only, as_json):
    """The registered attention mechanisms: name, category, complexity, use case, compiled."""
    from .mechanisms import registry

    specs = registry.list()
    if category is not None:
        categories = _categories()
        if category not in categories:
            raise click.BadParameter(f"unknown category {category!r}; the categories are "
                                     f"{', '.join(categories)}", param_hint="--category")
        specs = [s for s in specs if s.category == category]
    if compiled_only:
        specs = [s for s in specs if s.compiled]
    rows = [{"name": s.name, "category": s.category, "complexity": s.complexity,
             "use_case": s.use_case, "compiled": s.compiled} for s in specs]
    if as_json:
        _echo_json(rows)
        return
    title = f"{len(rows)} attention mechanisms" + (f" · {category}" if category else "") \
        + (" · compiled only" if compiled_only else "")
    table = Table(title=title)
    for column in ("name", "category", "complexity", "use case", "compiled"):
        table.add_column(column, no_wrap=column != "use case")
    for row in rows:
        table.add_row(row["name"], row["category"], row["complexity"], row["use_case"],
                      "yes" if row["compiled"] else "no")
    _wide_console().print(table)


# -------------------------------------------------------------------------------- recommend
@main.command()
@click.option("--seq-len", required=True, type=click.IntRange(min=1), help="Sequence length.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1),
              help="Batch size.")
@click.option("--hierarchical", is_flag=True, help="The input is hierarchical (documents of "
              "passages).")
@click.option("--graph", is_flag=True, help="The input has graph structure (agents through a "
              "relay).")
@click.option("--moe", is_flag=True, help="Route to experts (mixture of experts).")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"mechanism", "reason", "rule", "condition"}.')
def recommend(seq_len, batch_size, hierarchical, graph, moe, as_json):
    """Which mechanism the default selection rules pick for a workload, and why (DESIGN.md
    "Selection": rerank.selector.MechanismSelector)."""
    from .selector import MechanismSelector

    choice = MechanismSelector().explain(seq_len, batch_size, is_hierarchical=hierarchical,
                                         has_graph_structure=graph, is_moe=moe)
    document = {"mechanism": choice.mechanism, "reason": choice.reason,
                "rule": choice.rule + 1 if choice.rule >= 0 else None,
                "condition": choice.condition or None}
    if as_json:
        _echo_json(document)
        return
    click.echo(f"{choice.mechanism}: {choice.reason}")


# ---------------------------------------------------------------------------------- compute
def _check_dim(dim: int, heads: int) -> None:
    from .benchmarking import head_dim

    try:
        head_dim(dim, heads)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--dim") from None


@main.command()
@click.option("--mechanism", "-m", required=True, metavar="M",
              help="A registry name (see `rerank list`).")
@click.option("--seq-len", required=True, type=click.IntRange(min=1),
              help="Sequence length n (queries = keys = n).")
@click.option("--dim", required=True, type=click.IntRange(min=1),
              help="Model dimension, split across the heads (a multiple of --heads).")
@click.option("--heads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Attention heads.")
@click.option("--causal", is_flag=True, help="Causal masking.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of the random q, k, v.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def compute(mechanism, seq_len, dim, heads, causal, seed, as_json):
    """Run one forward of mechanism M on seeded random q, k, v of shape (heads, n, dim/heads):
    output shape, time, a checksum (sha256 of the float32 output, sum, mean) and the max error
    against exact attention where the mechanism equals it (or, for a sparse mechanism, exact
    attention under its own pattern)."""
    from . import benchmarking

    _check_mechanism(mechanism)
    _check_dim(dim, heads)
    result = benchmarking.compute(mechanism, seq_len, dim, heads, causal=causal, seed=seed)
    if as_json:
        _echo_json(result)
        return
    ref, digest = result["reference"], result["checksum"]
    click.echo(f"{mechanism} on {result['backend']}: q, k, v {tuple(result['input_shape'])} → "
               f"output {tuple(result['shape'])}{' (causal)' if causal else ''} in "
               f"{result['ms']:.3f} ms (seed {seed})")
    click.echo(f"checksum sha256 {digest['sha256']} · sum {digest['sum']:.6g} · mean "
               f"{digest['mean']:.6g}")
    if ref["kind"] is None:
        click.echo(ref["note"])
    else:
        verdict = "within" if ref["within_tolerance"] else "OUTSIDE"
        click.echo(f"max |error| {ref['max_abs_error']:.3g} against {ref['note']}: {verdict} "
                   f"the tolerance {ref['tolerance']:.3g}")


# -------------------------------------------------------------------------------- benchmark
def _seq_lens(values) -> list[int]:
    """``--seq-len`` values: repeated options and/or comma lists of positive integers."""
    out = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            try:
                n = int(part)
            except ValueError:
                raise click.BadParameter(f"{part!r} is not an integer (give N, or a comma list "
                                         "such as 256,1024)", param_hint="--seq-len") from None
            if n < 1:
                raise click.BadParameter(f"{n} is not a positive sequence length",
                                         param_hint="--seq-len")
            out.append(n)
    return sorted(set(out))


def _bench_progress(console: Console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    disable=not console.is_terminal)


@main.command()
@click.option("--mechanism", "-m", "mechanisms", multiple=True, metavar="M",
              help="A mechanism to time (repeatable).")
@click.option("--all", "all_", is_flag=True, help="Time every registered mechanism.")
@click.option("--seq-len", "seq_lens", multiple=True, metavar="N",
              help="Sequence lengths: repeatable or a comma list [default: 256,1024,4096].")
@click.option("--dim", default=256, show_default=True, type=click.IntRange(min=1),
              help="Model dimension, split across the heads (a multiple of --heads).")
@click.option("--heads", default=4, show_default=True, type=click.IntRange(min=1),
              help="Attention heads.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1),
              help="Timed rounds, each on new random inputs (the median is reported).")
@click.option("--numpy-max-seq-len", default=1024, show_default=True,
              type=click.IntRange(min=1),
              help="Compare against numpy only up to this length (O(n²) float64 memory).")
@click.option("--no-torch", is_flag=True, help="Skip the torch SDPA baseline.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of the random inputs.")
@click.option("--output", default="rerank-benchmark.json", show_default=True,
              type=click.Path(dir_okay=False, path_type=str),
              help="The JSON report; the markdown table (.md) and PNG plots go beside it.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
def benchmark(mechanisms, all_, seq_lens, dim, heads, rounds, numpy_max_seq_len, no_torch, seed,
              output, as_json):
    """Time the forward of mechanisms over sequence lengths against numpy (exact attention's
    float64 reference, or the mechanism on the numpy backend) and torch SDPA when installed.

    Every round draws new random q, k, v (outside the timing) and calls the mechanism directly,
    so no number is a cache hit. Writes OUTPUT (JSON, with the machine, threads and versions),
    a markdown table beside it and one PNG plot per category (needs matplotlib)."""
    from . import benchmarking
    from .mechanisms import registry

    if all_ and mechanisms:
        raise click.UsageError("give --mechanism M (repeatable) or --all, not both")
    if not all_ and not mechanisms:
        raise click.UsageError("give --mechanism M (repeatable) or --all")
    names = registry.names() if all_ else list(dict.fromkeys(
        _check_mechanism(name) for name in mechanisms))
    _check_dim(dim, heads)
    if not output.lower().endswith(".json"):
        raise click.BadParameter(f"must be a .json path; got {output!r}", param_hint="--output")
    settings = benchmarking.BenchmarkSettings(
        mechanisms=names, dim=dim, heads=heads, rounds=rounds, seed=seed,
        numpy_max_seq_len=numpy_max_seq_len, torch=not no_torch,
        **({"seq_lens": _seq_lens(seq_lens)} if seq_lens else {}))
    settings.validate()
    console = _stderr()
    start = time.perf_counter()
    with _bench_progress(console) as progress:
        task = progress.add_task("benchmark", total=benchmarking.total_steps(settings))

        def step(label: str) -> None:
            progress.update(task, advance=1, description=label)

        report = benchmarking.run_benchmark(settings, progress=step)
    report["seconds"] = round(time.perf_counter() - start, 3)
    files = benchmarking.write_report(report, output)
    if "plots_skipped" in files:
        click.echo(f"warning: {files['plots_skipped']}", err=True)
    if as_json:
        _echo_json(report)
        return
    table = Table(title=f"rerank benchmark: dim {dim} = {heads} heads × {dim // heads}, "
                        f"median of {rounds} rounds")
    for column in ("mechanism", "n", "backend", "ms", "×numpy", "×torch SDPA"):
        table.add_column(column, justify="left" if column in ("mechanism", "backend")
                         else "right")
    for row in report["results"]:
        if "error" in row:
            table.add_row(row["mechanism"], str(row["seq_len"]), row["backend"],
                          f"error: {row['error']}", "", "")
            continue
        speedups = [row.get(key) for key in ("speedup_vs_numpy", "speedup_vs_torch")]
        table.add_row(row["mechanism"], str(row["seq_len"]), row["backend"],
                      f"{row['median_ms']:.3f}",
                      *("—" if s is None else f"{s:.2f}×" for s in speedups))
    out = _wide_console()
    out.print(table)
    out.print(f"{len(report['results'])} timings in {report['seconds']:.1f} s · wrote "
              f"{files['json']}, {files['markdown']}"
              + (f" and {len(files['plots'])} plots" if files["plots"] else ""),
              highlight=False)


# -------------------------------------------------------------------------------------- mcp
@main.command("mcp")
@click.option("--db", default=None, help=DB_HELP)
@click.pass_context
def mcp_command(ctx, db):
    """Serve MCP tools over stdio: search, store, rerank, list_mechanisms, status.

    For an MCP client (an agent) that starts this command and speaks the protocol on its stdin
    and stdout; logs go to stderr. Stops when the client closes the connection."""
    try:
        import mcp  # noqa: F401 - the SDK, not rerank.mcp
    except ImportError as exc:
        raise click.ClickException(f"rerank mcp needs the MCP SDK ({exc}): "
                                   "pip install 'rerank[serve]'") from None
    from .mcp import run

    run(db, embedder=(ctx.find_root().obj or {}).get("embedder"))


# ------------------------------------------------------------------------------------ batch
@main.command("batch")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False,
                                                                path_type=str))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(dir_okay=False, path_type=str))
@click.option("--db", default=None, help=DB_HELP + " It holds the candidates' vectors.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: a thread pool; ray: one Ray task per chunk (the cluster at "
                   "RAY_ADDRESS, else a new local Ray).")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Keep each query's best K (default: all its candidates).")
@click.option("--chunk-size", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Queries per chunk (per Ray task).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="local: threads (default: RERANK_NUM_THREADS, else the CPUs); ray: CPUs per "
                   "task (default 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON document.")
@click.pass_context
def batch(ctx, input_path, output_path, db, engine, top_k, chunk_size, threads, as_json):
    """Rerank the JSON lines of INPUT into OUTPUT.

    Each input line is {"query_id", "query" (text or a vector), "candidates": [ids]}; each
    output line {"query_id", "results": [{"corpus_id", "score"}]}, best first, in input order.
    Candidates are scored by memory-attention over their stored vectors."""
    if engine == "ray":
        from .batch_ray import import_ray

        try:
            import_ray()
        except ImportError as exc:
            raise click.ClickException(str(exc)) from None
    from .batch import rerank_batch

    summary = rerank_batch(input_path, output_path, db=_resolve_db(db), engine=engine,
                           top_k=top_k, chunk_size=chunk_size, threads=threads,
                           embedder=(ctx.find_root().obj or {}).get("embedder"))
    if as_json:
        _echo_json(summary)
        return
    click.echo(f"reranked {summary['queries']:,} queries ({summary['candidates']:,} candidates) "
               f"in {summary['seconds']:.2f} s on {summary['engine']} ({summary['backend']}) "
               f"→ {summary['output']}", err=True)


# ------------------------------------------------------------------------------------ serve
@main.command()
@click.option("--db", default=None, help=DB_HELP + " Created when missing.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The interface to bind: loopback by default (any other without an API key "
                   "logs a warning: anyone who reaches the port can read and write).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="The TCP port (0: a free one, printed when listening).")
@click.option("--api-key-env", default="RERANK_API_KEY", show_default=True, metavar="VAR",
              help="The environment variable holding the API key: when set and not empty, every "
                   "route but /healthz needs 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
@click.option("--no-batching", is_flag=True,
              help="Embed each query on its own (concurrent queries do not share forward passes).")
@click.option("--torch-threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="Threads of the embedding forward pass [default: half the CPUs, at least 1; "
                   "the rest serve HTTP, retrieval and rerank].")
@click.option("--access-log", is_flag=True, help="Log every request on stderr.")
@click.pass_context
def serve(ctx, db, host, port, api_key_env, no_batching, torch_threads, access_log):
    """Serve the semantic search HTTP API over the memory at --db until Ctrl-C.

    Routes: POST /v1/documents, GET|DELETE /v1/documents/{id}, POST /v1/search, POST /v1/rerank,
    GET /v1/mechanisms, GET /healthz, GET /metrics, GET /openapi.json."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(f"rerank serve needs the serve extra ({exc.name or exc} is not "
                                   "installed): pip install 'rerank[serve]'") from None
    from .server import default_torch_threads, serve as run

    db_path = _resolve_db(db)
    _check_model(ctx, db_path, _describe(db_path))
    api_key = os.environ.get(api_key_env) or None     # off loopback without one: a warning
    threads = torch_threads or default_torch_threads()

    def ready(url: str) -> None:
        click.echo(f"rerank serve: listening on {url} ({_shown(db_path)}; "
                   f"{'API key required' if api_key else 'no API key'}; query embeddings "
                   f"{'batched' if not no_batching else 'one by one'} on {threads} torch "
                   f"thread{'s' if threads > 1 else ''}); Ctrl-C stops", err=True)

    click.echo("rerank serve: loading the embedding model…", err=True)
    run(db_path, host, port, api_key=api_key, batching=not no_batching, torch_threads=threads,
        access_log=access_log, ready=ready)
