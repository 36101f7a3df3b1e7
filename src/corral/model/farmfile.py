"""The farm file: a declarative list of racks, beds and printers, with ranges of numeric
ids (`11-45`) so a whole farm fits in a few lines; errors name the line.

Parsed by the CLI (`corral farm apply`) and at start (`farm_file`); applied by the farm
service. A record's place (a bed's rack and slot, the bed in a printer) and a bed's state
are set when the record is created: the farm moves beds after that.
"""

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from corral.model.yamlfile import FileInvalid, Located, Problem, load_located

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$"
RANGE = re.compile(r"^(\d{1,9})-(\d{1,9})$")
MAX_RECORDS = 5000
# A bed's rack and slot go together: both given (not null), or neither (the schema says so).
RACK_WITH_SLOT: dict[str, Any] = {
    "anyOf": [
        {
            "required": ["rack", "slot"],
            "properties": {"rack": {"type": "string"}, "slot": {"type": "integer"}},
        },
        {"properties": {"rack": {"type": "null"}, "slot": {"type": "null"}}},
    ]
}


class RackEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    position: float = Field(default=0.0, ge=-1e6, le=1e6)
    slots: int = Field(default=10, ge=1, le=1000)


class BedEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=RACK_WITH_SLOT)

    id: str = Field(pattern=ID_PATTERN)
    type: str = Field(min_length=1, max_length=63)
    state: Literal["clean", "with_part", "dirty"] = "clean"
    rack: str | None = Field(default=None, pattern=ID_PATTERN)
    slot: int | None = Field(default=None, ge=1, le=1000)

    @model_validator(mode="after")
    def _slot_with_rack(self) -> "BedEntry":
        if (self.rack is None) != (self.slot is None):
            raise ValueError("rack and slot go together")
        return self


class PrinterEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    bed_type: str = Field(min_length=1, max_length=63)
    door: str = Field(default="", max_length=63, description="Default: printer<id>.")
    position: float = Field(default=0.0, ge=-1e6, le=1e6)
    bed: str | None = Field(default=None, pattern=ID_PATTERN, description="The bed in it.")

    @model_validator(mode="after")
    def _door(self) -> "PrinterEntry":
        self.door = self.door or f"printer{self.id}"  # as the seed's jobs: "printer14"
        return self


class FarmSpec(BaseModel):
    """A whole farm file, expanded: one entry per record."""

    model_config = ConfigDict(extra="forbid")

    racks: list[RackEntry] = Field(default_factory=list, max_length=MAX_RECORDS)
    beds: list[BedEntry] = Field(default_factory=list, max_length=MAX_RECORDS)
    printers: list[PrinterEntry] = Field(default_factory=list, max_length=MAX_RECORDS)

    @model_validator(mode="after")
    def _consistent(self) -> "FarmSpec":
        for kind in ("racks", "beds", "printers"):
            ids = [e.id for e in getattr(self, kind)]
            twice = sorted({i for i in ids if ids.count(i) > 1})
            if twice:
                raise ValueError(f"{kind[:-1]} {twice[0]} is listed twice")
        racks = {r.id: r for r in self.racks}
        slots: dict[tuple[str, int], str] = {}
        for bed in self.beds:
            if bed.rack is None or bed.slot is None:
                continue
            if bed.rack in racks and bed.slot > racks[bed.rack].slots:
                raise ValueError(f"bed {bed.id}: rack {bed.rack} has {racks[bed.rack].slots} slots")
            other = slots.setdefault((bed.rack, bed.slot), bed.id)
            if other != bed.id:
                raise ValueError(
                    f"beds {other} and {bed.id} are both in slot {bed.slot} of {bed.rack}"
                )
        held: dict[str, str] = {}
        for printer in self.printers:
            if printer.bed is not None:
                other = held.setdefault(printer.bed, printer.id)
                if other != printer.id:
                    raise ValueError(
                        f"printers {other} and {printer.id} both hold bed {printer.bed}"
                    )
        return self


def _ids(key: str) -> list[str] | None:
    """`801-840` -> ["801", ..., "840"]; a plain id -> [it]; None if the range is bad."""
    found = RANGE.match(key)
    if found is None:
        return [key]
    low, high = int(found[1]), int(found[2])
    if high < low or high - low >= MAX_RECORDS:
        return None
    return [str(i) for i in range(low, high + 1)]


def _expand(
    doc: Located, kind: str, problems: list[Problem]
) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """Each record of one section as (its key path, its fields with `id`)."""
    section = doc.data.get(kind) or {}
    if not isinstance(section, dict):
        problems.append(Problem(kind, doc.line_of((kind,)), "expected a mapping of ids"))
        return []
    out: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    for key, body in section.items():
        path = (kind, key)
        if not isinstance(body, dict):
            problems.append(Problem(f"{kind}.{key}", doc.line_of(path), "expected a mapping"))
            continue
        ids = _ids(key)
        if ids is None or "id" in body:
            what = "the id is the key above" if ids else f"a range is low-high, under {MAX_RECORDS}"
            problems.append(Problem(f"{kind}.{key}", doc.line_of(path), what))
            continue
        paired = _ids(str(body["bed"])) if kind == "printers" and "bed" in body else None
        if paired is not None and len(ids) > 1 and len(paired) != len(ids):
            what = f"bed {body['bed']} names {len(paired)} beds for {len(ids)} printers"
            problems.append(Problem(f"{kind}.{key}.bed", doc.line_of((*path, "bed")), what))
            continue
        for index, one in enumerate(ids):
            fields = {**body, "id": one}
            if paired is not None and len(ids) > 1:
                fields["bed"] = paired[index]  # a range of printers holds a range of beds
            first = str(body.get("slot", 1))
            if kind == "beds" and len(ids) > 1 and "rack" in body and first.isdigit():
                fields["slot"] = int(first) + index  # a range of beds fills slots in order
            out.append((path, fields))
    return out


def parse_farm_file(text: str, source: str = "farm file") -> FarmSpec:
    """Parse and validate a farm file; raise FileInvalid listing every problem."""
    doc = load_located(text, source)
    known = {"racks", "beds", "printers"}
    if not isinstance(doc.data, dict) or set(doc.data) - known:
        extra = sorted(set(doc.data) - known) if isinstance(doc.data, dict) else []
        where = doc.line_of((extra[0],)) if extra else 1
        what = f"unknown key {extra[0]!r}" if extra else "expected racks, beds and printers"
        raise FileInvalid(source, [Problem(extra[0] if extra else "", where, what)])
    problems: list[Problem] = []
    entries: dict[str, list[BaseModel]] = {"racks": [], "beds": [], "printers": []}
    models: dict[str, type[BaseModel]] = {
        "racks": RackEntry,
        "beds": BedEntry,
        "printers": PrinterEntry,
    }
    for kind, model in models.items():
        failed: set[tuple[str, ...]] = set()
        for path, fields in _expand(doc, kind, problems):
            if path in failed:
                continue  # one range gives one error, not one per id
            try:
                entries[kind].append(model.model_validate(fields))
            except ValidationError as exc:
                problems.extend(doc.problems_from(exc, path))
                failed.add(path)
    if problems:
        raise FileInvalid(source, problems)
    try:
        return FarmSpec.model_validate({k: [e.model_dump() for e in v] for k, v in entries.items()})
    except ValidationError as exc:
        found = [Problem("", 0, e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
        raise FileInvalid(source, found) from None
