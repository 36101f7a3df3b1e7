"""The leadership term: a number taken (incremented in the database) when a replica takes
the lead, and proved by every leader-only write in its own transaction.

A write from a replica whose term is over changes nothing and raises StaleTerm, which also
tells that replica to step down; `confirm` is the same check without the database, made
right before a side effect outside it (an MQTT job, a robot command).
"""

import math
import time
from collections.abc import Callable
from typing import NoReturn

from sqlalchemy import ColumnElement, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from corral.errors import CorralError
from corral.store.tables import LeadershipRow, utcnow


class StaleTerm(CorralError):
    """This replica does not lead (any more): what it was about to do is not done."""

    status = 503
    code = "not_leader"


class LeaderTerm:
    """This process's leadership term, if any, and until when its lock was last confirmed.

    Unfenced (the default) it proves nothing: a process that acts alone (tests, tools, a
    server without background loops). The election fences it at start.
    """

    def __init__(self) -> None:
        self.fenced = False
        self.term: int | None = None
        self.until = 0.0  # monotonic time after which this replica must not act
        self.on_stale: Callable[[str], None] | None = None  # told why, once, when it is over

    async def take(self, s: AsyncSession, replica: str) -> int:
        """The next term, for `replica` (its caller holds the leader's lock). On PostgreSQL
        this waits for the writes that proved the last term (they hold the row shared)."""
        term = await s.scalar(
            update(LeadershipRow)
            .where(LeadershipRow.id == 1)
            .values(term=LeadershipRow.term + 1, holder=replica, since=utcnow())
            .returning(LeadershipRow.term)
        )
        if term is None:  # the migration adds the row; a database emptied by hand has none
            s.add(LeadershipRow(id=1, term=1, holder=replica, since=utcnow()))
            term = 1
        return int(term)

    def hold(self, term: int, until: float = math.inf) -> None:
        self.fenced, self.term, self.until = True, term, until

    def extend(self, until: float) -> None:
        """The lock was confirmed: act until `until` (monotonic) at most."""
        if self.term is not None:
            self.until = max(self.until, until)

    def drop(self) -> None:
        """Stop acting now: every later proof fails without asking the database."""
        self.term, self.until = None, 0.0

    def confirm(self) -> int:
        """The term, if this replica may still act (no database round trip)."""
        if not self.fenced:
            return 0
        if self.term is None:
            raise StaleTerm("this replica does not lead")
        if time.monotonic() >= self.until:
            self._over(f"term {self.term} lapsed: its lock was not confirmed in time")
        return self.term

    async def prove(self, s: AsyncSession | AsyncConnection) -> None:
        """Fail this transaction unless this replica's term is the current one. On
        PostgreSQL the term's row is read FOR SHARE, so the next term cannot be taken
        until this transaction ends: a proved write is always before the next term."""
        if not self.fenced:
            return
        term = self.confirm()
        current = await s.scalar(
            select(LeadershipRow.term).where(LeadershipRow.id == 1).with_for_update(read=True)
        )
        self.proved(current, term)

    def proved(self, current: int | None, term: int) -> None:
        """`term` was this replica's when the term's row read `current` (FOR SHARE, in the
        transaction about to write): StaleTerm, and a step down, unless they are one."""
        if current != term:
            self._over(f"term {term} is over: term {current} leads")

    def holds(self) -> ColumnElement[bool]:
        """`prove` inside one statement that is its own transaction: a condition true while
        this replica's term is the current one, the term's row read FOR SHARE (so the next
        term waits for the statement). A statement it stops writes nothing."""
        if not self.fenced:
            return true()
        term = self.confirm()
        current = (
            select(LeadershipRow.term)
            .where(LeadershipRow.id == 1)
            .with_for_update(read=True)
            .scalar_subquery()
        )
        return current == term

    def failed(self) -> NoReturn:
        """A statement that `holds()` fenced, and that must write, wrote nothing: the term is
        over (StaleTerm, and this replica steps down)."""
        self._over(f"term {self.term} is over: another term leads")

    def _over(self, why: str) -> NoReturn:
        self.drop()
        if self.on_stale is not None:
            self.on_stale(why)
        raise StaleTerm(f"this replica no longer leads ({why})")
