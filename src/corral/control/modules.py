"""The Wasm package manager: upload a module (validated by wasmtime, versioned by content
hash), describe its functions, attach data files, delete it when nothing uses it.

Called by the Wasm-IoT routes, the CLI through them, and the init/ folder import.
"""

import asyncio
from typing import Any

from corral.errors import Invalid
from corral.events import EventBus
from corral.model.manifests import default_description
from corral.model.views import ModuleView
from corral.model.wasm_modules import check_function, check_wasm_name, inspect_wasm, openapi
from corral.store.modules import ModuleStore
from corral.store.tables import ModuleRow

MAX_FILE_NAME = 255
RESERVED = ("wasm", "description", "upload")


def functions_of(row: ModuleRow | ModuleView) -> dict[str, dict[str, Any]]:
    """Every exported function's description: the one given, else the default."""
    out = {e["name"]: default_description(e) for e in row.exports}
    out.update(row.functions)
    return out


def _view(row: ModuleRow) -> ModuleView:
    """The row without its bytes: their count instead."""
    same = {name: getattr(row, name) for name in ModuleView.model_fields if name != "size"}
    return ModuleView(**same, size=len(row.binary))


class ModuleService:
    def __init__(self, store: ModuleStore, bus: EventBus) -> None:
        self.store = store
        self.bus = bus

    async def views(self) -> list[ModuleView]:
        return [_view(row) for row in await self.store.every()]

    async def view(self, ref: str) -> ModuleView:
        """By id, else by name (its newest version)."""
        return _view(await self.store.get(ref))

    async def wasm(self, ref: str) -> tuple[ModuleView, bytes]:
        """The module and its bytes, in one read."""
        row = await self.store.get(ref)
        return _view(row), row.binary

    async def file(self, module_id: str, name: str) -> tuple[str, bytes]:
        """A data file of the module: (media type, bytes)."""
        stored = await self.store.get_file(module_id, name)
        return stored.media_type, stored.data

    async def upload(self, name: str, filename: str, data: bytes) -> tuple[ModuleView, bool]:
        check_wasm_name(name, "module")
        if not data:
            raise Invalid("the module file is empty", {"field": "module"})
        known = await self.store.find(name, data)
        if known is not None:  # the same bytes passed wasmtime when they were first stored
            return _view(known), False
        # Compiling can take a while for a large module: not on the event loop.
        inspected = await asyncio.to_thread(inspect_wasm, data, filename or "module")
        row, created = await self.store.add(name, data, inspected.exports, inspected.requirements)
        if created:
            exports = ", ".join(e["name"] for e in row.exports) or "nothing"
            await self.bus.emit(
                "module.uploaded",
                f"module/{row.id}",
                f"module {name} uploaded ({len(data)} bytes, exports {exports})",
                {"name": name, "sha256": row.sha256, "requirements": row.requirements},
            )
        return _view(row), created

    async def describe(
        self,
        ref: str,
        functions: dict[str, Any],
        files: dict[str, tuple[str, bytes]],
    ) -> dict[str, Any]:
        """Attach data files, then validate and record function descriptions."""
        row = await self.store.get(ref)
        if not isinstance(functions, dict):
            raise Invalid("functions must be an object {func: {method, parameters, ...}}")
        for name in files:
            if not name or len(name) > MAX_FILE_NAME or "/" in name or name in RESERVED:
                raise Invalid(f"data file name {name!r} is not allowed", {"field": "files"})
        known = set(row.files) | set(files)
        checked = {
            func: check_function(func, body, row.exports, known) for func, body in functions.items()
        }
        for name, (media_type, data) in files.items():
            await self.store.put_file(row.id, name, media_type, data)
        if checked:
            await self.store.set_functions(row.id, checked)
        row = await self.store.get(row.id)
        await self.bus.emit(
            "module.described",
            f"module/{row.id}",
            f"module {row.name}: {len(checked)} function(s) described, {len(files)} file(s) added",
            {"functions": sorted(checked), "files": sorted(files)},
        )
        return openapi(row.name, functions_of(row))

    async def delete(self, ref: str) -> int:
        row = await self.store.get(ref)
        versions = [m.id for m in await self.store.every() if m.name == row.name]
        ids = [row.id] if ref == row.id else versions
        count = await self.store.delete(ids)
        await self.bus.emit(
            "module.deleted", f"module/{row.id}", f"module {row.name}: {count} version(s) deleted"
        )
        return count

    async def delete_all(self) -> int:
        rows = await self.store.every()
        count = await self.store.delete([r.id for r in rows]) if rows else 0
        if count:
            await self.bus.emit("module.deleted", "module/*", f"{count} module(s) deleted")
        return count
