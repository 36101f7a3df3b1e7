"""The farm file: ranges expand to records, and every bad file names its line."""

from pathlib import Path

import pytest

from corral.model.farmfile import parse_farm_file
from corral.model.yamlfile import FileInvalid

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "printfarm" / "farm.yml"


def test_the_example_expands_to_the_seed_farm() -> None:
    spec = parse_farm_file(EXAMPLE.read_text())
    assert [r.id for r in spec.racks] == ["A", "B"]
    assert [p.id for p in spec.printers] == [str(i) for i in range(11, 46)]
    first = spec.printers[0]
    assert (first.bed, first.door, first.bed_type) == ("511", "printer11", "pei")
    assert spec.printers[-1].bed == "545"
    rack_b = [b for b in spec.beds if b.rack == "B"]
    assert (rack_b[0].id, rack_b[0].slot, rack_b[-1].id, rack_b[-1].slot) == ("841", 1, "880", 40)
    inside = [b for b in spec.beds if b.rack is None]
    assert len(inside) == 35
    assert all(b.state == "with_part" for b in inside)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("printers:\n  14: {bed_type: pei}\nrobots: {}\n", "line 3: robots: unknown key 'robots'"),
        (
            "printers:\n  14: {bed_type: pei, colour: red}\n",
            "line 2: printers.14.colour: unknown key",
        ),
        ("printers:\n  14: {door: d}\n", "line 2: printers.14.bed_type: Field required"),
        ("beds:\n  45-11: {type: pei}\n", "line 2: beds.45-11: a range is low-high"),
        (
            "beds:\n  1-3: {type: pei}\nprinters:\n  11-12: {bed_type: pei, bed: 1-3}\n",
            "line 4: printers.11-12.bed: bed 1-3 names 3 beds for 2 printers",
        ),
        ("racks:\n  A: {slots: 0}\n", "line 2: racks.A.slots: Input should be greater than"),
        ("racks: [A]\n", "line 1: racks: expected a mapping of ids"),
        ("beds:\n  b1: {type: pei, rack: A}\n", "rack and slot go together"),
        (
            "racks:\n  A: {slots: 2}\nbeds:\n  1-3: {type: pei, rack: A}\n",
            "bed 3: rack A has 2 slots",
        ),
        (
            "beds:\n  1: {type: pei}\nprinters:\n  11: {bed_type: p, bed: 1}\n"
            "  12: {bed_type: p, bed: 1}\n",
            "printers 11 and 12 both hold bed 1",
        ),
        (
            "printers:\n  14: {bed_type: pei}\n  14: {bed_type: pla}\n",
            "line 3: printers.14: key appears twice",
        ),
        ("printers: {a b: {bed_type: pei}}\n", "printers.a b.id: String should match pattern"),
    ],
)
def test_bad_files_name_the_problem(text: str, expected: str) -> None:
    with pytest.raises(FileInvalid) as caught:
        parse_farm_file(text, "farm.yml")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("farm.yml: ")
