"""What every `flask kameng ...` command module shares (app.cli and the sub-CLIs it registers, which never import
it back): the one way of refusing."""
from __future__ import annotations

import sys

import click


def fail(message: str, code: int = 2) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)
