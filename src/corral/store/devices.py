"""Stored Wasm devices: address, description, health counters, status log, blacklist.

Written by the device service (discovery, registration, health checks); read by the
deployment service for placement and by the routes. Rows are returned detached.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select

from corral.errors import NotFound
from corral.store.database import Database
from corral.store.tables import DeviceRow, utcnow

LOG_KEEP = 50


def _log(row: DeviceRow, status: str, when: datetime) -> None:
    row.status_log = [*row.status_log, {"status": status, "time": when.isoformat()}][-LOG_KEEP:]


class DeviceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def upsert(
        self,
        name: str,
        addresses: list[str],
        port: int,
        source: str,
        path: str = "/",
        tls: bool = False,
    ) -> tuple[DeviceRow, str | None]:
        """Add the device or refresh its address; (row, its status before, None when new).
        A known device that was gone or inactive is given a fresh chance (counters reset)."""
        now = utcnow()
        async with self.db.session() as s:
            row = await s.get(DeviceRow, name)
            before = row.status if row is not None else None
            if row is None:
                row = DeviceRow(
                    name=name,
                    addresses=addresses,
                    port=port,
                    path=path,
                    tls=tls,
                    source=source,
                    status="active",
                    blacklisted=False,
                    ok_checks=0,
                    failed_checks=0,
                    status_log=[],
                    last_error="",
                    created_at=now,
                )
                _log(row, "active", now)
                s.add(row)
            else:
                row.addresses, row.port, row.path, row.tls = addresses, port, path, tls
                row.source = source
                if row.status != "active":
                    row.status, row.failed_checks = "active", 0
                    _log(row, "active", now)
            row.updated_at = now
            await s.flush()
            return row, before

    async def get(self, name: str) -> DeviceRow:
        async with self.db.session() as s:
            row = await s.get(DeviceRow, name)
            if row is None:
                raise NotFound(f"device {name!r} not found", {"device": name})
            return row

    async def every(self) -> list[DeviceRow]:
        async with self.db.session() as s:
            return list((await s.scalars(select(DeviceRow).order_by(DeviceRow.name))).all())

    async def set_description(self, name: str, description: dict[str, Any]) -> None:
        async with self.db.session() as s:
            row = await s.get(DeviceRow, name)
            if row is not None:
                row.description, row.updated_at = description, utcnow()

    async def checked(
        self, name: str, report: dict[str, Any] | None, error: str, inactive_after: int
    ) -> tuple[str, str] | None:
        """Record one health check; (old, new) status when it changed."""
        now = utcnow()
        async with self.db.session() as s:
            row = await s.get(DeviceRow, name)
            if row is None or row.status == "gone":
                return None
            old = row.status
            if report is not None:
                row.ok_checks += 1
                row.failed_checks = 0
                row.health = {"report": report, "timeOfQuery": now.isoformat()}
                row.last_error = ""
                row.status = "active"
            else:
                row.failed_checks += 1
                row.last_error = error
                if row.failed_checks >= inactive_after:
                    row.status = "inactive"
            if row.status != old:
                _log(row, row.status, now)
                row.updated_at = now
                return old, row.status
            return None

    async def set_status(self, name: str, status: str) -> bool:
        """Force a status (an mDNS goodbye: gone); False when it already held."""
        now = utcnow()
        async with self.db.session() as s:
            row = await s.get(DeviceRow, name)
            if row is None:
                raise NotFound(f"device {name!r} not found", {"device": name})
            if row.status == status:
                return False
            row.status, row.updated_at = status, now
            _log(row, status, now)
            return True

    async def set_blacklisted(self, name: str, value: bool) -> DeviceRow:
        async with self.db.session() as s:
            row = await s.get(DeviceRow, name)
            if row is None:
                raise NotFound(f"device {name!r} not found", {"device": name})
            row.blacklisted, row.updated_at = value, utcnow()
            return row

    async def remove(self, name: str | None = None) -> int:
        async with self.db.session() as s:
            query = delete(DeviceRow)
            if name is not None:
                query = query.where(DeviceRow.name == name)
            result = await s.execute(query)
            return int(getattr(result, "rowcount", 0))
