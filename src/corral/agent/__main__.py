"""`python -m corral.agent`: the same as `corral agent`, without the rest of the CLI.

Tests start agents this way (tests/support/agents.py).
"""

import sys

import typer

from corral.agent.command import agent
from corral.exits import CliError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(agent)


def run() -> None:
    try:
        app()
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(exc.code)


if __name__ == "__main__":
    run()
