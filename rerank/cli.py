"""The ``rerank`` command line."""
from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table


@click.group()
@click.version_option(package_name="rerank")
def main():
    """rerank: attention kernels and rerank scorers for retrieval."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def status(as_json):
    """Which backend runs (compiled or numpy), why, and with how many threads."""
    from . import backend

    info = backend.status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    table = Table(title="rerank status", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key in ("backend", "requested", "compiled", "extension_built", "reason", "threads",
                "openmp", "native"):
        table.add_row(key, "" if info[key] is None else str(info[key]))
    for lib in info["blas"]:
        table.add_row("blas", f"{lib['internal_api']} {lib['version']} ({lib['architecture']}, "
                              f"{lib['num_threads']} threads) {lib['filepath']}")
    Console().print(table)
