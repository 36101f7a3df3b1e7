"""Entry point for `python -m corral`.

Runs the same command-line interface as the `corral` console script.
"""

from corral.cli.main import run

run()
