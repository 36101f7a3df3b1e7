"""Token routes (admin only): issue, list without secrets, revoke; plus `whoami` for anyone.

A token's secret is in the creation answer and nowhere else, ever.
"""

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.api.deps import Admin, CoreDep, Reader
from corral.model.names import NAME_PATTERN, check_name
from corral.model.views import Role, TokenView

router = APIRouter(tags=["tokens"])


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # the pattern is documented; check_name below refuses with a message that says it
    name: str = Field(
        min_length=1,
        max_length=63,
        examples=["ci-bot"],
        json_schema_extra={"pattern": NAME_PATTERN},
    )
    role: Role
    expires_in_seconds: int | None = Field(
        default=None, ge=60, le=10 * 365 * 86400, description="Lifetime; none: never expires."
    )
    subject: str | None = Field(
        default=None,
        max_length=63,
        description="The device or robot a device/robot token reaches; none: the token's name.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "token name")


class IssuedToken(BaseModel):
    token: str = Field(description="The secret. Shown only in this answer.")
    info: TokenView


class WhoAmI(BaseModel):
    token_id: int
    name: str
    role: Role


@router.get("/whoami", summary="Who the token belongs to")
async def whoami(caller: Reader) -> WhoAmI:
    return WhoAmI(token_id=caller.token_id, name=caller.name, role=caller.role)


@router.get("/tokens", summary="List tokens (never their secrets)")
async def list_tokens(core: CoreDep, _: Admin) -> list[TokenView]:
    return await core.access.tokens.list()


@router.post("/tokens", status_code=201, summary="Issue a token")
async def create_token(body: TokenRequest, core: CoreDep, caller: Admin) -> IssuedToken:
    expires = timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds else None
    subject = body.subject or (body.name if body.role in ("device", "robot") else "")
    view, secret = await core.access.issue(body.name, body.role, caller, expires, subject)
    return IssuedToken(token=secret, info=view)


@router.delete("/tokens/{token_id}", summary="Revoke a token")
async def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**53)], core: CoreDep, caller: Admin
) -> TokenView:
    return await core.access.revoke(token_id, caller)
