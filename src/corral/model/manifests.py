"""Deployment manifests: parsing a `sequence`, placing its steps on devices, and building
the part of the deployment that each device is sent (the supervisor's /deploy body).

Pure functions; the deployment service feeds them devices and modules from the store.
"""

from dataclasses import dataclass, field
from typing import Any

from corral.errors import Conflict, Invalid
from corral.model.wasm_modules import (
    check_wasm_name,
    endpoint_request,
    endpoint_response,
    missing_interfaces,
)

MAX_STEPS = 32
STEP_KEYS = {"device", "module", "func", "failovers"}


@dataclass(frozen=True)
class StepRequest:
    """One manifest step as written: device may be None (corral chooses)."""

    device: str | None
    module: str
    func: str
    failovers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """A device as placement sees it."""

    name: str
    url: str
    interfaces: tuple[str, ...]
    usable: bool
    why_not: str = ""
    load: int = 0


@dataclass
class Placed:
    """A step bound to a module version, a function description and a device."""

    device: str
    module_id: str
    module_name: str
    func: str
    description: dict[str, Any]
    requirements: list[dict[str, str]]
    failovers: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "module_id": self.module_id,
            "module_name": self.module_name,
            "func": self.func,
            "description": self.description,
            "requirements": self.requirements,
            "failovers": self.failovers,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> "Placed":
        return Placed(
            data["device"],
            data["module_id"],
            data["module_name"],
            data["func"],
            data["description"],
            data["requirements"],
            list(data.get("failovers", [])),
        )


def parse_manifest(body: Any) -> tuple[str, list[StepRequest]]:
    """Validate `{name, sequence: [{device?, module, func, failovers?}]}`."""
    if not isinstance(body, dict):
        raise Invalid("the manifest must be a JSON object {name, sequence}")
    unknown = set(body) - {"name", "sequence"}
    if unknown:
        raise Invalid(f"unknown manifest key(s): {', '.join(sorted(unknown))}")
    name = check_wasm_name(body.get("name"), "manifest")
    sequence = body.get("sequence")
    if not isinstance(sequence, list) or not sequence:
        raise Invalid("sequence must be a non-empty list of steps", {"field": "sequence"})
    if len(sequence) > MAX_STEPS:
        raise Invalid(f"sequence has {len(sequence)} steps; at most {MAX_STEPS}")
    steps: list[StepRequest] = []
    for index, raw in enumerate(sequence):
        where = f"sequence[{index}]"
        if not isinstance(raw, dict):
            raise Invalid(f"{where} must be an object {{device, module, func}}")
        extra = set(raw) - STEP_KEYS
        if extra:
            raise Invalid(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        device, module, func = raw.get("device"), raw.get("module"), raw.get("func")
        if device is not None and (not isinstance(device, str) or not device):
            raise Invalid(f"{where}.device must be a device name or null")
        if not isinstance(module, str) or not module:
            raise Invalid(f"{where}.module must name a module")
        if not isinstance(func, str) or not func:
            raise Invalid(f"{where}.func must name a function")
        failovers = raw.get("failovers", [])
        if not isinstance(failovers, list) or not all(isinstance(f, str) for f in failovers):
            raise Invalid(f"{where}.failovers must be a list of device names")
        steps.append(StepRequest(device, module, func, tuple(failovers)))
    return name, steps


def choose_device(
    index: int,
    requirements: list[dict[str, str]],
    candidates: list[Candidate],
    wanted: str | None,
    avoid: frozenset[str] = frozenset(),
    load: dict[str, int] | None = None,
) -> str:
    """The device for one step: the wanted one if it fits, else the least-loaded usable
    device offering every import. Raises naming why nothing fits."""
    where = f"step {index}"
    by_name = {c.name: c for c in candidates}
    load = load if load is not None else {}
    if wanted is not None:
        candidate = by_name.get(wanted)
        if candidate is None:
            raise Invalid(f"{where}: unknown device {wanted!r}", {"device": wanted})
        if not candidate.usable:
            raise Conflict(f"{where}: device {wanted!r} {candidate.why_not}", {"device": wanted})
        missing = missing_interfaces(requirements, list(candidate.interfaces))
        if missing:
            raise Invalid(
                f"{where}: device {wanted!r} does not offer {', '.join(missing)}",
                {"device": wanted, "missing": missing},
            )
        return wanted
    fits = [
        c
        for c in candidates
        if c.usable
        and c.name not in avoid
        and not missing_interfaces(requirements, list(c.interfaces))
    ]
    if not fits:
        needs = ", ".join(f"{r['module']}.{r['name']}" for r in requirements) or "nothing"
        raise Conflict(
            f"{where}: no active device offers what the module imports ({needs})",
            {"step": index},
        )
    best = min(fits, key=lambda c: (c.load + load.get(c.name, 0), c.name))
    return best.name


def same_function_devices(steps: list[Placed], index: int) -> frozenset[str]:
    """Devices that run the function of step `index` at another step of the chain: a
    device keys its chain instructions by module and function, so it can hold each
    function once per deployment."""
    step = steps[index]
    return frozenset(
        other.device
        for at, other in enumerate(steps)
        if at != index and (other.module_name, other.func) == (step.module_name, step.func)
    )


def check_repeats(steps: list[Placed]) -> None:
    """Refuse a chain that puts one function on one device twice (its instructions
    would say two different things)."""
    for index, step in enumerate(steps):
        if step.device in same_function_devices(steps, index):
            raise Invalid(
                f"step {index}: {step.module_name}.{step.func} runs on {step.device!r} at "
                "another step too; a device runs each function once per deployment, so "
                "name another device for one of them",
                {"step": index, "device": step.device},
            )


def build_parts(
    deployment_id: str,
    steps: list[Placed],
    device_urls: dict[str, str],
    public_url: str,
) -> dict[str, dict[str, Any]]:
    """Each device's /deploy body: its modules, endpoints, chain instructions, mounts."""
    base = public_url.rstrip("/")
    endpoints = [
        {
            "url": device_urls[step.device].rstrip("/") + "/",
            "path": f"/{deployment_id}/modules/{step.module_name}/{step.func}",
            # lower case: a supervisor calls the next step with getattr(requests, method)
            "method": step.description["method"].lower(),
            "request": endpoint_request(step.description),
            "response": endpoint_response(step.description),
        }
        for step in steps
    ]
    parts: dict[str, dict[str, Any]] = {}
    for index, step in enumerate(steps):
        part = parts.setdefault(
            step.device,
            {
                "deploymentId": deployment_id,
                "modules": [],
                "endpoints": {},
                "instructions": {"modules": {}},
                "mounts": {},
            },
        )
        if not any(m["id"] == step.module_id for m in part["modules"]):
            files = [
                m["name"] for m in step.description.get("mounts", []) if m["stage"] == "deployment"
            ]
            module_url = f"{base}/file/module/{step.module_id}"
            part["modules"].append(
                {
                    "id": step.module_id,
                    "name": step.module_name,
                    "urls": {
                        "binary": f"{module_url}/wasm",
                        "description": f"{module_url}/description",
                        "other": {name: f"{module_url}/{name}" for name in files},
                    },
                }
            )
        part["endpoints"].setdefault(step.module_name, {})[step.func] = endpoints[index]
        part["instructions"]["modules"].setdefault(step.module_name, {})[step.func] = {
            "from": endpoints[index - 1] if index > 0 else None,
            "to": endpoints[index + 1] if index + 1 < len(steps) else None,
        }
        stages: dict[str, list[dict[str, str]]] = {"execution": [], "deployment": [], "output": []}
        for mount in step.description.get("mounts", []):
            stages[mount["stage"]].append({"path": mount["name"], "stage": mount["stage"]})
        part["mounts"].setdefault(step.module_name, {})[step.func] = stages
    return parts


def default_description(export: dict[str, Any]) -> dict[str, Any]:
    """A function nobody described: GET, parameters p0.. typed from the wasm signature."""
    kinds = {"i32": "integer", "i64": "integer", "f32": "number", "f64": "number"}
    results = export.get("results", [])
    return {
        "method": "GET",
        "parameters": [
            {"name": f"p{i}", "type": kinds.get(kind, "integer")}
            for i, kind in enumerate(export.get("params", []))
        ],
        "output": kinds.get(results[0], "integer") if results else "integer",
        "mounts": [],
    }
