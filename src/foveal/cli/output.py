"""Printing helpers: JSON for agents, tables for people."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Any

import typer


class Format(str, Enum):
    text = "text"
    json = "json"


class JobFormat(str, Enum):
    """Output of a job command: text, the job as JSON, or only its id (for scripts)."""

    text = "text"
    json = "json"
    id = "id"


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def print_table(headers: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """A rich table in a terminal; tab-separated lines when piped (stable for scripts)."""
    if not sys.stdout.isatty():
        if title:
            typer.echo(title)
        typer.echo("\t".join(headers))
        for row in rows:
            typer.echo("\t".join(str(c).replace("\n", " ") for c in row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console().print(table)
