"""The state every CLI command shares: the API client and the output mode.

Set by the global options in cli/main.py, read by each command through `state(ctx)`.
"""

from dataclasses import dataclass

import typer

from corral.cli.client import Api


@dataclass
class CliState:
    url: str | None
    token: str | None
    json: bool

    def api(self) -> Api:
        return Api.from_options(self.url, self.token)


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    found: CliState = root.obj
    return found
