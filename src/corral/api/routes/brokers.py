"""Broker and trigger routes: connection states, trigger rules, and firing a trigger by
hand (the REST source)."""

from typing import Annotated

from fastapi import APIRouter, Body, Path

from corral.api.deps import CoreDep, Reader, Writer
from corral.model.views import BrokerView, TriggerView

router = APIRouter(tags=["brokers and triggers"])


@router.get("/brokers", summary="Broker connections and their state")
async def brokers(core: CoreDep, _: Reader) -> list[BrokerView]:
    return [link.view() for _, link in sorted(core.links.items())]


@router.get("/triggers", summary="Trigger rules and how often they fired")
async def triggers(core: CoreDep, _: Reader) -> list[TriggerView]:
    return core.triggers.views()


@router.post("/triggers/{name}/fire", summary="Fire a trigger with a body (text)")
async def fire(
    name: Annotated[str, Path(max_length=63)],
    core: CoreDep,
    _: Writer,
    body: Annotated[str, Body(media_type="text/plain", max_length=10_000)] = "",
) -> TriggerView:
    return await core.triggers.fire(name, body.encode())
