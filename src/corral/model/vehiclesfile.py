"""The vehicles file: VDA 5050 vehicles declared as robots (`corral robot apply-vda`).

`vehicles:` maps each robot name to `{manufacturer, serial_number, map?, marker?, group?,
priority?}`; every problem is listed with its line.
"""

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.model.names import NAME_PATTERN
from corral.model.yamlfile import FileInvalid, Problem, load_located

TOPIC_LEVEL = r"^[A-Za-z0-9_.-]{1,127}$"  # one MQTT topic level, no wildcards or slashes


class VehicleSpec(BaseModel):
    """One vehicle of the file: its robot name and VDA 5050 identity, where it starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    manufacturer: str = Field(pattern=TOPIC_LEVEL)
    serial_number: str = Field(pattern=TOPIC_LEVEL)
    group: str = Field(default="", max_length=63)
    priority: int = Field(default=0, ge=-1000, le=1000)
    map: str | None = Field(default=None, max_length=63)
    marker: str | None = Field(default=None, max_length=63)


def parse_vehicles_file(text: str, source: str = "vehicles file") -> list[VehicleSpec]:
    """Parse and check a vehicles file; FileInvalid listing every problem (with its line),
    a manufacturer/serial_number given to two names among them."""
    doc = load_located(text, source)
    if not isinstance(doc.data, dict) or set(doc.data) - {"vehicles"}:
        extra = sorted(set(doc.data) - {"vehicles"}) if isinstance(doc.data, dict) else []
        where = doc.line_of((extra[0],)) if extra else 1
        what = f"unknown key {extra[0]!r}" if extra else "expected a mapping with a 'vehicles' key"
        raise FileInvalid(source, [Problem(extra[0] if extra else "", where, what)])
    vehicles = doc.data.get("vehicles") or {}
    if not isinstance(vehicles, dict):
        line = doc.line_of(("vehicles",))
        raise FileInvalid(source, [Problem("vehicles", line, "expected a mapping of robot names")])
    specs: list[VehicleSpec] = []
    problems: list[Problem] = []
    owners: dict[tuple[str, str], str] = {}
    for name, body in vehicles.items():
        if not isinstance(body, dict):
            line = doc.line_of(("vehicles", name))
            problems.append(Problem(f"vehicles.{name}", line, "expected a mapping"))
            continue
        if "name" in body:
            line = doc.line_of(("vehicles", name, "name"))
            problems.append(Problem(f"vehicles.{name}.name", line, "the name is the key above"))
            continue
        try:
            spec = VehicleSpec.model_validate({"name": name, **body})
        except ValidationError as exc:
            problems.extend(doc.problems_from(exc, ("vehicles", name)))
            continue
        identity = (spec.manufacturer, spec.serial_number)
        if identity in owners:
            line = doc.line_of(("vehicles", name, "serial_number"))
            problems.append(
                Problem(
                    f"vehicles.{name}.serial_number",
                    line,
                    f"{identity[0]}/{identity[1]} is vehicle {owners[identity]} already",
                )
            )
            continue
        owners[identity] = name
        specs.append(spec)
    if problems:
        raise FileInvalid(source, problems)
    return specs
