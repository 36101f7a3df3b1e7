"""The `corral` command line: `serve` runs the server, every other command calls its API.

Errors are one line on stderr with a non-zero exit, never a traceback.
"""
