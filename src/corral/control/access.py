"""Who may do what: token issue, revocation, bootstrap of the first admin, and role checks.

The API's auth dependency asks `authorize`; token routes and `corral serve` call the rest.
"""

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from corral.errors import Forbidden, Invalid, Unauthorized
from corral.events import EventBus
from corral.model.views import Role, TokenView
from corral.store.tables import utcnow
from corral.store.tokens import TokenStore, hash_token

Action = Literal["read", "write", "admin"]

# What each role may do through the general API; robot and device tokens reach only
# their own resources, through routes that check the token's subject.
GRANTS: dict[Role, frozenset[Action]] = {
    "admin": frozenset({"read", "write", "admin"}),
    "operator": frozenset({"read", "write"}),
    "viewer": frozenset({"read"}),
    "robot": frozenset(),
    "device": frozenset(),
}


@dataclass(frozen=True)
class Caller:
    """The authenticated holder of a token."""

    token_id: int
    name: str
    role: Role
    subject: str

    def may(self, action: Action) -> bool:
        return action in GRANTS[self.role]


# How long a token found in the store is trusted without asking the store again. Any
# `token.` event (a revocation here or on another replica) forgets them all at once; this
# bounds what a lagging event feed could leave stale.
KNOWN_SECONDS = 10.0
KNOWN_LIMIT = 50_000  # entries; past it the cache starts again (a flood of new tokens)


class AccessService:
    def __init__(self, tokens: TokenStore, bus: EventBus) -> None:
        self.tokens = tokens
        self.bus = bus
        # token hash -> (caller, expiry or None, monotonic time it was read)
        self._known: dict[str, tuple[Caller, datetime | None, float]] = {}
        self._forgotten = 0  # times the cache was cleared: a read older than that is not kept
        bus.watch("token.", lambda _event: self._forget())

    def _forget(self) -> None:
        self._known.clear()
        self._forgotten += 1

    async def identify(self, secret: str | None) -> Caller:
        """Who holds this token, whatever their role may do."""
        if not secret:
            raise Unauthorized("missing token: send 'Authorization: Bearer <token>'")
        key = hash_token(secret)
        known = self._known.get(key)
        if known is not None:
            caller, expires_at, read_at = known
            fresh = time.monotonic() - read_at < KNOWN_SECONDS
            if fresh and (expires_at is None or expires_at > utcnow()):
                return caller
        forgotten = self._forgotten
        token = await self.tokens.authenticate(secret)
        if token is None:
            self._known.pop(key, None)
            raise Unauthorized("invalid, expired or revoked token")
        caller = Caller(token.id, token.name, token.role, token.subject)
        if forgotten == self._forgotten:  # no revocation came while the store was read
            if len(self._known) >= KNOWN_LIMIT:
                self._known.clear()
            self._known[key] = (caller, token.expires_at, time.monotonic())
        return caller

    async def authorize(self, secret: str | None, action: Action) -> Caller:
        caller = await self.identify(secret)
        if not caller.may(action):
            raise Forbidden(
                f"role {caller.role!r} may not {action} here",
                {"role": caller.role, "needs": action},
            )
        return caller

    async def issue(
        self,
        name: str,
        role: Role,
        by: Caller | None,
        expires_in: timedelta | None = None,
        subject: str = "",
    ) -> tuple[TokenView, str]:
        expires_at: datetime | None = None
        if expires_in is not None:
            if expires_in.total_seconds() <= 0:
                raise Invalid("expiry must be in the future", {"field": "expires_in"})
            expires_at = utcnow() + expires_in
        view, secret = await self.tokens.create(name, role, expires_at, subject)
        who = by.name if by else "corral"
        await self.bus.emit(
            "token.created",
            f"token/{view.id}",
            f"token {name!r} ({role}) created by {who}",
            {"role": role, "expires_at": expires_at.isoformat() if expires_at else None},
        )
        return view, secret

    async def revoke(self, token_id: int, by: Caller) -> TokenView:
        view = await self.tokens.revoke(token_id)
        await self.bus.emit(
            "token.revoked", f"token/{token_id}", f"token {view.name!r} revoked by {by.name}"
        )
        return view

    async def bootstrap(self, fixed_secret: str | None) -> str | None:
        """Create the first admin token when there is none; return its secret to print once."""
        if await self.tokens.count_active_admins() > 0:
            return None
        if fixed_secret is not None and len(fixed_secret) < 16:
            raise Invalid("CORRAL_BOOTSTRAP_TOKEN must be at least 16 characters")
        view, secret = await self.tokens.create("admin", "admin", secret=fixed_secret)
        await self.bus.emit("token.created", f"token/{view.id}", "first admin token created")
        return secret

    async def reset_admin(self) -> str:
        """Revoke all admin tokens and issue a new one (for a lost admin token)."""
        count = await self.tokens.revoke_all_admins()
        view, secret = await self.tokens.create("admin", "admin")
        await self.bus.emit(
            "token.reset", f"token/{view.id}", f"admin token reset ({count} revoked)"
        )
        return secret
