"""The agent's wasmtime runtime: calls, fuel, time and memory limits, argument checks,
host interfaces and import lists, on the example modules in examples/wasm/modules."""

from collections.abc import Iterator

import pytest
import wasmtime
from tests.support.agents import wat_bytes

from corral.agent.runtime import ArgumentError, CallFailed, ModuleInvalid, Runtime


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(fuel=1_000_000, memory_mb=64, call_timeout=10)
    yield rt
    rt.close()


def test_calls_double_and_add_ten(runtime: Runtime) -> None:
    double = runtime.compile(wat_bytes("double"))
    add_ten = runtime.compile(wat_bytes("add_ten"))
    assert runtime.call(double, "double", [21]).value == 42
    assert runtime.call(add_ten, "add_ten", [32]).value == 42
    assert double.functions["double"].params == ("i32",)
    assert double.functions["double"].results == ("i32",)


def test_compile_cache_by_sha256(runtime: Runtime) -> None:
    first = runtime.compile(wat_bytes("double"))
    assert runtime.compile(wat_bytes("double")) is first
    assert len(first.sha256) == 64


def test_not_a_module(runtime: Runtime) -> None:
    with pytest.raises(ModuleInvalid, match="not a WebAssembly binary"):
        runtime.compile(b"(module)")
    with pytest.raises(ModuleInvalid):
        runtime.compile(b"\0asm\x01\0\0\0\xff")


def test_spin_runs_out_of_fuel(runtime: Runtime) -> None:
    spin = runtime.compile(wat_bytes("spin"))
    with pytest.raises(CallFailed) as failed:
        runtime.call(spin, "spin")
    assert str(failed.value) == "out of fuel: the call used all 1000000 units (--fuel)"
    # the runtime keeps working after a failed call
    assert runtime.call(runtime.compile(wat_bytes("double")), "double", [2]).value == 4


def test_spin_stopped_by_the_time_limit() -> None:
    rt = Runtime(fuel=10**15, call_timeout=0.2)
    try:
        with pytest.raises(CallFailed) as failed:
            rt.call(rt.compile(wat_bytes("spin")), "spin")
    finally:
        rt.close()
    assert str(failed.value) == "time limit: the call ran longer than 0.2 s (--call-timeout)"


def test_grow_hits_the_memory_cap() -> None:
    rt = Runtime(memory_mb=4)
    try:
        with pytest.raises(CallFailed) as failed:
            rt.call(rt.compile(wat_bytes("grow")), "grow")
    finally:
        rt.close()
    message = str(failed.value)
    assert message.startswith("memory limit: ")
    assert "4 MiB (--memory-mb)" in message


def test_initial_memory_above_the_cap() -> None:
    rt = Runtime(memory_mb=1)
    try:
        big = rt.compile(wasmtime.wat2wasm('(module (memory 32) (func (export "f")))'))
        with pytest.raises(CallFailed, match=r"^memory limit: .*1 MiB \(--memory-mb\)"):
            rt.call(big, "f")
    finally:
        rt.close()


def test_trap_message(runtime: Runtime) -> None:
    module = runtime.compile(wasmtime.wat2wasm('(module (func (export "f") unreachable))'))
    with pytest.raises(CallFailed, match=r"^trap: wasm `unreachable` instruction executed$"):
        runtime.call(module, "f")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "parameter x: i32 takes a whole number, got True"),
        (1.5, "parameter x: i32 takes a whole number, got 1.5"),
        ("3", "parameter x: i32 takes a whole number, got '3'"),
        (2**40, "parameter x: 1099511627776 does not fit in i32"),
    ],
)
def test_wrong_param_types_rejected(runtime: Runtime, value: object, expected: str) -> None:
    double = runtime.compile(wat_bytes("double"))
    with pytest.raises(ArgumentError) as rejected:
        runtime.call(double, "double", [value], names=["x"])
    assert str(rejected.value) == expected


def test_argument_count_and_floats(runtime: Runtime) -> None:
    double = runtime.compile(wat_bytes("double"))
    with pytest.raises(ArgumentError, match="takes 1 argument"):
        runtime.call(double, "double", [])
    halve = runtime.compile(
        wasmtime.wat2wasm(
            '(module (func (export "h") (param f64) (result f64) local.get 0 f64.const 2 f64.div))'
        )
    )
    assert runtime.call(halve, "h", [3]).value == 1.5
    with pytest.raises(ArgumentError, match="f64 takes a number"):
        runtime.call(halve, "h", [False], names=["y"])


def test_sensor_offered_only_when_configured(runtime: Runtime) -> None:
    sensor = runtime.compile(wat_bytes("sensor"))
    assert runtime.missing_imports(sensor) == ["env.temperature"]
    assert "temperature" not in runtime.interfaces
    with pytest.raises(CallFailed, match="env::temperature"):
        runtime.call(sensor, "read_tenths")
    warm = Runtime(sensors={"temperature": 21.57})
    try:
        module = warm.compile(wat_bytes("sensor"))
        assert warm.missing_imports(module) == []
        assert warm.interfaces == ["millis", "print_int", "temperature", "wasi_snapshot_preview1"]
        assert warm.call(module, "read_tenths").value == 215
    finally:
        warm.close()


def test_imports_listed(runtime: Runtime) -> None:
    assert runtime.compile(wat_bytes("sensor")).imports == (("env", "temperature"),)
    hello = runtime.compile(wat_bytes("hello_wasi"))
    assert hello.imports == (("wasi_snapshot_preview1", "fd_write"),)
    assert runtime.missing_imports(hello) == []
    assert runtime.compile(wat_bytes("double")).imports == ()
    assert runtime.interfaces == ["millis", "print_int", "wasi_snapshot_preview1"]


def test_wasi_stdout_captured(runtime: Runtime) -> None:
    result = runtime.call(runtime.compile(wat_bytes("hello_wasi")), "hello")
    assert result.value == 0
    assert result.stdout == b"hello\n"


def test_env_millis_and_print_int(runtime: Runtime) -> None:
    module = runtime.compile(
        wasmtime.wat2wasm(
            '(module (import "env" "millis" (func $m (result i64)))'
            ' (import "env" "print_int" (func $p (param i32)))'
            ' (func (export "f") (result i64) (call $p (i32.const 7)) (call $m)))'
        )
    )
    assert runtime.missing_imports(module) == []
    value = runtime.call(module, "f").value
    assert isinstance(value, int)
    assert value >= 0


def test_agent_settings_defaults_and_checks() -> None:
    from pathlib import Path

    from pydantic import ValidationError

    from corral.agent.settings import AgentSettings

    settings = AgentSettings(name="dev-1", port=5001)
    assert settings.address == "127.0.0.1"
    assert settings.base_url == "http://127.0.0.1:5001"
    assert settings.folder == Path.home() / ".corral-agent" / "dev-1"
    assert settings.mdns_interface == "127.0.0.1"
    wide = AgentSettings(name="dev-2", bind="0.0.0.0", advertise_address="10.0.0.7")
    assert wide.base_url == "http://10.0.0.7:5000"
    assert wide.mdns_interface == "10.0.0.7"
    for bad in ({"name": "a.b"}, {"sensors": {"humidity": 1.0}}, {"orchestrator": "ftp://x"}):
        with pytest.raises(ValidationError):
            AgentSettings(**bad)  # type: ignore[arg-type]
