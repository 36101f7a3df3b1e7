"""The replicas' position batches: split under the payload limit, parsed back whole.

Pure: `_chunks` only, no database."""

import json

from corral.fleet.peers import MAX_PAYLOAD, _chunks


def test_chunks_split_under_the_limit_and_parse_back() -> None:
    items = [
        [f"robot-{i}", {"marker": f"r{i % 50}c{i % 80}", "x": i / 3}, 1764899999.125, i % 2 == 0]
        for i in range(700)
    ]
    for head in ({"f": "replica-a"}, {}):
        texts = _chunks(head, "r", items)
        assert len(texts) > 1
        assert all(len(text) < MAX_PAYLOAD for text in texts)
        parsed = [json.loads(text) for text in texts]
        assert all({k: v for k, v in p.items() if k != "r"} == head for p in parsed)
        assert [item for p in parsed for item in p["r"]] == items


def test_chunks_of_nothing_is_nothing() -> None:
    assert _chunks({"f": "a"}, "g", []) == []
    assert json.loads(_chunks({"f": "a"}, "g", ["x"])[0]) == {"f": "a", "g": ["x"]}
