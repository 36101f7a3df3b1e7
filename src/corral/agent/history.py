"""The agent's request history: one entry per function call, the newest 1000 kept.

The server creates entries when a call arrives and settles them when it ends.
"""

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

KEEP = 1000


@dataclass
class Entry:
    """A call and its outcome, in the supervisor protocol's field names."""

    request_id: str
    deployment_id: str
    module_name: str
    function_name: str
    method: str
    request_args: dict[str, str]
    request_files: list[str] = field(default_factory=list)
    work_queued_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    result: Any = None
    success: bool = False
    done: bool = False  # not sent: whether the call has ended

    def view(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("done")
        return data

    @property
    def status_code(self) -> int:
        """200 when it succeeded, 202 while queued or running, 500 when it failed."""
        if not self.done:
            return 202
        return 200 if self.success else 500


class History:
    """Entries by id, oldest first; ids count per agent from 0."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._count = 0

    def new(
        self, deployment: str, module: str, function: str, method: str, args: dict[str, str]
    ) -> Entry:
        request_id = f"{deployment}:{module}:{function}:{self._count}"
        self._count += 1
        entry = Entry(request_id, deployment, module, function, method, args)
        self._entries[request_id] = entry
        while len(self._entries) > self.keep:
            self._entries.popitem(last=False)
        return entry

    def get(self, request_id: str) -> Entry | None:
        return self._entries.get(request_id)

    def all(self) -> list[Entry]:
        return list(self._entries.values())

    @staticmethod
    def succeed(entry: Entry, result: Any) -> None:
        entry.result, entry.success, entry.done = result, True, True

    @staticmethod
    def fail(entry: Entry, message: str) -> None:
        entry.result, entry.success, entry.done = message, False, True
