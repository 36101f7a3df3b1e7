"""VDA 5050 orders from corral's routes and reservations: the released part (base) is what
the traffic granted, the rest of the route is the horizon; each grant is an order update
that stitches on the last base node (same orderId, next orderUpdateId, sequenceIds going on).
"""

from dataclasses import dataclass
from typing import Any

from corral.model.fleet_map import FleetMap, lane_key


@dataclass
class OrderPlan:
    """One vehicle's current order as corral sent it: the id, the last update sent (-1:
    none yet), and the last base node with its sequenceId (where the next update stitches)."""

    order_id: str
    update_id: int = -1
    base_end: str | None = None
    base_end_seq: int = 0

    def update(
        self,
        fmap: FleetMap,
        route: list[str],
        granted: str,
        node_actions: dict[str, list[dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        """The next order update for a vehicle whose remaining route is `route` (from the
        node it stands on or drives to last, route[0]) and whose reservations now reach
        `granted` (a node of the route): base up to it, horizon after it. Without an update
        sent yet, route[0] is where the vehicle stands and starts the order at sequenceId 0.
        `node_actions` (nodeId -> VDA 5050 actions) go on those nodes past route[0].
        """
        if granted not in route:
            raise ValueError(f"{granted} is not on the route {route}")
        if self.update_id >= 0 and route[0] != self.base_end:
            raise ValueError(f"an update must start at the last base node {self.base_end}")
        released = route.index(granted)
        start = self.base_end_seq if self.update_id >= 0 else 0
        nodes, edges = order_graph(fmap, route, released, start, node_actions or {})
        self.update_id += 1
        self.base_end, self.base_end_seq = granted, start + 2 * released
        return {
            "orderId": self.order_id,
            "orderUpdateId": self.update_id,
            "nodes": nodes,
            "edges": edges,
        }


def order_graph(
    fmap: FleetMap,
    route: list[str],
    released: int,
    first_seq: int,
    node_actions: dict[str, list[dict[str, Any]]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Nodes and edges of `route`; the first `released` stretches (and route[0]) are base.
    Node i has sequenceId first_seq + 2i, the edge after it first_seq + 2i + 1. Nodes past
    route[0] named in `node_actions` carry those actions (route[0] was reached already)."""
    node_actions = node_actions or {}
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for i, node in enumerate(route):
        marker = fmap.markers[node]
        nodes.append(
            {
                "nodeId": node,
                "sequenceId": first_seq + 2 * i,
                "released": i <= released,
                "nodePosition": {"x": marker.x, "y": marker.y, "mapId": fmap.name},
                "actions": node_actions.get(node, []) if i > 0 else [],
            }
        )
        if i + 1 < len(route):
            edges.append(
                {
                    "edgeId": lane_key(node, route[i + 1]),
                    "sequenceId": first_seq + 2 * i + 1,
                    "released": i + 1 <= released,
                    "startNodeId": node,
                    "endNodeId": route[i + 1],
                    "actions": [],
                }
            )
    return nodes, edges


def base_of(order: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The released node ids and edge ids of an order message."""
    nodes = [n["nodeId"] for n in order.get("nodes", []) if n.get("released")]
    edges = [e["edgeId"] for e in order.get("edges", []) if e.get("released")]
    return nodes, edges
