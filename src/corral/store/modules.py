"""Stored Wasm modules (versions by content hash, data files) and deployments.

The module and deployment services are the writers; a module that a deployment uses
cannot be deleted. Rows are returned detached; deployments read by id or name are kept
in memory until the next write (or `forget`, when another replica wrote).
"""

import hashlib
import re
import secrets
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer

from corral.errors import Conflict, NotFound
from corral.store.database import Database
from corral.store.tables import DeploymentRow, ModuleFileRow, ModuleRow, utcnow

OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


def new_id() -> str:
    return secrets.token_hex(12)


class ModuleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def find(self, name: str, binary: bytes) -> ModuleRow | None:
        """The stored version of module `name` with exactly these bytes, if any."""
        digest = hashlib.sha256(binary).hexdigest()
        async with self.db.session() as s:
            return await s.scalar(
                select(ModuleRow).where(ModuleRow.name == name, ModuleRow.sha256 == digest)
            )

    async def add(
        self,
        name: str,
        binary: bytes,
        exports: list[dict[str, Any]],
        requirements: list[dict[str, str]],
    ) -> tuple[ModuleRow, bool]:
        """A new version, or the existing one with the same content; (row, created)."""
        found = await self.find(name, binary)
        if found is not None:
            return found, False
        digest = hashlib.sha256(binary).hexdigest()
        try:
            async with self.db.session() as s:
                row = ModuleRow(
                    id=new_id(),
                    name=name,
                    sha256=digest,
                    binary=binary,
                    exports=exports,
                    requirements=requirements,
                    functions={},
                    files={},
                    created_at=utcnow(),
                )
                s.add(row)
                await s.flush()
                return row, True
        except IntegrityError:
            async with self.db.session() as s:
                found = await s.scalar(
                    select(ModuleRow).where(ModuleRow.name == name, ModuleRow.sha256 == digest)
                )
                if found is None:
                    raise
                return found, False

    async def get(self, ref: str, binary: bool = True) -> ModuleRow:
        """By id, else by name (its newest version). With `binary=False` the wasm bytes
        are not read (the row's `binary` must not be used then)."""
        load = () if binary else (defer(ModuleRow.binary, raiseload=True),)
        async with self.db.session() as s:
            row = None
            if OBJECT_ID.match(ref):
                row = await s.scalar(select(ModuleRow).where(ModuleRow.id == ref).options(*load))
            if row is None:
                row = await s.scalar(
                    select(ModuleRow)
                    .where(ModuleRow.name == ref)
                    .order_by(ModuleRow.created_at.desc())
                    .limit(1)
                    .options(*load)
                )
            if row is None:
                raise NotFound(f"module {ref!r} not found", {"module": ref})
            return row

    async def every(self) -> list[ModuleRow]:
        async with self.db.session() as s:
            query = select(ModuleRow).order_by(ModuleRow.name, ModuleRow.created_at)
            return list((await s.scalars(query)).all())

    async def set_functions(self, module_id: str, functions: dict[str, dict[str, Any]]) -> None:
        async with self.db.session() as s:
            row = await s.get(ModuleRow, module_id)
            if row is None:
                raise NotFound(f"module {module_id!r} not found", {"module": module_id})
            row.functions = {**row.functions, **functions}

    async def put_file(self, module_id: str, name: str, media_type: str, data: bytes) -> None:
        async with self.db.session() as s:
            row = await s.get(ModuleRow, module_id)
            if row is None:
                raise NotFound(f"module {module_id!r} not found", {"module": module_id})
            file = await s.get(ModuleFileRow, (module_id, name))
            if file is None:
                s.add(
                    ModuleFileRow(module_id=module_id, name=name, media_type=media_type, data=data)
                )
            else:
                file.media_type, file.data = media_type, data
            info = {"mediaType": media_type, "size": len(data)}
            info["sha256"] = hashlib.sha256(data).hexdigest()
            row.files = {**row.files, name: info}

    async def get_file(self, module_id: str, name: str) -> ModuleFileRow:
        async with self.db.session() as s:
            file = await s.get(ModuleFileRow, (module_id, name))
            if file is None:
                raise NotFound(
                    f"module {module_id!r} has no data file {name!r}",
                    {"module": module_id, "file": name},
                )
            return file

    async def delete(self, module_ids: list[str]) -> int:
        """Delete these versions unless a deployment uses one (409 naming it)."""
        async with self.db.session() as s:
            for deployment in (await s.scalars(select(DeploymentRow))).all():
                used = {step["module_id"] for step in deployment.steps} & set(module_ids)
                if used:
                    raise Conflict(
                        f"module {sorted(used)[0]} is used by deployment {deployment.name!r} "
                        f"({deployment.id}); delete the deployment first",
                        {"deployment": deployment.id},
                    )
            await s.execute(delete(ModuleFileRow).where(ModuleFileRow.module_id.in_(module_ids)))
            result = await s.execute(delete(ModuleRow).where(ModuleRow.id.in_(module_ids)))
            return int(getattr(result, "rowcount", 0))


class DeploymentStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._known: dict[str, DeploymentRow] = {}  # by id and by name; callers only read
        self._generation = 0

    def forget(self) -> None:
        """Drop what is kept: a write here or elsewhere may have changed it."""
        self._generation += 1
        self._known.clear()

    async def create(
        self, name: str, sequence: list[dict[str, Any]], steps: list[dict[str, Any]]
    ) -> tuple[DeploymentRow, bool]:
        """A new deployment, or the same-named one when its sequence is the same."""
        async with self.db.session() as s:
            found = await s.scalar(select(DeploymentRow).where(DeploymentRow.name == name))
            if found is not None:
                if found.sequence != sequence:
                    raise Conflict(
                        f"a deployment named {name!r} already exists ({found.id}) with another "
                        "sequence; delete it or choose another name",
                        {"deployment": found.id},
                    )
                return found, False
            now = utcnow()
            row = DeploymentRow(
                id=new_id(),
                name=name,
                sequence=sequence,
                steps=steps,
                parts={},
                responses={},
                state="pending",
                reason="",
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            await s.flush()
        self.forget()
        return row, True

    async def get(self, ref: str) -> DeploymentRow:
        known = self._known.get(ref)
        if known is not None:
            return known
        generation = self._generation
        async with self.db.session() as s:
            row = await s.get(DeploymentRow, ref) if OBJECT_ID.match(ref) else None
            if row is None:
                row = await s.scalar(select(DeploymentRow).where(DeploymentRow.name == ref))
            if row is None:
                raise NotFound(f"deployment {ref!r} not found", {"deployment": ref})
        if generation == self._generation:  # no write ended while it was read
            self._known[row.id] = self._known[row.name] = row
        return row

    async def every(self) -> list[DeploymentRow]:
        async with self.db.session() as s:
            query = select(DeploymentRow).order_by(DeploymentRow.created_at)
            return list((await s.scalars(query)).all())

    async def update(self, deployment_id: str, **values: Any) -> DeploymentRow:
        try:
            async with self.db.session() as s:
                row = await s.get(DeploymentRow, deployment_id)
                if row is None:
                    raise NotFound(f"deployment {deployment_id!r} not found")
                for key, value in values.items():
                    setattr(row, key, value)
                row.updated_at = utcnow()
        finally:
            self.forget()
        return row

    async def delete(self, deployment_id: str | None = None) -> int:
        async with self.db.session() as s:
            query = delete(DeploymentRow)
            if deployment_id is not None:
                query = query.where(DeploymentRow.id == deployment_id)
            result = await s.execute(query)
        self.forget()
        return int(getattr(result, "rowcount", 0))
