"""The CLI loads one command module per run: its listing must still say what each does.

Checks the help lines `corral --help` shows without loading the modules against the
modules' own, and which sub-command a command line picks.
"""

import typer
import typer.main

from corral.cli.main import COMMANDS, GROUPS, build, command_named


def _listing(app: typer.Typer) -> dict[str, str]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.main.TyperGroup)
    context = typer.Context(group)
    found = {}
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        found[name] = (command.help or "").strip().split("\n\n")[0]
    return found


def test_the_help_lines_are_the_modules_own() -> None:
    loaded, listed = _listing(build("*")), _listing(build())
    assert list(listed) == list(loaded)
    assert listed == loaded
    assert set(GROUPS) | set(COMMANDS) | {"login", "whoami", "status"} == set(loaded)


def test_the_command_to_load_is_the_first_word_that_is_no_global_option() -> None:
    assert command_named(["stack", "ls"]) == "stack"
    assert command_named(["--url", "http://x", "--token", "t", "--json", "up", "-f", "a"]) == "up"
    assert command_named(["--json", "reset-admin-token"]) == "reset-admin-token"
    assert command_named(["--help"]) is None
    assert command_named([]) is None
    assert command_named(["whoami"]) is None  # defined in main itself
    assert command_named(["no-such-command"]) is None
