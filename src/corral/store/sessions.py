"""Stored templates and sessions, with each session's containers and kept history.

Used by the session service (the only writer of session states) and the routes; a
session's writes are leader-only (each proves the leadership term).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from corral.errors import Conflict, NotFound
from corral.model.views import (
    ACTIVE_STATES,
    Endpoint,
    SessionContainerView,
    SessionState,
    SessionView,
)
from corral.store.database import Database
from corral.store.tables import SessionContainerRow, SessionRow, TemplateRow, utcnow

# Forward-only: the states each state may move to.
TRANSITIONS: dict[str, set[str]] = {
    "pending": {"starting", "failed", "expired", "cancelled"},
    "starting": {"running", "failed", "expired", "cancelled"},
    "running": {"completed", "failed", "expired", "cancelled"},
}


@dataclass(frozen=True)
class StoredTemplate:
    name: str
    file: str
    base_dir: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StoredSession:
    id: str
    template: str
    file: str
    base_dir: str
    params: dict[str, Any]
    host: str
    network: str
    state: str
    cpus: float
    memory: int
    ttl_s: float
    created_at: datetime
    ended_at: datetime | None
    expires_at: datetime | None
    cleaned_at: datetime | None


def _stored(row: SessionRow) -> StoredSession:
    return StoredSession(
        row.id,
        row.template,
        row.file,
        row.base_dir,
        dict(row.params),
        row.host,
        row.network,
        row.state,
        row.cpus,
        row.memory,
        row.ttl_s,
        row.created_at,
        row.ended_at,
        row.expires_at,
        row.cleaned_at,
    )


class TemplateStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, name: str, file: str, base_dir: str) -> str:
        """Create or replace; returns created, updated or unchanged."""
        async with self.db.session() as s:
            row = await s.scalar(select(TemplateRow).where(TemplateRow.name == name))
            if row is None:
                s.add(TemplateRow(name=name, file=file, base_dir=base_dir))
                try:
                    await s.flush()
                except IntegrityError:
                    raise Conflict(f"template {name!r} is being added concurrently") from None
                return "created"
            if (row.file, row.base_dir) == (file, base_dir):
                return "unchanged"
            row.file, row.base_dir, row.updated_at = file, base_dir, utcnow()
            return "updated"

    async def get(self, name: str) -> StoredTemplate:
        async with self.db.session() as s:
            row = await s.scalar(select(TemplateRow).where(TemplateRow.name == name))
            if row is None:
                raise NotFound(f"template {name!r} not found", {"template": name})
            return StoredTemplate(row.name, row.file, row.base_dir, row.created_at, row.updated_at)

    async def list(self) -> list[StoredTemplate]:
        async with self.db.session() as s:
            rows = (await s.scalars(select(TemplateRow).order_by(TemplateRow.name))).all()
            return [
                StoredTemplate(r.name, r.file, r.base_dir, r.created_at, r.updated_at) for r in rows
            ]

    async def remove(self, name: str) -> None:
        async with self.db.session() as s:
            row = await s.scalar(select(TemplateRow).where(TemplateRow.name == name))
            if row is None:
                raise NotFound(f"template {name!r} not found", {"template": name})
            await s.delete(row)


class SessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(
        self,
        *,
        id: str,
        template: str,
        file: str,
        base_dir: str,
        params: dict[str, Any],
        host: str,
        network: str,
        cpus: float,
        memory: int,
        ttl_s: float,
        reason: str,
        services: dict[str, str],
        expires_at: datetime,
    ) -> None:
        """A new pending session with a row per container (service -> container name)."""
        async with self.db.fenced() as s:
            s.add(
                SessionRow(
                    id=id,
                    template=template,
                    file=file,
                    base_dir=base_dir,
                    params=params,
                    host=host,
                    network=network,
                    state="pending",
                    reason=reason,
                    cpus=cpus,
                    memory=memory,
                    ttl_s=ttl_s,
                    endpoints=[],
                    expires_at=expires_at,
                )
            )
            for service, name in sorted(services.items()):
                s.add(SessionContainerRow(session_id=id, service=service, name=name, logs=""))

    async def get(self, id: str) -> StoredSession:
        async with self.db.session() as s:
            row = await s.get(SessionRow, id)
            if row is None:
                raise NotFound(f"session {id!r} not found", {"session": id})
            return _stored(row)

    async def view(self, id: str) -> SessionView:
        views = await self.views([id])
        if not views:
            raise NotFound(f"session {id!r} not found", {"session": id})
        return views[0]

    async def views(
        self,
        ids: Iterable[str] | None = None,
        states: Iterable[str] | None = None,
        template: str | None = None,
        limit: int | None = 200,
    ) -> list[SessionView]:
        async with self.db.session() as s:
            query = select(SessionRow)
            if ids is not None:
                query = query.where(SessionRow.id.in_(list(ids)))
            if states is not None:
                query = query.where(SessionRow.state.in_(list(states)))
            if template is not None:
                query = query.where(SessionRow.template == template)
            query = query.order_by(SessionRow.created_at.desc(), SessionRow.id).limit(limit)
            rows = (await s.scalars(query)).all()
            found = [r.id for r in rows]
            containers = (
                await s.scalars(
                    select(SessionContainerRow)
                    .where(SessionContainerRow.session_id.in_(found))
                    .order_by(SessionContainerRow.service)
                )
            ).all()
        by_session: dict[str, list[SessionContainerView]] = {}
        for c in containers:
            by_session.setdefault(c.session_id, []).append(
                SessionContainerView(
                    service=c.service,
                    name=c.name,
                    container_id=c.container_id,
                    state=c.state,
                    exit_code=c.exit_code,
                    started_at=c.started_at,
                    finished_at=c.finished_at,
                )
            )
        return [
            SessionView(
                id=r.id,
                template=r.template,
                params=dict(r.params),
                host=r.host,
                network=r.network,
                state=_state(r.state),
                reason=r.reason,
                cpus=r.cpus,
                memory=r.memory,
                endpoints=[Endpoint.model_validate(e) for e in r.endpoints],
                containers=by_session.get(r.id, []),
                created_at=r.created_at,
                started_at=r.started_at,
                running_at=r.running_at,
                ended_at=r.ended_at,
                expires_at=r.expires_at,
                cleaned_at=r.cleaned_at,
            )
            for r in rows
        ]

    async def unfinished(self) -> list[StoredSession]:
        """Sessions not yet cleaned (active, or ended with things left to remove)."""
        async with self.db.session() as s:
            query = select(SessionRow).where(SessionRow.cleaned_at.is_(None))
            rows = (await s.scalars(query.order_by(SessionRow.created_at, SessionRow.id))).all()
            return [_stored(r) for r in rows]

    async def cleaned(self, ids: set[str]) -> set[str]:
        """Which of these sessions are cleaned (known here and done)."""
        if not ids:
            return set()
        async with self.db.session() as s:
            query = select(SessionRow.id).where(
                SessionRow.id.in_(sorted(ids)), SessionRow.cleaned_at.is_not(None)
            )
            return set((await s.scalars(query)).all())

    async def reserved(self) -> dict[str, tuple[float, int, int]]:
        """Per host: CPUs, bytes and session count held by placed, active sessions."""
        out: dict[str, tuple[float, int, int]] = {}
        async with self.db.session() as s:
            query = select(SessionRow.host, SessionRow.cpus, SessionRow.memory).where(
                SessionRow.state.in_(ACTIVE_STATES), SessionRow.host != ""
            )
            for host, cpus, memory in (await s.execute(query)).all():
                held = out.get(host, (0.0, 0, 0))
                out[host] = (held[0] + cpus, held[1] + memory, held[2] + 1)
        return out

    async def transition(self, id: str, state: str, reason: str = "") -> bool:
        """Move forward to `state`; False (and nothing written) when that is not a step
        forward from where the session is. One conditional UPDATE: of two racing moves
        (say, expiry and a cancel) exactly one wins, on every backend."""
        now = utcnow()
        values: dict[str, Any] = {"state": state, "reason": reason}
        if state == "starting":
            values["started_at"] = now
        elif state == "running":
            values["running_at"] = now
        elif state not in ACTIVE_STATES:
            values["ended_at"] = now
        sources = sorted(s for s, targets in TRANSITIONS.items() if state in targets)
        async with self.db.fenced() as s:
            done = await s.execute(
                update(SessionRow)
                .where(SessionRow.id == id, SessionRow.state.in_(sources))
                .values(**values)
            )
            if getattr(done, "rowcount", 0) == 1:
                return True
            if await s.get(SessionRow, id) is None:
                raise NotFound(f"session {id!r} not found", {"session": id})
            return False

    async def running(
        self, id: str, started: dict[str, tuple[str, datetime]], endpoints: list[dict[str, Any]]
    ) -> bool:
        """A start's end in one transaction: starting -> running with its endpoints, and
        each container's id and start time (service -> (id, when)); False (and nothing
        written) when the session is no longer starting."""
        async with self.db.fenced() as s:
            done = await s.execute(
                update(SessionRow)
                .where(SessionRow.id == id, SessionRow.state == "starting")
                .values(state="running", reason="", running_at=utcnow(), endpoints=endpoints)
            )
            if getattr(done, "rowcount", 0) != 1:
                return False
            for service, (container_id, when) in started.items():
                await s.execute(
                    update(SessionContainerRow)
                    .where(
                        SessionContainerRow.session_id == id,
                        SessionContainerRow.service == service,
                    )
                    .values(container_id=container_id, state="running", started_at=when)
                )
            return True

    async def update(self, id: str, **values: Any) -> None:
        """Set fields that are not the state (host, endpoints, reason, cleaned_at)."""
        async with self.db.fenced() as s:
            row = await s.get(SessionRow, id, with_for_update=True)
            if row is None:
                raise NotFound(f"session {id!r} not found", {"session": id})
            for key, value in values.items():
                setattr(row, key, value)

    async def mark_cleaned(self, id: str, when: datetime) -> None:
        """Record the clean-up in one transaction: the session's cleaned_at and each
        container it still counted on the engine as removed (a reader never sees one
        without the other)."""
        async with self.db.fenced() as s:
            row = await s.get(SessionRow, id, with_for_update=True)
            if row is None:
                raise NotFound(f"session {id!r} not found", {"session": id})
            row.cleaned_at = when
            await s.execute(
                update(SessionContainerRow)
                .where(
                    SessionContainerRow.session_id == id,
                    SessionContainerRow.state.in_(("created", "running", "exited")),
                )
                .values(state="removed")
            )

    async def set_container(self, id: str, service: str, **values: Any) -> None:
        async with self.db.fenced() as s:
            row = await s.scalar(
                select(SessionContainerRow).where(
                    SessionContainerRow.session_id == id, SessionContainerRow.service == service
                )
            )
            if row is not None:
                for key, value in values.items():
                    setattr(row, key, value)

    async def containers(self, id: str) -> list[SessionContainerRow]:
        async with self.db.session() as s:
            query = select(SessionContainerRow).where(SessionContainerRow.session_id == id)
            rows = (await s.scalars(query.order_by(SessionContainerRow.service))).all()
            s.expunge_all()
            return list(rows)


def _state(value: str) -> SessionState:
    states: dict[str, SessionState] = {
        "pending": "pending",
        "starting": "starting",
        "running": "running",
        "completed": "completed",
        "failed": "failed",
        "expired": "expired",
        "cancelled": "cancelled",
    }
    return states.get(value, "failed")
