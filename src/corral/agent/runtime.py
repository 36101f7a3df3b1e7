"""wasmtime for the agent: one engine, compiled modules cached by sha256, limited calls.

The server compiles deployed binaries here and runs each call in a worker thread; every
call gets a fresh Store and instance with its own fuel, time and memory limits. The Linker
(WASI and the host functions) is built once, and each module is linked to it once.
"""

import hashlib
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import wasmtime

from corral.agent.interfaces import ENV, WASI, HostFunction, catalog, supervisor_interfaces

TICK = 0.01  # seconds between epoch increments
OUTPUT_CAP = 64 * 1024  # bytes of a call's stdout/stderr kept
INT_RANGES = {"i32": (-(2**31), 2**32 - 1), "i64": (-(2**63), 2**64 - 1)}

log = structlog.get_logger("corral.agent.runtime")


class ModuleInvalid(Exception):
    """The bytes are not a WebAssembly module wasmtime can compile."""


class ArgumentError(Exception):
    """Arguments that do not fit the function's parameters; the message names the one."""


class CallFailed(Exception):
    """A call that did not return; the message says why in one line."""


@dataclass(frozen=True)
class Signature:
    params: tuple[str, ...]
    results: tuple[str, ...]

    def __str__(self) -> str:
        return f"({', '.join(self.params)}) -> ({', '.join(self.results)})"


@dataclass(frozen=True)
class CompiledModule:
    sha256: str
    module: wasmtime.Module
    imports: tuple[tuple[str, str], ...]  # (module, name) of every import
    functions: Mapping[str, Signature]  # exported functions
    linked: wasmtime.InstancePre | None  # imports resolved; None when some are not offered


@dataclass
class CallResult:
    value: object  # first result, or None
    stdout: bytes = b""
    stderr: bytes = b""


@dataclass
class _Output:
    name: str
    data: bytearray = field(default_factory=bytearray)

    def write(self, chunk: bytes) -> None:
        room = OUTPUT_CAP - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        log.info(f"wasm {self.name}", text=chunk.decode("utf-8", "replace").rstrip("\n"))


def _type_name(ty: wasmtime.ValType) -> str:
    return str(ty)


def _first_line(exc: Exception) -> str:
    """wasmtime's messages open with a backtrace header; the cause is after "Caused by:"."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Caused by:" in lines:
        after = lines[lines.index("Caused by:") + 1 :]
        if after:
            return after[0].removeprefix("wasm trap: ")
    return lines[0] if lines else type(exc).__name__


class Runtime:
    """The engine, its epoch ticker thread, the compile cache and the host functions."""

    def __init__(
        self,
        *,
        fuel: int = 1_000_000_000,
        memory_mb: int = 64,
        call_timeout: float = 10.0,
        sensors: Mapping[str, float] | None = None,
    ) -> None:
        self.fuel = fuel
        self.memory_mb = memory_mb
        self.call_timeout = call_timeout
        self.started = time.monotonic()
        self.host_functions: list[HostFunction] = catalog(self.started, sensors or {})
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        self.linker = wasmtime.Linker(self.engine)  # store-independent: shared by calls
        self.linker.define_wasi()  # each call's store carries its own WASI config
        for host in self.host_functions:
            self.linker.define_func(ENV, host.name, host.func_type(), host.func)
        self._cache: dict[str, CompiledModule] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            self.engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()

    @property
    def interfaces(self) -> list[str]:
        """`supervisorInterfaces`: offered env functions plus WASI."""
        return supervisor_interfaces(self.host_functions)

    def offered(self) -> set[tuple[str, str]]:
        return {(ENV, f.name) for f in self.host_functions}

    # --- compiling -------------------------------------------------------------------

    def compile(self, binary: bytes) -> CompiledModule:
        """Compile (or take from the cache) a module; ModuleInvalid if it is not one."""
        digest = hashlib.sha256(binary).hexdigest()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None:
            return cached
        if not binary.startswith(b"\0asm"):
            raise ModuleInvalid("not a WebAssembly binary (it does not start with \\0asm)")
        try:
            module = wasmtime.Module(self.engine, binary)
        except wasmtime.WasmtimeError as exc:
            raise ModuleInvalid(_first_line(exc)) from None
        functions: dict[str, Signature] = {}
        for export in module.exports:
            if isinstance(export.type, wasmtime.FuncType):
                functions[export.name] = Signature(
                    tuple(_type_name(t) for t in export.type.params),
                    tuple(_type_name(t) for t in export.type.results),
                )
        try:
            linked: wasmtime.InstancePre | None = self.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError:  # an import not offered: deploy names it, calls fail
            linked = None
        compiled = CompiledModule(
            sha256=digest,
            module=module,
            imports=tuple((i.module, i.name or "") for i in module.imports),
            functions=functions,
            linked=linked,
        )
        with self._lock:
            self._cache.setdefault(digest, compiled)
            return self._cache[digest]

    def missing_imports(self, module: CompiledModule) -> list[str]:
        """Imports this agent does not offer, as `module.name` (WASI is offered whole)."""
        offered = self.offered()
        return [
            f"{mod}.{name}"
            for mod, name in module.imports
            if mod != WASI and (mod, name) not in offered
        ]

    # --- calling ---------------------------------------------------------------------

    def check_args(
        self,
        module: CompiledModule,
        function: str,
        args: Sequence[object],
        names: Sequence[str] = (),
    ) -> list[int | float]:
        """The arguments as the wasm parameter types take them; ArgumentError otherwise."""
        signature = module.functions.get(function)
        if signature is None:
            raise ArgumentError(f"the module exports no function {function!r}")
        if len(args) != len(signature.params):
            raise ArgumentError(
                f"{function} takes {len(signature.params)} argument(s) {signature}, got {len(args)}"
            )
        checked: list[int | float] = []
        for index, (value, kind) in enumerate(zip(args, signature.params, strict=True)):
            label = names[index] if index < len(names) else f"#{index}"
            checked.append(_convert(label, kind, value))
        return checked

    def call(
        self,
        module: CompiledModule,
        function: str,
        args: Sequence[object] = (),
        *,
        names: Sequence[str] = (),
        mounts: Path | None = None,
    ) -> CallResult:
        """Run one exported function in a fresh instance; CallFailed says why it failed.

        Blocking: the server runs it with `asyncio.to_thread`.
        """
        values = self.check_args(module, function, args, names)
        store = wasmtime.Store(self.engine)
        store.set_fuel(self.fuel)
        store.set_epoch_deadline(max(1, math.ceil(self.call_timeout / TICK)))
        memory_cap = self.memory_mb * 2**20
        store.set_limits(memory_size=memory_cap)
        stdout, stderr = _Output("stdout"), _Output("stderr")
        wasi = wasmtime.WasiConfig()
        wasi.stdout_custom = stdout.write
        wasi.stderr_custom = stderr.write
        if mounts is not None:
            wasi.preopen_dir(str(mounts), "/")
        store.set_wasi(wasi)
        instance: wasmtime.Instance | None = None
        try:
            if module.linked is not None:
                instance = module.linked.instantiate(store)
            else:
                instance = self.linker.instantiate(store, module.module)
            func = instance.exports(store)[function]
            if not isinstance(func, wasmtime.Func):
                raise CallFailed(f"{function} is not a function")
            raw = func(store, *values)
        except wasmtime.ExitTrap as exc:
            if exc.code != 0:
                raise CallFailed(f"exit: the module exited with code {exc.code}") from None
            raw = None
        except wasmtime.Trap as exc:
            raise CallFailed(self._explain(exc, store, instance)) from None
        except wasmtime.WasmtimeError as exc:
            message = _first_line(exc)
            if "memory" in message and "limit" in message:
                raise CallFailed(
                    f"memory limit: the module needs more than {self.memory_mb} MiB "
                    f"(--memory-mb): {message}"
                ) from None
            raise CallFailed(f"cannot start the module: {message}") from None
        value = raw[0] if isinstance(raw, list) else raw
        return CallResult(value, bytes(stdout.data), bytes(stderr.data))

    def _explain(
        self, exc: wasmtime.Trap, store: wasmtime.Store, instance: wasmtime.Instance | None
    ) -> str:
        code = exc.trap_code
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return f"out of fuel: the call used all {self.fuel} units (--fuel)"
        if code == wasmtime.TrapCode.INTERRUPT:
            return f"time limit: the call ran longer than {self.call_timeout:g} s (--call-timeout)"
        message = _first_line(exc)
        used = _largest_memory(store, instance)
        cap = self.memory_mb * 2**20
        if used >= cap // 2 and used + 2**20 > cap:  # the next MiB would not fit
            return (
                f"memory limit: memory.grow was refused at {used / 2**20:.1f} MiB, the cap is "
                f"{self.memory_mb} MiB (--memory-mb); then trap: {message}"
            )
        return f"trap: {message}"


def _largest_memory(store: wasmtime.Store, instance: wasmtime.Instance | None) -> int:
    """Bytes of the largest exported memory after a trap (0 when none is exported)."""
    if instance is None:
        return 0
    sizes = [
        item.data_len(store)
        for item in instance.exports(store).values()
        if isinstance(item, wasmtime.Memory)
    ]
    return max(sizes, default=0)


def _convert(label: str, kind: str, value: object) -> int | float:
    if kind in INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentError(f"parameter {label}: {kind} takes a whole number, got {value!r}")
        low, high = INT_RANGES[kind]
        if not low <= value <= high:
            raise ArgumentError(f"parameter {label}: {value} does not fit in {kind}")
        return value
    if kind in ("f32", "f64"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ArgumentError(f"parameter {label}: {kind} takes a number, got {value!r}")
        return float(value)
    raise ArgumentError(f"parameter {label}: the agent cannot pass a {kind} value")
