"""Host routes: register Docker engines, read their state, relabel, refresh and remove them.

`PUT /hosts` applies a whole hosts file (declarative, idempotent); the rest act on one host.
"""

from typing import Annotated

from fastapi import APIRouter, Body, Path, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from corral.api.deps import CoreDep, Reader, Writer
from corral.errors import Invalid
from corral.model.hosts import (
    ENGINE_URL_PATTERN,
    MAX_LABELS,
    TRANSPORT_WITH_SCHEME,
    URL_NOTE,
    HostSpec,
    SshOptions,
    TlsFiles,
)
from corral.model.names import NAME_PATTERN, labels_schema
from corral.model.views import HostView

router = APIRouter(prefix="/hosts", tags=["hosts"])
HostName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63, description="Host name.")]


class HostBody(BaseModel):
    """A host without its name, for `PUT /hosts/{name}`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=TRANSPORT_WITH_SCHEME)

    url: str = Field(
        min_length=1,
        max_length=2048,
        examples=["tcp://10.231.0.2:2375"],
        json_schema_extra={"pattern": ENGINE_URL_PATTERN},
        description=URL_NOTE,
    )
    labels: dict[str, str] = Field(
        default_factory=dict, max_length=MAX_LABELS, json_schema_extra=labels_schema()
    )
    tls: TlsFiles | None = None
    ssh: SshOptions | None = None
    insecure: StrictBool = Field(
        default=False, description="Accept plain tcp:// or unverified TLS."
    )


class HostsApply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hosts: list[HostSpec] = Field(max_length=1000)
    prune: StrictBool = Field(default=False, description="Remove hosts not in the list.")


class ApplyResult(BaseModel):
    outcomes: dict[str, str] = Field(description="created, updated, unchanged or removed.")


def _spec(name: str, body: HostBody) -> HostSpec:
    try:
        return HostSpec(
            name=name,
            url=body.url,
            labels=body.labels,
            tls=body.tls,
            ssh=body.ssh,
            insecure=body.insecure,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise Invalid(f"{where}: {message}" if where else message, {"host": name}) from None


@router.get("", summary="List hosts")
async def list_hosts(core: CoreDep, _: Reader) -> list[HostView]:
    return await core.hosts.views()


@router.post("", status_code=201, summary="Register a host")
async def add_host(spec: HostSpec, core: CoreDep, _: Writer) -> HostView:
    """Register an engine; 409 if the name is taken. The first check runs before answering."""
    return await core.hosts.add(spec)


@router.put("", summary="Apply a hosts file")
async def apply_hosts(body: HostsApply, core: CoreDep, _: Writer) -> ApplyResult:
    names = [spec.name for spec in body.hosts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise Invalid(f"host {duplicates[0]!r} is listed twice", {"hosts": duplicates})
    return ApplyResult(outcomes=await core.hosts.apply(body.hosts, body.prune))


@router.get("/{name}", summary="Inspect a host")
async def get_host(name: HostName, core: CoreDep, _: Reader) -> HostView:
    return await core.hosts.view(name)


@router.put(
    "/{name}",
    summary="Create or update a host",
    responses={201: {"model": HostView, "description": "Created"}},
)
async def put_host(
    name: HostName, body: HostBody, core: CoreDep, _: Writer, response: Response
) -> HostView:
    view, outcome = await core.hosts.put(_spec(name, body))
    if outcome == "created":
        response.status_code = 201
    return view


@router.patch("/{name}/labels", summary="Change a host's labels")
async def label_host(
    name: HostName,
    changes: Annotated[
        dict[str, str | None],
        Body(
            max_length=MAX_LABELS,
            json_schema_extra=labels_schema(nullable=True),
            examples=[{"role": "edge", "zone": None}],
            description="Labels to set; null removes one. Others are kept.",
        ),
    ],
    core: CoreDep,
    _: Writer,
) -> HostView:
    """Set or remove labels of an existing host (its URL and TLS stay); placement uses the
    new labels at the stacks' next pass."""
    return await core.hosts.set_labels(name, changes)


@router.post("/{name}/refresh", summary="Check a host now")
async def refresh_host(name: HostName, core: CoreDep, _: Writer) -> HostView:
    return await core.hosts.check(name)


@router.delete("/{name}", status_code=204, summary="Remove a host")
async def remove_host(name: HostName, core: CoreDep, _: Writer) -> None:
    """Forget the host; containers on the engine are left as they are."""
    await core.hosts.remove(name)
