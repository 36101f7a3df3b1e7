"""Orders built from routes and grants: base = what was granted, horizon = the rest, updates
stitch on the last base node with growing orderUpdateIds and sequenceIds."""

import pytest

from corral.fleet.vda5050.messages import Headers, Topics, decode, problems
from corral.model.fleet_map import grid_map
from corral.model.vda_orders import OrderPlan, base_of

GRID = grid_map("g", 3, 3)


def _message(body: dict[str, object]) -> dict[str, object]:
    return {**Headers("acme", "sn1").header("order"), **body}


def test_first_order_releases_only_the_granted_stretch() -> None:
    plan = OrderPlan("mission-1")
    order = plan.update(GRID, ["r0c0", "r0c1", "r0c2", "r1c2"], "r0c1")
    assert problems("order", _message(order)) == []
    assert order["orderUpdateId"] == 0
    assert base_of(order) == (["r0c0", "r0c1"], ["r0c0|r0c1"])
    horizon = [n["nodeId"] for n in order["nodes"] if not n["released"]]
    assert horizon == ["r0c2", "r1c2"]
    assert [n["sequenceId"] for n in order["nodes"]] == [0, 2, 4, 6]
    assert [e["sequenceId"] for e in order["edges"]] == [1, 3, 5]


def test_update_stitches_on_the_last_base_node() -> None:
    plan = OrderPlan("mission-1")
    plan.update(GRID, ["r0c0", "r0c1", "r0c2", "r1c2"], "r0c1")
    update = plan.update(GRID, ["r0c1", "r0c2", "r1c2"], "r0c2")
    assert update["orderId"] == "mission-1"
    assert update["orderUpdateId"] == 1
    first = update["nodes"][0]
    assert (first["nodeId"], first["sequenceId"], first["released"]) == ("r0c1", 2, True)
    assert base_of(update) == (["r0c1", "r0c2"], ["r0c1|r0c2"])
    assert [n["sequenceId"] for n in update["nodes"]] == [2, 4, 6]
    # a re-route keeps stitching on the last base node
    again = plan.update(GRID, ["r0c2", "r1c2"], "r1c2")
    assert again["orderUpdateId"] == 2
    assert again["nodes"][0]["sequenceId"] == 4
    assert all(n["released"] for n in again["nodes"])


def test_update_refuses_a_route_not_starting_at_the_base_end() -> None:
    plan = OrderPlan("m")
    plan.update(GRID, ["r0c0", "r0c1"], "r0c1")
    with pytest.raises(ValueError, match="last base node"):
        plan.update(GRID, ["r0c0", "r1c0"], "r1c0")


def test_topics_and_bad_messages() -> None:
    topics = Topics()
    assert topics.of("acme", "sn1", "order") == "uagv/v2/acme/sn1/order"
    assert topics.parse("uagv/v2/acme/sn1/state") == ("acme", "sn1", "state")
    assert topics.parse("uagv/v1/acme/sn1/state") is None
    assert Topics("fleet", "v3").inbound("state") == "fleet/v3/+/+/state"
    assert decode("state", b"{nope")[1][0].startswith("not JSON")
    message, found = decode("connection", b'{"headerId": 1}')
    assert message == {"headerId": 1}
    assert any("connectionState" in p for p in found)
    assert problems("nonsense", {}) == ["unknown topic 'nonsense'"]
