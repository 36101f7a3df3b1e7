"""Compile every examples/wasm/modules/*.wat to a .wasm next to it (with wasmtime.wat2wasm).

Run it as `.venv/bin/python examples/wasm/build.py`; tests compile the text themselves.
"""

import sys
from pathlib import Path

import wasmtime

MODULES = Path(__file__).resolve().parent / "modules"


def build(folder: Path = MODULES) -> list[Path]:
    built = []
    for source in sorted(folder.glob("*.wat")):
        target = source.with_suffix(".wasm")
        target.write_bytes(wasmtime.wat2wasm(source.read_text(encoding="utf-8")))
        built.append(target)
    return built


if __name__ == "__main__":
    for path in build(Path(sys.argv[1]) if len(sys.argv) > 1 else MODULES):
        print(f"built {path}")
