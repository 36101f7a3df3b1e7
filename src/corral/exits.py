"""The one error a command prints as a single line and exits with (`CliError`).

Raised by the CLI, by `corral agent` and by the serving machinery they share (serving.py).
"""


class CliError(Exception):
    """A failure to print as one line; `code` is the process exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
