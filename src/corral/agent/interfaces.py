"""The host functions a module may import from `env`, and which of them an agent offers.

The runtime links the offered ones; the device description lists their names.
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog
import wasmtime

ENV = "env"
WASI = "wasi_snapshot_preview1"
SENSORS = ("temperature",)  # sensor names `--sensor NAME=VALUE` accepts

log = structlog.get_logger("corral.agent.wasm")


@dataclass(frozen=True)
class HostFunction:
    """One `env` import: its wasm signature and the Python that answers it."""

    name: str
    params: tuple[str, ...]
    results: tuple[str, ...]
    func: Callable[..., object]

    def func_type(self) -> wasmtime.FuncType:
        return wasmtime.FuncType(
            [_valtype(t) for t in self.params], [_valtype(t) for t in self.results]
        )


def _valtype(name: str) -> wasmtime.ValType:
    factory: Callable[[], wasmtime.ValType] = getattr(wasmtime.ValType, name)
    return factory()


def catalog(started: float, sensors: Mapping[str, float]) -> list[HostFunction]:
    """The `env` functions this agent offers: always millis and print_int, sensors if set.

    `started` is a `time.monotonic()` reading; millis() counts from it.
    """

    def millis() -> int:
        return int((time.monotonic() - started) * 1000)

    def print_int(value: int) -> None:
        log.info("wasm print_int", value=value)

    offered = [
        HostFunction("millis", (), ("i64",), millis),
        HostFunction("print_int", ("i32",), (), print_int),
    ]
    if "temperature" in sensors:
        reading = float(sensors["temperature"])
        offered.append(HostFunction("temperature", (), ("f32",), lambda: reading))
    return offered


def supervisor_interfaces(offered: list[HostFunction]) -> list[str]:
    """The description's `supervisorInterfaces`: the env names, then WASI."""
    return [f.name for f in offered] + [WASI]
