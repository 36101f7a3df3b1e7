"""Wasm deployments: a manifest's steps placed on devices, each device's part pushed to
its /deploy, and execution that follows the chain's result URLs, failing a step over to
another device when its own is down.

Called by the Wasm-IoT routes; the device service tells it when a device comes back so
that device gets its parts again.
"""

import asyncio
import contextlib
import time
from typing import Any

import httpx
import structlog

from corral.config import Settings
from corral.control.devices import DeviceService
from corral.control.modules import functions_of
from corral.devices.client import DeviceError, FunctionRefused, SupervisorClient
from corral.errors import Conflict, CorralError, Invalid, NotFound
from corral.events import EventBus
from corral.model.manifests import (
    Candidate,
    Placed,
    build_parts,
    check_repeats,
    choose_device,
    parse_manifest,
    same_function_devices,
)
from corral.model.views import DeploymentView, EventView
from corral.model.wasm_modules import execution_files
from corral.store.modules import DeploymentStore, ModuleStore
from corral.store.tables import DeploymentRow

log = structlog.get_logger("corral.deployments")
RUNS_GATHER_SECONDS = 0.2  # how long run events wait for others to be stored with


class ExecutionFailed(CorralError):
    """The chain ran and a function failed (a trap, fuel, a bad answer)."""

    status = 502
    code = "execution_failed"


class DeploymentService:
    def __init__(
        self,
        store: DeploymentStore,
        modules: ModuleStore,
        devices: DeviceService,
        client: SupervisorClient,
        bus: EventBus,
        settings: Settings,
    ) -> None:
        self.store = store
        self.modules = modules
        self.devices = devices
        self.client = client
        self.bus = bus
        self.settings = settings
        self._locks: dict[str, asyncio.Lock] = {}
        # `deployment.executed` events, stored in batches after the answers went out
        self._runs: list[tuple[str, str, str, dict[str, Any] | None]] = []
        self._recorder: asyncio.Task[None] | None = None
        devices.on_active.append(self.device_back)
        bus.watch("deployment.", self._deployment_event)

    def _deployment_event(self, event: EventView) -> None:
        """Another replica may have changed a deployment: read it again (a run changes
        nothing stored)."""
        if event.kind != "deployment.executed":
            self.store.forget()

    def _lock(self, deployment_id: str) -> asyncio.Lock:
        return self._locks.setdefault(deployment_id, asyncio.Lock())

    async def views(self) -> list[DeploymentView]:
        return [DeploymentView.model_validate(row) for row in await self.store.every()]

    async def view(self, ref: str) -> DeploymentView:
        """By id, else by name."""
        return DeploymentView.model_validate(await self.store.get(ref))

    async def create(self, body: Any) -> tuple[DeploymentView, bool]:
        """Place a manifest's steps and store it. A manifest with the name of a stored one
        replaces it (as the orchestrator does): its parts leave the devices, and it waits
        to be deployed again. (deployment, created)."""
        row, created = await self._create(body)
        return DeploymentView.model_validate(row), created

    async def _create(self, body: Any) -> tuple[DeploymentRow, bool]:
        name, placed = await self._place(body)
        steps = [p.as_json() for p in placed]
        try:
            old = await self.store.get(name)
        except NotFound:
            old = None
        if old is not None and old.name == name:
            if old.sequence == body["sequence"]:
                return old, False
            await self._undeploy(old)
            row = await self.store.update(
                old.id,
                sequence=body["sequence"],
                steps=steps,
                parts={},
                responses={},
                state="pending",
                reason="",
            )
            await self._created(row, placed, "replaced")
            return row, False
        row, created = await self.store.create(name, body["sequence"], steps)
        if created:
            await self._created(row, placed, "created")
        return row, created

    async def update(self, ref: str, body: Any) -> DeploymentView:
        """`PUT /file/manifest/{id}`: a new manifest for a stored deployment, placed and
        deployed at once."""
        row = await self.store.get(ref)
        if isinstance(body, dict) and "name" not in body:
            body = {**body, "name": row.name}
        name, placed = await self._place(body)
        if name != row.name:
            try:
                taken = await self.store.get(name)
            except NotFound:
                taken = None
            if taken is not None and taken.id != row.id:
                raise Conflict(
                    f"a deployment named {name!r} already exists ({taken.id})",
                    {"deployment": taken.id},
                )
        async with self._lock(row.id):
            row = await self.store.update(
                row.id, name=name, sequence=body["sequence"], steps=[p.as_json() for p in placed]
            )
        await self._created(row, placed, "updated")
        return await self.deploy(row.id)

    async def _created(self, row: DeploymentRow, placed: list[Placed], verb: str) -> None:
        where = ", ".join(f"{p.module_name}.{p.func}@{p.device}" for p in placed)
        await self.bus.emit(
            "deployment.created",
            f"deployment/{row.id}",
            f"deployment {row.name} {verb}: {where}",
            {"name": row.name, "steps": [p.as_json() for p in placed]},
        )

    async def _place(self, body: Any) -> tuple[str, list[Placed]]:
        """Check a manifest and bind each step to a module version and a device."""
        name, requests = parse_manifest(body)
        candidates = await self.devices.candidates()
        load = await self._load()
        placed: list[Placed] = []
        for index, request in enumerate(requests):
            try:
                module = await self.modules.get(request.module)
            except NotFound:
                raise Invalid(
                    f"step {index}: unknown module {request.module!r}", {"module": request.module}
                ) from None
            functions = functions_of(module)
            if request.func not in functions:
                known = ", ".join(sorted(functions)) or "none"
                raise Invalid(
                    f"step {index}: module {module.name!r} has no function {request.func!r} "
                    f"(it exports: {known})",
                    {"func": request.func},
                )
            unknown = [f for f in request.failovers if f not in {c.name for c in candidates}]
            if unknown:
                raise Invalid(f"step {index}: unknown failover device(s) {', '.join(unknown)}")
            holding = frozenset(
                p.device for p in placed if (p.module_name, p.func) == (module.name, request.func)
            )
            device = choose_device(
                index, module.requirements, candidates, request.device, holding, load
            )
            load[device] = load.get(device, 0) + 1
            placed.append(
                Placed(
                    device,
                    module.id,
                    module.name,
                    request.func,
                    functions[request.func],
                    module.requirements,
                    list(request.failovers),
                )
            )
        check_repeats(placed)
        return name, placed

    async def _load(self) -> dict[str, int]:
        """How many steps each device already runs, to spread new ones."""
        load: dict[str, int] = {}
        for row in await self.store.every():
            for step in row.steps:
                load[step["device"]] = load.get(step["device"], 0) + 1
        return load

    async def deploy(self, ref: str) -> DeploymentView:
        """Send each device its part. A device that cannot be reached (down, but not yet
        found so by the health checks) counts as failed, and its steps move to other
        devices, as at execution; one that answers with a refusal fails the deployment."""
        return DeploymentView.model_validate(await self._deploy(ref))

    async def _deploy(self, ref: str) -> DeploymentRow:
        row = await self.store.get(ref)
        steps = [Placed.from_json(s) for s in row.steps]
        async with self._lock(row.id):
            row = await self._push(row, steps)
        unreachable = await self._unreachable(row)
        if not unreachable:
            return row
        try:
            return await self._fail_over(row, steps, await self.devices.candidates(), unreachable)
        except CorralError as exc:
            log.info("deploy: no failover", deployment=row.id, error=exc.message)
            return await self.store.get(row.id)

    async def _push(
        self, row: DeploymentRow, steps: list[Placed], urls: dict[str, str] | None = None
    ) -> DeploymentRow:
        """Build and send every device's part; record each answer and the outcome.
        `urls`: every device's URL, when the caller has just read them."""
        urls = urls if urls is not None else await self._device_urls()
        parts = build_parts(row.id, steps, urls, self.settings.base_url)
        dropped = [d for d in row.parts if d not in parts and d in urls]
        # The steps are stored first: a device may fetch only the modules of its own steps.
        await self.store.update(
            row.id, state="deploying", parts=parts, steps=[s.as_json() for s in steps], reason=""
        )
        for device in dropped:
            with contextlib.suppress(DeviceError):
                await self.client.undeploy(urls[device], row.id)
        await self.bus.emit(
            "deployment.deploying",
            f"deployment/{row.id}",
            f"deployment {row.name}: sending parts to {', '.join(sorted(parts))}",
        )

        async def send(device: str, part: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            try:
                status, data = await self.client.deploy(urls[device], part)
            except DeviceError as exc:
                return device, {"status": "unreachable", "data": str(exc)}
            return device, {"status": status, "data": data}

        answers = dict(await asyncio.gather(*(send(d, p) for d, p in parts.items())))
        failed = sorted(
            d
            for d, a in answers.items()
            if not (isinstance(a["status"], int) and a["status"] < 300)
        )
        state = "failed" if failed else "deployed"
        reason = "; ".join(f"{d}: {_said(answers[d])}" for d in failed)
        row = await self.store.update(row.id, state=state, responses=answers, reason=reason)
        message = (
            f"deployment {row.name} deployed on {', '.join(sorted(parts))}"
            if not failed
            else f"deployment {row.name} failed on {', '.join(failed)}: {reason}"
        )
        await self.bus.emit(
            f"deployment.{state}", f"deployment/{row.id}", message, {"answers": answers}
        )
        return row

    async def _device_urls(self) -> dict[str, str]:
        return {c.name: c.url for c in await self.devices.candidates()}

    async def execute(
        self, ref: str, params: dict[str, Any], files: dict[str, bytes] | None = None
    ) -> dict[str, Any]:
        """Run the chain from its first step, with its parameters and execution files, and
        follow the result URLs to the final value. A step whose device is down moves to
        another device (mid-chain too); a device that lost its deployment gets it again."""
        row = await self.store.get(ref)
        if row.state == "deploying":  # parts on their way (a device came back): run after
            async with self._lock(row.id):
                row = await self.store.get(row.id)
        if row.state not in ("deployed", "failed"):
            raise Conflict(
                f"deployment {row.name} is {row.state}; deploy it first "
                f"(POST /file/manifest/{row.id})",
                {"state": row.state},
            )
        steps = [Placed.from_json(s) for s in row.steps]
        args = _arguments(steps[0].description, params)
        files = files or {}
        _check_files(steps[0].description, files)
        down: set[str] = set()
        in_failover = redeployed = False
        deadline = time.monotonic() + self.settings.execute_timeout_seconds
        for _attempt in range(len(steps) + 3):
            candidates = await self.devices.candidates()
            usable = {c.name for c in candidates if c.usable} - down
            if any(s.device not in usable for s in steps) or row.state != "deployed":
                row = await self._fail_over(row, steps, candidates, down)
                steps = [Placed.from_json(s) for s in row.steps]
                in_failover = True
            urls = {c.name: c.url for c in candidates}
            first = steps[0]
            url = f"{urls[first.device]}/{row.id}/modules/{first.module_name}/{first.func}"
            try:
                result_url = await self.client.call(first.description["method"], url, args, files)
                outcome = await self._follow(result_url, steps, deadline)
            except FunctionRefused as exc:
                if exc.status == 404 and not redeployed:  # it may have lost the deployment
                    row, redeployed = await self._redeploy(row, steps), True
                    continue
                raise Invalid(f"the device refused the call: {exc}") from None
            except _StepFailed as exc:
                following = steps[exc.index + 1] if exc.index + 1 < len(steps) else None
                if following is None:
                    raise ExecutionFailed(exc.message) from None
                if not await self._answers(urls[following.device]):
                    down.add(following.device)
                    await self.devices.failed(following.device, "does not answer")
                    continue
                if not redeployed:  # the next device may have restarted without its part
                    row, redeployed = await self._redeploy(row, steps), True
                    continue
                raise ExecutionFailed(exc.message) from None
            except _StepDown as exc:
                down.add(steps[exc.index].device)
                await self.devices.failed(steps[exc.index].device, exc.reason)
                continue
            except DeviceError as exc:
                down.add(first.device)
                await self.devices.failed(first.device, str(exc))
                continue
            outcome["isInFailover"] = in_failover
            self._ran(
                "deployment.executed",
                f"deployment/{row.id}",
                f"deployment {row.name} ran: {outcome['result']!r}",
                {"failover": in_failover, "from": outcome["fetched_from_device"]},
            )
            return outcome
        gone = ", ".join(sorted(down))
        raise Conflict(f"deployment {row.name}: no device could run the chain (down: {gone})")

    def _ran(self, kind: str, resource: str, message: str, data: dict[str, Any]) -> None:
        """Keep a run's event to store off the answer's path (a run changes no state)."""
        self._runs.append((kind, resource, message, data))
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_runs())

    async def _record_runs(self) -> None:
        await asyncio.sleep(RUNS_GATHER_SECONDS)  # runs that follow share the transaction
        while self._runs:
            batch, self._runs = self._runs, []
            try:
                await self.bus.emit_many(batch)
            except Exception:
                log.exception("run events not stored", count=len(batch))

    async def shutdown(self) -> None:
        """Store the run events still waiting."""
        if self._recorder is not None:
            await self._recorder

    async def _redeploy(self, row: DeploymentRow, steps: list[Placed]) -> DeploymentRow:
        async with self._lock(row.id):
            return await self._push(row, steps)

    async def _unreachable(self, row: DeploymentRow) -> set[str]:
        """The devices that did not answer the last deploy (which then failed), each
        counted as a failed health check."""
        answers = row.responses or {}
        unreachable = {d for d, a in answers.items() if a.get("status") == "unreachable"}
        for device in sorted(unreachable):
            await self.devices.failed(device, str(answers[device].get("data")))
        return unreachable

    async def _answers(self, url: str) -> bool:
        try:
            await self.client.description(url)
        except DeviceError:
            return False
        return True

    async def _follow(self, url: str, steps: list[Placed], deadline: float) -> dict[str, Any]:
        """Poll result URLs to the final value. Each result that is itself a result URL (a
        bare string, or an object with `resultUrl`) is the next step's. A step that
        failed says so by its status and `success`, whatever its text."""
        pause = 0.01
        index = 0
        while True:
            try:
                status, body = await self.client.result(url)
            except DeviceError as exc:
                raise _StepDown(min(index, len(steps) - 1), str(exc)) from None
            # 404: a queued call has no history entry until it ends
            failed = (status >= 400 and status != 404) or (
                status == 200 and not isinstance(body, dict)
            )
            if status == 200 and isinstance(body, dict):
                failed = body.get("success") is False
                following = None if failed else _result_url(body.get("result"))
                if following is not None:
                    url, pause, index = following, 0.01, index + 1
                    continue
                if not failed:
                    return {
                        "result": body.get("result"),
                        "fetched_from_device": httpx.URL(url).netloc.decode(),
                        "resultUrl": url,
                    }
            if failed:
                where = min(index, len(steps) - 1)
                name = f"{steps[where].module_name}.{steps[where].func}"
                said = body.get("result") if isinstance(body, dict) else body
                raise _StepFailed(where, f"{name} failed: {str(said)[:500]}")
            if time.monotonic() > deadline:
                raise ExecutionFailed(
                    f"no result from {url} within {self.settings.execute_timeout_seconds} s"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    async def _fail_over(
        self,
        row: DeploymentRow,
        steps: list[Placed],
        candidates: list[Candidate],
        down: set[str],
    ) -> DeploymentRow:
        """Move every step whose device is down to a failover device, then redeploy; a
        device found unreachable while deploying counts as down too (its steps move)."""
        down = set(down)
        for _round in range(len(candidates) + 1):
            await self._move(row, steps, candidates, down)
            async with self._lock(row.id):
                row = await self._push(row, steps, {c.name: c.url for c in candidates})
            if row.state == "deployed":
                return row
            unreachable = await self._unreachable(row)
            if not unreachable:
                break
            down |= unreachable
        raise Conflict(f"deployment {row.name}: failover could not deploy: {row.reason}")

    async def _move(
        self,
        row: DeploymentRow,
        steps: list[Placed],
        candidates: list[Candidate],
        down: set[str],
    ) -> None:
        """Put each step whose device is down or unusable on another device."""
        usable = [
            Candidate(
                c.name, c.url, c.interfaces, c.usable and c.name not in down, c.why_not or "is down"
            )
            for c in candidates
        ]
        ok = {c.name for c in usable if c.usable}
        load = await self._load()
        for index, step in enumerate(steps):
            if step.device in ok:
                continue
            holding = same_function_devices(steps, index)
            preferred = [f for f in step.failovers if f in ok and f not in holding]
            target = choose_device(
                index,
                step.requirements,
                usable,
                preferred[0] if preferred else None,
                avoid=frozenset({step.device}) | holding,
                load=load,
            )
            load[target] = load.get(target, 0) + 1
            await self.bus.emit(
                "deployment.failover",
                f"deployment/{row.id}",
                f"deployment {row.name}: {step.module_name}.{step.func} moves from "
                f"{step.device} to {target}",
                {"from": step.device, "to": target, "step": index},
            )
            step.device = target

    async def failover(self, ref: str) -> DeploymentView:
        """`POST /file/manifest/failover/{id}`: move each step whose device cannot run it
        now (inactive, gone, blacklisted) to another device, and deploy again."""
        row = await self.store.get(ref)
        steps = [Placed.from_json(s) for s in row.steps]
        moved = await self._fail_over(row, steps, await self.devices.candidates(), set())
        return DeploymentView.model_validate(moved)

    async def device_back(self, name: str) -> None:
        """A device answers again: send it its parts (it may have lost them). A deployment
        never deployed, or replaced and not deployed since, stays as it is."""
        for row in await self.store.every():
            if row.state != "pending" and any(s["device"] == name for s in row.steps):
                async with self._lock(row.id):
                    await self._push(row, [Placed.from_json(s) for s in row.steps])

    async def delete(self, ref: str | None = None) -> int:
        rows = [await self.store.get(ref)] if ref else await self.store.every()
        urls = await self._device_urls()
        for row in rows:
            await self._undeploy(row, urls)
            await self.store.delete(row.id)
            await self.bus.emit(
                "deployment.removed", f"deployment/{row.id}", f"deployment {row.name} removed"
            )
        return len(rows)

    async def _undeploy(self, row: DeploymentRow, urls: dict[str, str] | None = None) -> None:
        """Take a deployment's parts off its devices (best effort: a device that is down
        has lost them, or gets them replaced at the next deploy)."""
        urls = urls if urls is not None else await self._device_urls()
        for device in row.parts:
            if device in urls:
                with contextlib.suppress(DeviceError):
                    await self.client.undeploy(urls[device], row.id)

    async def for_device(self, device: str) -> list[DeploymentRow]:
        return [r for r in await self.store.every() if any(s["device"] == device for s in r.steps)]

    async def device_may_read_module(self, device: str, module_id: str) -> bool:
        return any(
            s["device"] == device and s["module_id"] == module_id
            for r in await self.store.every()
            for s in r.steps
        )


class _StepDown(Exception):
    """The device of step `index` stopped answering while its result was read."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index, self.reason = index, reason


class _StepFailed(Exception):
    """Step `index` answered that it failed: its function, or its call of the next step."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index, self.message = index, message


def _result_url(result: Any) -> str | None:
    """The next result URL if a result is one: a bare URL string, or `{resultUrl}`."""
    if isinstance(result, dict) and isinstance(result.get("resultUrl"), str):
        result = result["resultUrl"]
    if isinstance(result, str) and result.startswith(("http://", "https://")):
        return result
    return None


def _said(answer: dict[str, Any]) -> str:
    data = answer.get("data")
    if isinstance(data, dict) and "err" in data:
        data = data["err"]
    return f"{answer.get('status')} {str(data)[:300]}"


def _check_files(description: dict[str, Any], files: dict[str, bytes]) -> None:
    """The files sent to /execute are the first function's execution files, all of them."""
    wanted = execution_files(description)
    unknown = sorted(set(files) - set(wanted))
    if unknown:
        expected = ", ".join(wanted) or "none"
        raise Invalid(
            f"unknown file {unknown[0]!r}: the first function's execution files are {expected}",
            {"field": unknown[0]},
        )
    missing = [name for name in wanted if name not in files]
    if missing:
        raise Invalid(
            f"file {missing[0]!r} is missing: send it multipart (an execution file of the "
            "first function)",
            {"field": missing[0]},
        )


def _arguments(description: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The first step's query arguments, checked against its declared types."""
    unknown = set(params) - {p["name"] for p in description["parameters"]}
    if unknown:
        raise Invalid(f"unknown parameter(s) {', '.join(sorted(unknown))}", {"field": "params"})
    out: dict[str, Any] = {}
    for param in description["parameters"]:
        name, kind = param["name"], param["type"]
        if name not in params:
            raise Invalid(f"parameter {name!r} ({kind}) is missing", {"field": name})
        value = params[name]
        if isinstance(value, bool):
            raise Invalid(f"parameter {name!r} must be an {kind}, not a boolean", {"field": name})
        try:
            if kind == "integer":
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                out[name] = int(value) if not isinstance(value, str) else int(value.strip())
            elif kind == "number":
                out[name] = float(value)
            else:
                out[name] = str(value)
        except (TypeError, ValueError):
            raise Invalid(
                f"parameter {name!r} must be an {kind}, not {value!r}", {"field": name}
            ) from None
    return out
