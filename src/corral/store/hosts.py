"""Stored hosts: the desired spec plus the last observation of each engine.

Used by the host service in control/; rows never leave this module, views do.
"""

from dataclasses import asdict

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.errors import Conflict, Invalid, NotFound
from corral.model.hosts import EngineFacts, HostSpec, Probe
from corral.model.views import HostView
from corral.store.database import Database
from corral.store.tables import HostRow, HostTombstoneRow, utcnow


def _view(row: HostRow) -> HostView:
    return HostView(
        name=row.name,
        url=row.url,
        labels=row.labels,
        tls=row.tls,
        insecure=row.insecure,
        ssh=row.ssh,
        reachable=row.reachable,
        state_since=row.state_since,
        last_checked=row.last_checked,
        last_error=row.last_error,
        facts=EngineFacts(**row.facts) if row.facts else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _new_row(spec: HostSpec) -> HostRow:
    tls = spec.tls.model_dump() if spec.tls else None
    return HostRow(
        name=spec.name,
        url=spec.url,
        labels=dict(spec.labels),
        tls=tls,
        insecure=spec.insecure,
        ssh=spec.ssh.model_dump() if spec.ssh else None,
        last_error="",
    )


def spec_of(view: HostView) -> HostSpec:
    return HostSpec(
        name=view.name,
        url=view.url,
        labels=view.labels,
        tls=view.tls,
        ssh=view.ssh,
        insecure=view.insecure,
    )


async def _unbury(s: AsyncSession, name: str) -> None:
    await s.execute(delete(HostTombstoneRow).where(HostTombstoneRow.name == name))


class HostStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self) -> list[HostView]:
        async with self.db.session() as s:
            rows = (await s.scalars(select(HostRow).order_by(HostRow.name))).all()
            return [_view(r) for r in rows]

    async def get(self, name: str) -> HostView:
        async with self.db.session() as s:
            row = await s.scalar(select(HostRow).where(HostRow.name == name))
            if row is None:
                raise NotFound(f"host {name!r} not found", {"host": name})
            return _view(row)

    async def add(self, spec: HostSpec) -> HostView:
        """A new host (Conflict if the name is taken); a removal remembered of its name is
        forgotten with it."""
        try:
            async with self.db.session() as s:
                await _unbury(s, spec.name)
                row = _new_row(spec)
                s.add(row)
                await s.flush()
                return _view(row)
        except IntegrityError:
            raise Conflict(f"host {spec.name!r} already exists", {"host": spec.name}) from None

    async def put(self, spec: HostSpec) -> tuple[HostView, str]:
        """Create or update; returns the view and `created`, `updated` or `unchanged`. A
        removal remembered of the name is forgotten."""
        async with self.db.session() as s:
            await _unbury(s, spec.name)
            row = await s.scalar(select(HostRow).where(HostRow.name == spec.name))
            tls = spec.tls.model_dump() if spec.tls else None
            ssh = spec.ssh.model_dump() if spec.ssh else None
            if row is None:
                row = _new_row(spec)
                s.add(row)
                await s.flush()
                return _view(row), "created"
            same = (row.url, row.labels, row.tls, row.insecure, row.ssh)
            if same == (spec.url, spec.labels, tls, spec.insecure, ssh):
                return _view(row), "unchanged"
            if row.url != spec.url or row.tls != tls or row.ssh != ssh:
                row.reachable, row.state_since, row.facts, row.last_error = None, None, None, ""
            row.url, row.labels, row.tls, row.insecure, row.ssh, row.updated_at = (
                spec.url,
                dict(spec.labels),
                tls,
                spec.insecure,
                ssh,
                utcnow(),
            )
            await s.flush()
            return _view(row), "updated"

    async def remove(self, name: str, remember: bool = False) -> None:
        """Forget the host; `remember`: also note that the user removed it, so that corral
        does not add it back by itself (see `buried`)."""
        async with self.db.session() as s:
            result = await s.execute(delete(HostRow).where(HostRow.name == name))
            if getattr(result, "rowcount", 0) == 0:
                raise NotFound(f"host {name!r} not found", {"host": name})
            if remember and await s.get(HostTombstoneRow, name) is None:
                s.add(HostTombstoneRow(name=name))

    async def set_labels(
        self, name: str, changes: dict[str, str | None], most: int
    ) -> tuple[HostView, bool]:
        """Set labels (None removes one); the URL and TLS stay as they are. Returns the view
        and whether the labels changed; Invalid (nothing changed) beyond `most` labels."""
        async with self.db.session() as s:
            row = await s.scalar(select(HostRow).where(HostRow.name == name))
            if row is None:
                raise NotFound(f"host {name!r} not found", {"host": name})
            labels = dict(row.labels)
            for key, value in changes.items():
                if value is None:
                    labels.pop(key, None)
                else:
                    labels[key] = value
            if len(labels) > most:
                raise Invalid(f"host {name} would have {len(labels)} labels; at most {most}")
            changed = labels != row.labels
            if changed:
                row.labels, row.updated_at = labels, utcnow()
                await s.flush()
            return _view(row), changed

    async def buried(self, name: str) -> bool:
        """Whether the user removed this host (and did not add it again)."""
        async with self.db.session() as s:
            return await s.get(HostTombstoneRow, name) is not None

    async def record_probe(self, name: str, url: str, probe: Probe) -> tuple[HostView, bool]:
        """Store a check's outcome; returns the view and whether reachability changed.

        Ignored (NotFound) when the host was removed or re-pointed while it was checked.
        """
        async with self.db.session() as s:
            row = await s.scalar(select(HostRow).where(HostRow.name == name))
            if row is None or row.url != url:
                raise NotFound(f"host {name!r} changed while it was checked", {"host": name})
            changed = row.reachable is not probe.reachable
            if changed:
                row.state_since = probe.checked_at
            row.reachable = probe.reachable
            row.last_checked = probe.checked_at
            row.last_error = probe.error
            if probe.facts is not None:
                row.facts = asdict(probe.facts)
            await s.flush()
            return _view(row), changed
