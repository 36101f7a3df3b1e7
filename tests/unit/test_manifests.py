"""Pure logic of Wasm deployments: manifest parsing, placement by imports and load, the
parts each device is sent, module inspection and function descriptions."""

from typing import Any

import pytest
import wasmtime

from corral.errors import Conflict, Invalid
from corral.model.manifests import (
    Candidate,
    Placed,
    build_parts,
    check_repeats,
    choose_device,
    default_description,
    parse_manifest,
    same_function_devices,
)
from corral.model.wasm_modules import (
    bracketed_fields,
    check_function,
    from_seed_form,
    functions_from_openapi,
    inspect_wasm,
    missing_interfaces,
    openapi,
)

SENSOR = [{"module": "env", "name": "temperature"}]
WASI = [{"module": "wasi_snapshot_preview1", "name": "fd_write"}]


def _wasm(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def test_inspect_records_exports_and_function_imports() -> None:
    found = inspect_wasm(
        _wasm(
            '(module (import "env" "temperature" (func (result f32)))'
            ' (memory (export "memory") 1)'
            ' (func (export "scale") (param i32 f64) (result f64) local.get 1))'
        )
    )
    assert found.exports == [
        {"name": "scale", "parameterCount": 2, "params": ["i32", "f64"], "results": ["f64"]}
    ]
    assert found.requirements == SENSOR


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello", "not a WebAssembly binary"),
        (b"\0asm\x01\0\0\0\xff\xff", "not valid WebAssembly"),
    ],
)
def test_inspect_refuses_what_is_not_wasm(data: bytes, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        inspect_wasm(data, "bad.wasm")


def test_missing_interfaces_counts_wasi_as_a_whole() -> None:
    assert missing_interfaces(SENSOR + WASI, ["wasi_snapshot_preview1"]) == ["env.temperature"]
    assert missing_interfaces(SENSOR + WASI, ["temperature", "wasi_snapshot_preview1"]) == []


def test_parse_manifest_names_each_problem() -> None:
    name, steps = parse_manifest(
        {"name": "c", "sequence": [{"module": "a", "func": "f", "device": None}]}
    )
    assert name == "c"
    assert steps[0].device is None
    _, repeated = parse_manifest({"name": "c", "sequence": [{"module": "a", "func": "f"}] * 2})
    assert [(s.module, s.func) for s in repeated] == [("a", "f"), ("a", "f")]
    cases: list[tuple[Any, str]] = [
        ([], "JSON object"),
        ({"name": "c", "sequence": []}, "non-empty"),
        ({"name": "c d", "sequence": [{"module": "a", "func": "f"}]}, "manifest name"),
        ({"name": "c", "sequence": [{"module": "a"}]}, r"sequence\[0\].func"),
        ({"name": "c", "sequence": [{"module": "a", "func": "f", "x": 1}]}, "unknown key"),
        ({"name": "c", "sequence": [{"module": "a", "func": "f"}], "extra": 1}, "extra"),
    ]
    for body, message in cases:
        with pytest.raises(Invalid, match=message):
            parse_manifest(body)


def _devices() -> list[Candidate]:
    return [
        Candidate("a", "http://a:1", ("wasi_snapshot_preview1",), True, load=2),
        Candidate("b", "http://b:1", ("temperature", "wasi_snapshot_preview1"), True, load=0),
        Candidate("c", "http://c:1", ("temperature",), False, "is inactive"),
        Candidate("d", "http://d:1", ("wasi_snapshot_preview1",), True, load=0),
    ]


def test_placement_covers_imports_spreads_load_and_skips_inactive() -> None:
    assert choose_device(0, SENSOR, _devices(), None) == "b"
    assert choose_device(0, WASI, _devices(), None) == "b"
    assert choose_device(0, WASI, _devices(), None, load={"b": 1}) == "d"
    assert choose_device(0, WASI, _devices(), None, avoid=frozenset({"b", "d"})) == "a"
    with pytest.raises(Conflict, match="no active device offers"):
        choose_device(1, SENSOR, _devices(), None, avoid=frozenset({"b"}))
    with pytest.raises(Conflict, match="is inactive"):
        choose_device(0, [], _devices(), "c")
    with pytest.raises(Invalid, match=r"does not offer env\.temperature"):
        choose_device(0, SENSOR, _devices(), "a")
    with pytest.raises(Invalid, match="unknown device 'z'"):
        choose_device(0, [], _devices(), "z")


def test_parts_chain_each_step_to_the_next_device() -> None:
    first = Placed("a", "m1", "double", "double", default_description(_export("i32")), [])
    second = Placed("b", "m2", "add_ten", "add_ten", default_description(_export("i32")), [])
    parts = build_parts(
        "dep", [first, second], {"a": "http://a:1", "b": "http://b:1/"}, "http://o/"
    )
    assert sorted(parts) == ["a", "b"]
    to = parts["a"]["instructions"]["modules"]["double"]["double"]["to"]
    assert to["url"] == "http://b:1/"
    assert to["path"] == "/dep/modules/add_ten/add_ten"
    assert parts["b"]["instructions"]["modules"]["add_ten"]["add_ten"]["to"] is None
    assert parts["a"]["modules"][0]["urls"]["binary"] == "http://o/file/module/m1/wasm"
    assert parts["a"]["mounts"]["double"]["double"] == {
        "execution": [],
        "deployment": [],
        "output": [],
    }
    # lower case: a supervisor calls the next step with getattr(requests, method)
    assert to["method"] == "get"
    assert parts["b"]["endpoints"]["add_ten"]["add_ten"]["method"] == "get"
    assert parts["b"]["endpoints"]["add_ten"]["add_ten"]["request"]["parameters"] == [
        {"name": "p0", "in": "query", "required": True, "schema": {"type": "integer"}}
    ]


def test_a_function_repeats_in_a_chain_on_other_devices_only() -> None:
    def step(device: str) -> Placed:
        return Placed(device, "m1", "double", "double", default_description(_export("i32")), [])

    steps = [step("a"), step("b"), step("a")]
    assert same_function_devices(steps, 1) == {"a"}
    check_repeats(steps[:2])
    with pytest.raises(Invalid, match=r"double\.double runs on 'a' at another step"):
        check_repeats(steps)


def test_the_orchestrators_description_forms_are_read() -> None:
    assert from_seed_form({"method": "GET", "param1": "integer", "param0": "string"}) == {
        "method": "GET",
        "parameters": [{"name": "param0", "type": "string"}, {"name": "param1", "type": "integer"}],
    }
    with pytest.raises(Invalid, match="not both"):
        from_seed_form({"param0": "integer", "parameters": []})
    fields = {"fibo[method]": "GET", "fibo[param0]": "integer", "name": "x", "a[b][c]": "1"}
    assert bracketed_fields(fields) == {"fibo": {"method": "GET", "param0": "integer"}}
    exports = [{**_export("i32"), "name": "fibo"}]
    checked = check_function("fibo", {"method": "get", "param0": "integer"}, exports, set())
    assert checked["parameters"] == [{"name": "param0", "type": "integer"}]
    assert checked["method"] == "GET"


def test_functions_are_read_back_from_an_exported_openapi_description() -> None:
    description = openapi(
        "m",
        {
            "f": {
                "method": "POST",
                "parameters": [{"name": "n", "type": "integer"}],
                "output": "integer",
                "mounts": [],
            }
        },
    )
    read = functions_from_openapi(description, {"f": {"in.bin": {"stage": "execution"}}}, {"f"})
    assert read == {
        "f": {
            "method": "POST",
            "parameters": [{"name": "n", "type": "integer"}],
            "output": "integer",
            "mounts": [{"name": "in.bin", "stage": "execution"}],
        }
    }
    assert functions_from_openapi(description, None, {"other"}) == {}


def _export(*params: str) -> dict[str, Any]:
    return {"name": "f", "parameterCount": len(params), "params": list(params), "results": ["i32"]}


def test_function_descriptions_are_checked_against_the_module() -> None:
    exports = [{**_export("i32"), "name": "double"}]
    good = check_function(
        "double",
        {"method": "post", "parameters": [{"name": "x", "type": "integer"}]},
        exports,
        set(),
    )
    assert good["method"] == "POST"
    assert "/{deployment}/modules/m/double" in openapi("m", {"double": good})["paths"]
    bad: list[tuple[str, Any, str]] = [
        ("triple", {}, "exports no such function"),
        ("double", {"parameters": []}, "takes 1"),
        ("double", {"parameters": [{"name": "x", "type": "blob"}]}, "type 'blob'"),
        ("double", {"method": "PUT"}, "GET or POST"),
        ("double", {"parameters": [{"name": "x"}], "colour": 1}, "unknown key"),
        (
            "double",
            {"parameters": [{"name": "x"}], "mounts": [{"name": "m.bin", "stage": "deployment"}]},
            "no such data file",
        ),
    ]
    for func, body, message in bad:
        with pytest.raises(Invalid, match=message):
            check_function(func, body, exports, set())
