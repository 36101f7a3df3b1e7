"""Four robots shuttling on crossing routes across a 5x5 grid (two along rows, two along
columns), so every trip contends for markers the others need; and an operator keeping them going.

Used by the fleet tests across replicas and leader cuts.
"""

import asyncio

import httpx

SHUTTLES = {
    "east": ("r1c0", "r1c4"),
    "west": ("r3c4", "r3c0"),
    "south": ("r0c1", "r4c1"),
    "north": ("r4c3", "r0c3"),
}


async def keep_shuttling(api: httpx.AsyncClient, stop: asyncio.Event, trips: list[int]) -> None:
    """Keep each shuttle on a mission: when its last one ended, send it back the other way
    (`trips[0]` counts the missions sent); a replica between leaders is asked again."""
    legs = {name: 1 for name in SHUTTLES}
    while not stop.is_set():
        try:
            active = (await api.get("/fleet/missions", params={"state": "active"})).json()
            busy = {m["robot"] for m in active} if isinstance(active, list) else set(SHUTTLES)
            for name, ends in SHUTTLES.items():
                if name in busy:
                    continue
                sent = await api.post(
                    "/fleet/missions", json={"robot": name, "goal": ends[legs[name] % 2]}
                )
                if sent.status_code == 201:
                    legs[name] += 1
                    trips[0] += 1
        except httpx.HTTPError:
            pass  # the replica asked is between leaders: ask again
        await asyncio.sleep(0.2)
