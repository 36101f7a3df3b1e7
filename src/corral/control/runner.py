"""The runner interface: how a stack's services run, whichever the mode. The stack service
(control/stacks.py) picks one by the file's mode and calls only these methods.

Two implementations: control/container_stacks.py (containers corral places, creates, starts
and restarts itself) and control/swarm_stacks.py (a swarm service per compose service).
"""

from typing import Protocol

from corral.model.stack_spec import StackSpec
from corral.model.views import HostView
from corral.store.stacks import SlotState, StoredStack


class StackRunner(Protocol):
    async def check(self, name: str, spec: StackSpec, hosts: list[HostView]) -> list[str]:
        """Problems the hosts as they are give the stack (before it is applied), each
        naming its line where it has one."""
        ...

    async def converge(
        self, name: str, stored: StoredStack, spec: StackSpec
    ) -> tuple[list[SlotState], bool]:
        """One pass: make the hosts run the stack; its slots, and whether something is still
        moving (the stack service then looks again soon)."""
        ...

    async def check_can_leave(self, name: str) -> None:
        """Raise (Unreachable) when what this mode made for the stack cannot be removed now,
        before a file of another mode replaces it."""
        ...

    async def release(self, name: str) -> int:
        """Remove what this mode made beyond the labelled containers and networks (which the
        stack service removes for every mode); how many running containers that ended."""
        ...
