"""The ``rerank`` command line."""
from __future__ import annotations

import json
import os

import click
from rich.console import Console
from rich.table import Table


@click.group()
@click.version_option(package_name="rerank")
def main():
    """rerank: attention kernels and rerank scorers for retrieval."""


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
        from memory_adapter.location import index_path_for, resolve_db
        from memory_adapter.sqlite_store import describe
    except ImportError as exc:  # the memory extra (sqlite-utils) is not installed
        info["store"] = {"error": f"memory_adapter unavailable: {exc}"}
        describe = None
    try:
        path = resolve_db(db) if describe else None
        store = describe(path) if path else None
        if store is not None:
            index = index_path_for(path)
            store["index_path"] = index
            store["index_bytes"] = os.path.getsize(index) if index and os.path.exists(index) else 0
            info["store"] = store
    except ValueError as exc:
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
