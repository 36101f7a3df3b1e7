"""Stored stacks (the applied file, its variables, services stopped on purpose) and their
slots (one row per replica: placement and the last observation).

Used by the stack reconciler and the stack routes; writes are leader-only (each proves the
leadership term).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from corral.errors import Conflict, NotFound
from corral.model.containers import container_name
from corral.model.views import SlotView, StackView
from corral.store.database import Database
from corral.store.tables import LeftoverRow, SlotRow, StackRow, utcnow


@dataclass(frozen=True)
class StoredStack:
    name: str
    file: str
    env: dict[str, str]
    base_dir: str
    stopped: frozenset[str]
    created_at: datetime
    updated_at: datetime
    mode: str = ""  # given at apply, over the file's x-corral mode; "": the file decides


@dataclass(frozen=True)
class SlotState:
    """What the reconciler writes for one replica after a pass."""

    service: str
    replica: int
    host: str
    container_id: str
    state: str
    health: str = ""
    reason: str = ""
    exit_code: int = 0


def _stored(row: StackRow) -> StoredStack:
    return StoredStack(
        row.name,
        row.file,
        dict(row.env),
        row.base_dir,
        frozenset(row.stopped),
        row.created_at,
        row.updated_at,
        row.mode,
    )


def _slot_view(stack: str, row: SlotRow) -> SlotView:
    return SlotView(
        service=row.service,
        replica=row.replica,
        host=row.host,
        container_id=row.container_id,
        container=container_name(stack, row.service, row.replica),
        state=row.state,
        health=row.health,
        reason=row.reason,
        exit_code=row.exit_code,
        updated_at=row.updated_at,
    )


def summarize(stack: StoredStack, services: list[str], slots: list[SlotView]) -> StackView:
    running = [s for s in slots if s.state == "running"]
    if not slots:
        state = "empty"
    elif len(running) == len(slots):
        state = "running"
    elif all(s.state == "pending" for s in slots):
        state = "pending"
    elif not running and all(s.service in stack.stopped for s in slots):
        state = "stopped"
    else:
        state = "partial"
    return StackView(
        name=stack.name,
        services=services,
        stopped_services=sorted(stack.stopped),
        slots=slots,
        state=state,
        created_at=stack.created_at,
        updated_at=stack.updated_at,
    )


class StackStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(
        self, name: str, file: str, env: dict[str, str], base_dir: str, mode: str = ""
    ) -> str:
        """Create or replace a stack's file; returns created, updated or unchanged."""
        async with self.db.fenced() as s:
            row = await s.scalar(select(StackRow).where(StackRow.name == name))
            if row is None:
                s.add(
                    StackRow(
                        name=name, file=file, env=env, base_dir=base_dir, stopped=[], mode=mode
                    )
                )
                try:
                    await s.flush()
                except IntegrityError:
                    raise Conflict(f"stack {name!r} is being created concurrently") from None
                return "created"
            if (row.file, row.env, row.base_dir, row.mode) == (file, env, base_dir, mode):
                return "unchanged"
            row.file, row.env, row.base_dir, row.mode = file, env, base_dir, mode
            row.updated_at = utcnow()
            return "updated"

    async def get(self, name: str) -> StoredStack:
        async with self.db.session() as s:
            row = await s.scalar(select(StackRow).where(StackRow.name == name))
            if row is None:
                raise NotFound(f"stack {name!r} not found", {"stack": name})
            return _stored(row)

    async def names(self) -> list[str]:
        async with self.db.session() as s:
            return list((await s.scalars(select(StackRow.name).order_by(StackRow.name))).all())

    async def remove(self, name: str, leftovers: dict[str, str] | None = None) -> None:
        """Forget the stack; `leftovers` (host -> why) records the hosts whose containers
        and networks of it are still to be removed."""
        async with self.db.fenced() as s:
            await s.execute(delete(SlotRow).where(SlotRow.stack == name))
            result = await s.execute(delete(StackRow).where(StackRow.name == name))
            if getattr(result, "rowcount", 0) == 0:
                raise NotFound(f"stack {name!r} not found", {"stack": name})
            for host, reason in (leftovers or {}).items():
                await s.merge(LeftoverRow(stack=name, host=host, reason=reason))

    async def leftovers(self) -> list[tuple[str, str, str, datetime]]:
        """(stack, host, reason, since) of every removal still to do."""
        async with self.db.session() as s:
            rows = (await s.scalars(select(LeftoverRow).order_by(LeftoverRow.since))).all()
            return [(r.stack, r.host, r.reason, r.since) for r in rows]

    async def drop_leftovers(self, stack: str, host: str | None = None) -> None:
        async with self.db.session() as s:
            where = LeftoverRow.stack == stack
            if host is not None:
                where = where & (LeftoverRow.host == host)
            await s.execute(delete(LeftoverRow).where(where))

    async def set_stopped(self, name: str, services: Iterable[str], stopped: bool) -> None:
        async with self.db.fenced() as s:
            row = await s.scalar(select(StackRow).where(StackRow.name == name))
            if row is None:
                raise NotFound(f"stack {name!r} not found", {"stack": name})
            current = set(row.stopped)
            current = current | set(services) if stopped else current - set(services)
            row.stopped = sorted(current)

    async def slots(self, name: str) -> list[SlotView]:
        async with self.db.session() as s:
            query = select(SlotRow).where(SlotRow.stack == name)
            rows = (await s.scalars(query.order_by(SlotRow.service, SlotRow.replica))).all()
            return [_slot_view(name, r) for r in rows]

    async def placements(self, name: str) -> dict[tuple[str, int], str]:
        return {(s.service, s.replica): s.host for s in await self.slots(name) if s.host}

    async def host_loads(self) -> dict[str, int]:
        loads: dict[str, int] = {}
        async with self.db.session() as s:
            for host in (await s.scalars(select(SlotRow.host))).all():
                if host:
                    loads[host] = loads.get(host, 0) + 1
        return loads

    async def save_slots(self, name: str, states: list[SlotState]) -> None:
        """Replace the stack's slots with this pass's view of them."""
        now = utcnow()
        async with self.db.fenced() as s:
            await s.execute(delete(SlotRow).where(SlotRow.stack == name))
            for st in states:
                s.add(
                    SlotRow(
                        stack=name,
                        service=st.service,
                        replica=st.replica,
                        host=st.host,
                        container_id=st.container_id,
                        state=st.state,
                        health=st.health,
                        reason=st.reason,
                        exit_code=st.exit_code,
                        updated_at=now,
                    )
                )
