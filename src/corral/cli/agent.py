"""`corral agent`: the command lives with the agent (`corral.agent.command`), so that
`python -m corral.agent` runs it without the rest of the CLI; listed here for `cli/main.py`.
"""

from corral.agent.command import agent

__all__ = ["agent"]
