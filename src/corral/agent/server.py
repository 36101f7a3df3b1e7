"""The supervisor API of `corral agent`: description, health, deploy, calls, history.

`create_agent_app(settings)` returns the FastAPI app the CLI serves with uvicorn; its
lifespan starts the wasmtime runtime, the queued-call worker and the mDNS advert.
"""

import asyncio
import contextlib
import importlib
import json
import math
import platform
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.agent import callfiles
from corral.agent.advert import Advert
from corral.agent.deployments import (
    Deployment,
    DeploymentStore,
    Endpoint,
    PartInvalid,
    check_modules,
    parse_part,
)
from corral.agent.history import Entry, History
from corral.agent.runtime import (
    ArgumentError,
    CallFailed,
    CompiledModule,
    ModuleInvalid,
    Runtime,
)
from corral.agent.settings import AgentSettings

log = structlog.get_logger("corral.agent")
# psutil ships no type hints; it is used for a handful of readings below
psutil: Any = importlib.import_module("psutil")
SUCCESS = {"status": "success"}
NEXT_STEP_TIMEOUT = httpx.Timeout(10.0, read=300.0)  # the next device runs its call first


class AgentError(Exception):
    """An answer other than success: HTTP status and a message naming the cause."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


class Agent:
    """The state behind the API: runtime, deployments, history, queue, orchestrator."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.orchestrator = settings.orchestrator
        self.runtime: Runtime | None = None
        self.store: DeploymentStore | None = None
        self.history = History()
        self.queue: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(30.0))
        self.advert: Advert | None = None
        self.deploy_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.runtime = Runtime(
            fuel=s.fuel, memory_mb=s.memory_mb, call_timeout=s.call_timeout, sensors=s.sensors
        )
        self.store = DeploymentStore(s.folder, self.runtime)
        s.folder.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.store.load)
        psutil.cpu_percent(interval=None)  # the first reading only starts the measurement
        self._worker = asyncio.create_task(self._work())
        if s.mdns:
            self.advert = Advert(s.name, s.port, s.address, s.mdns_interface)
            self.advert.start()

    async def stop(self) -> None:
        if self.advert is not None:
            try:
                await self.advert.stop()
            except Exception as exc:
                log.warning("mDNS goodbye failed", error=_describe(exc))
        for task in [self._worker, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.client.aclose()
        if self.runtime is not None:
            self.runtime.close()

    @property
    def ready_runtime(self) -> Runtime:
        assert self.runtime is not None, "the agent has not started"
        return self.runtime

    @property
    def ready_store(self) -> DeploymentStore:
        assert self.store is not None, "the agent has not started"
        return self.store

    # --- orchestrator ----------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        token = self.settings.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def report(self, level: str, message: str) -> None:
        """Log, and POST the message to `<orchestrator>/device/logs` in the background."""
        log.log(40 if level == "error" else 30, message)
        if self.orchestrator is None:
            return
        task = asyncio.get_running_loop().create_task(self._send_log(level, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_log(self, level: str, message: str) -> None:
        data = {
            "deviceName": self.settings.name,
            "loggedAt": datetime.now(UTC).isoformat(),
            "logLevel": level,
            "message": message,
        }
        try:
            await self.client.post(
                f"{self.orchestrator}/device/logs",
                data={"logData": json.dumps(data)},
                headers=self._auth(),
                timeout=5.0,
            )
        except httpx.HTTPError as exc:
            log.debug("log not delivered", error=_describe(exc))

    async def download(self, url: str) -> bytes:
        try:
            response = await self.client.get(url, headers=self._auth())
        except httpx.HTTPError as exc:
            raise AgentError(502, f"cannot download {url}: {_describe(exc)}") from None
        if response.status_code != 200:
            raise AgentError(502, f"download of {url} failed: HTTP {response.status_code}")
        return response.content

    # --- deployments -----------------------------------------------------------------

    async def deploy(self, body: object) -> None:
        try:
            part = parse_part(body)
        except PartInvalid as exc:
            raise AgentError(422, str(exc)) from None
        runtime = self.ready_runtime
        async with self.deploy_lock:
            binaries: dict[str, bytes] = {}
            compiled: dict[str, CompiledModule] = {}
            for index, module in enumerate(part.modules):
                binaries[module.name] = await self.download(module.urls.binary)
                try:
                    compiled[module.name] = await asyncio.to_thread(
                        runtime.compile, binaries[module.name]
                    )
                except ModuleInvalid as exc:
                    raise AgentError(
                        422,
                        f"modules.{index}.urls.binary: {module.urls.binary} is not a "
                        f"WebAssembly module: {exc}",
                    ) from None
            try:
                check_modules(part, compiled, runtime)
            except PartInvalid as exc:
                raise AgentError(422, str(exc)) from None
            files = {
                filename: await self.download(url)
                for module in part.modules
                for filename, url in module.urls.other.items()
            }
            await asyncio.to_thread(self.ready_store.save, part, binaries, compiled, files)
        log.info("deployed", deployment=part.deployment_id, modules=sorted(compiled))

    async def undeploy(self, deployment_id: str) -> None:
        async with self.deploy_lock:
            removed = await asyncio.to_thread(self.ready_store.remove, deployment_id)
        if not removed:
            raise AgentError(404, f"unknown deployment {deployment_id!r}")
        log.info("deployment removed", deployment=deployment_id)

    # --- calls -----------------------------------------------------------------------

    def find(self, deployment_id: str, module: str, function: str) -> tuple[Deployment, Endpoint]:
        deployment = self.ready_store.active.get(deployment_id)
        if deployment is None:
            raise AgentError(404, f"unknown deployment {deployment_id!r}")
        if module not in deployment.modules:
            raise AgentError(404, f"deployment {deployment_id} has no module {module!r}")
        endpoint = deployment.part.endpoints.get(module, {}).get(function)
        if endpoint is None:
            raise AgentError(
                404, f"module {module} of deployment {deployment_id} has no function {function!r}"
            )
        return deployment, endpoint

    def arguments(
        self, deployment: Deployment, module: str, function: str, endpoint: Endpoint, query: Any
    ) -> tuple[list[int | float], list[str]]:
        """Query values typed by the endpoint's schema, then checked against the wasm types."""
        values: list[object] = []
        names: list[str] = []
        for parameter in endpoint.request.parameters:
            kind = parameter.schema_.type
            raw = query.get(parameter.name)
            if raw is None:
                if parameter.required:
                    raise AgentError(400, f"missing query parameter {parameter.name!r} ({kind})")
                continue
            values.append(_typed(parameter.name, kind, raw))
            names.append(parameter.name)
        try:
            checked = self.ready_runtime.check_args(
                deployment.modules[module], function, values, names
            )
        except ArgumentError as exc:
            raise AgentError(400, str(exc)) from None
        return checked, names

    async def execute(
        self,
        entry: Entry,
        deployment: Deployment,
        function: str,
        args: list[int | float],
        names: list[str],
        inputs: dict[str, bytes],
    ) -> None:
        """Run the call, then the next step if the instructions chain one; settle the entry.
        A function with execution or output files runs in a folder of its own."""
        module = entry.module_name
        mounts = deployment.part.mounts.get(module, {}).get(function)
        own = mounts is not None and bool(mounts.execution or mounts.output)
        outputs: list[str] = []
        try:
            where = deployment.mounts_for(module, function)
            if own and mounts is not None:
                where = await asyncio.to_thread(
                    callfiles.prepare, self.calls, deployment.files, mounts, inputs
                )
            try:
                result = await asyncio.to_thread(
                    self.ready_runtime.call,
                    deployment.modules[module],
                    function,
                    args,
                    names=names,
                    mounts=where,
                )
            finally:
                if own and mounts is not None and where is not None:
                    outputs = await asyncio.to_thread(
                        callfiles.keep_outputs, where, mounts, self.results, entry.request_id
                    )
                    if outputs:  # results of requests the history dropped go with them
                        held = {e.request_id for e in self.history.all()}
                        await asyncio.to_thread(callfiles.prune, self.results, held)
        except CallFailed as exc:
            History.fail(entry, str(exc))
            self.report("error", f"{entry.request_id} failed: {exc}")
            return
        except Exception as exc:  # a bug, not the module's fault: still settle the entry
            History.fail(entry, f"internal error: {_describe(exc)}")
            log.exception("call crashed", request=entry.request_id)
            return
        instruction = deployment.part.instructions.modules.get(module, {}).get(function)
        following = instruction.to if instruction is not None else None
        if following is None:
            files = [self.output_url(entry, name) for name in outputs] if own else None
            History.succeed(entry, [_text(result.value), files])
            return
        await self.chain(entry, following, result.value, outputs)

    async def chain(
        self, entry: Entry, following: Endpoint, value: object, outputs: list[str]
    ) -> None:
        """Call the next step with this one's value as its first parameter, and this one's
        output files as its execution files (multipart): the n-th output under the n-th
        name of the next endpoint's request body encoding, else under its own name."""
        url = following.target()
        params: dict[str, str] = {}
        text = _text(value)
        if following.request.parameters and text is not None:
            params[following.request.parameters[0].name] = text
        folder = callfiles.result_folder(self.results, entry.request_id)
        body = following.request.request_body
        wanted = list(body.encoding or {}) if body is not None else []
        files = {
            (wanted[i] if i < len(wanted) else name): (name, (folder / name).read_bytes())
            for i, name in enumerate(outputs)
        }
        try:
            response = await self.client.request(
                following.method,
                url,
                params=params,
                files=files or None,
                timeout=NEXT_STEP_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            reason = _describe(exc)
        else:
            if response.is_success:
                try:
                    History.succeed(entry, response.json())
                    return
                except ValueError:
                    reason = "the answer is not JSON"
            else:
                reason = f"HTTP {response.status_code}: {response.text[:200]}"
        message = f"next step {url} failed: {reason}"
        History.fail(entry, message)
        self.report("error", f"{entry.request_id}: {message}")

    async def _work(self) -> None:
        """Run queued (POST) calls one after another."""
        while True:
            job = await self.queue.get()
            try:
                await job()
            except Exception:
                log.exception("queued call crashed")
            finally:
                self.queue.task_done()

    def result_url(self, entry: Entry) -> str:
        return f"{self.settings.base_url}/request-history/{entry.request_id}"

    def output_url(self, entry: Entry, name: str) -> str:
        return f"{self.result_url(entry)}/files/{name}"

    @property
    def calls(self) -> Path:
        """Where calls with execution or output files run, one folder each."""
        return self.settings.folder / "calls"

    @property
    def results(self) -> Path:
        """Output files, one folder per request the history still holds."""
        return self.settings.folder / "results"

    async def inputs(
        self, request: Request, deployment: Deployment, module: str, function: str
    ) -> dict[str, bytes]:
        """The execution files sent with a call (multipart, named after the mounts)."""
        files: dict[str, bytes] = {}
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with request.form() as form:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        files[key] = await value.read()
        mounts = deployment.part.mounts.get(module, {}).get(function)
        try:
            callfiles.check_inputs(mounts, files, f"{module}.{function}")
        except callfiles.InputInvalid as exc:
            raise AgentError(400, str(exc)) from None
        return files


def _typed(name: str, kind: str, raw: str) -> object:
    if kind == "integer":
        try:
            return int(raw)
        except ValueError:
            raise AgentError(400, f"query parameter {name!r}: {raw!r} is not an integer") from None
    if kind == "number":
        try:
            number = float(raw)
        except ValueError:
            raise AgentError(400, f"query parameter {name!r}: {raw!r} is not a number") from None
        if not math.isfinite(number):
            raise AgentError(400, f"query parameter {name!r}: {raw!r} is not a finite number")
        return number
    return raw  # string/object: passed on as text (a wasm number parameter refuses it)


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise AgentError(400, f"body: not JSON ({exc})") from None


def create_agent_app(settings: AgentSettings) -> FastAPI:
    """The agent's FastAPI app; serving it starts the runtime, worker and mDNS advert."""
    agent = Agent(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await agent.start()
        try:
            yield
        finally:
            await agent.stop()

    app = FastAPI(
        title=f"corral agent {settings.name}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.agent = agent

    @app.exception_handler(AgentError)
    async def agent_error(_: Request, exc: AgentError) -> JSONResponse:
        return JSONResponse({"err": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return JSONResponse({"err": "Bad URL"}, status_code=404)
        if exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
            return JSONResponse({"err": message}, status_code=405)
        return JSONResponse({"err": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        return JSONResponse({"err": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        log.error("request crashed", error=_describe(exc))
        return JSONResponse({"err": f"internal error: {_describe(exc)}"}, status_code=500)

    @app.get("/.well-known/wasmiot-device-description")
    async def description() -> dict[str, Any]:
        return {
            "name": settings.name,
            "platform": {
                "cpu": {"coreCount": psutil.cpu_count() or 1, "humanReadableName": _cpu_name()},
                "memory": {"bytes": psutil.virtual_memory().total},
                "system": {"os": platform.system(), "arch": platform.machine()},
            },
            "supervisorInterfaces": agent.ready_runtime.interfaces,
        }

    @app.get("/health")
    async def health() -> JSONResponse:
        report = {
            "cpuUsage": min(1.0, psutil.cpu_percent(interval=None) / 100),
            "memoryUsage": min(1.0, psutil.virtual_memory().percent / 100),
        }
        header = "true" if agent.orchestrator else "false"
        return JSONResponse(report, headers={"Custom-Orchestrator-Set": header})

    @app.post("/register")
    async def register(request: Request) -> dict[str, str]:
        body = await _json_body(request)
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise AgentError(422, "url: must be an http:// or https:// URL")
        try:
            host = httpx.URL(url).host
        except httpx.InvalidURL:
            host = ""
        if not host:
            raise AgentError(422, f"url: {url!r} has no host")
        agent.orchestrator = url.rstrip("/")
        log.info("orchestrator registered", url=agent.orchestrator)
        return SUCCESS

    @app.post("/deploy")
    async def deploy(request: Request) -> dict[str, str]:
        try:
            await agent.deploy(await _json_body(request))
        except AgentError as exc:
            agent.report("error", f"deploy refused: {exc.message}")
            raise
        return SUCCESS

    @app.delete("/deploy/{deployment_id}")
    async def undeploy(deployment_id: str) -> dict[str, str]:
        await agent.undeploy(deployment_id)
        return SUCCESS

    @app.api_route("/{deployment_id}/modules/{module}/{function}", methods=["GET", "POST"])
    async def call(
        request: Request, deployment_id: str, module: str, function: str
    ) -> dict[str, str]:
        deployment, endpoint = agent.find(deployment_id, module, function)
        args, names = agent.arguments(deployment, module, function, endpoint, request.query_params)
        inputs = await agent.inputs(request, deployment, module, function)
        entry = agent.history.new(
            deployment_id, module, function, request.method, dict(request.query_params)
        )
        entry.request_files = sorted(inputs)

        async def job() -> None:
            await agent.execute(entry, deployment, function, args, names, inputs)

        if request.method == "GET":
            await job()
        else:
            agent.queue.put_nowait(job)
        return {"resultUrl": agent.result_url(entry)}

    @app.get("/request-history")
    async def history() -> list[dict[str, Any]]:
        return [entry.view() for entry in agent.history.all()]

    @app.get("/request-history/{request_id}")
    async def history_entry(request_id: str) -> JSONResponse:
        entry = agent.history.get(request_id)
        if entry is None:
            raise AgentError(404, f"unknown request {request_id!r}")
        return JSONResponse(entry.view(), status_code=entry.status_code)

    @app.get("/request-history/{request_id}/files/{name}")
    async def output_file(request_id: str, name: str) -> FileResponse:
        path = None
        if agent.history.get(request_id) is not None:
            path = callfiles.output_file(agent.results, request_id, name)
        if path is None:
            raise AgentError(404, f"request {request_id!r} has no output file {name!r}")
        return FileResponse(path)

    return app
