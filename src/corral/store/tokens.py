"""Stored API tokens: only a SHA-256 of each secret, with role, expiry and revocation.

Tokens are 256-bit random strings, so a plain hash is enough to make a leaked table useless.
"""

import hashlib
import secrets
from datetime import datetime

from sqlalchemy import func, select, update

from corral.errors import Conflict, NotFound
from corral.model.views import Role, TokenView
from corral.store.database import Database
from corral.store.tables import TokenRow, utcnow

TOKEN_PREFIX = "crl_"  # noqa: S105 - a marker, not a secret


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _active(row: TokenRow, now: datetime) -> bool:
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)


def token_row(
    name: str,
    role: Role,
    subject: str = "",
    expires_at: datetime | None = None,
    secret: str | None = None,
) -> tuple[TokenRow, str]:
    """A new token's row (to add to a session) and its secret (to show once): `secret`,
    or a new random one."""
    secret = secret or new_secret()
    row = TokenRow(
        name=name,
        role=role,
        token_hash=hash_token(secret),
        prefix=secret[:10],
        subject=subject,
        expires_at=expires_at,
    )
    return row, secret


def token_view(row: TokenRow, now: datetime) -> TokenView:
    return TokenView(
        id=row.id,
        name=row.name,
        role=row.role,
        prefix=row.prefix,
        subject=row.subject,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        active=_active(row, now),
    )


class TokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        name: str,
        role: Role,
        expires_at: datetime | None = None,
        subject: str = "",
        secret: str | None = None,
    ) -> tuple[TokenView, str]:
        """Store a new token and return its view and the secret (shown this once)."""
        row, secret = token_row(name, role, subject, expires_at, secret)
        async with self.db.session() as s:
            s.add(row)
            await s.flush()
            return token_view(row, utcnow()), secret

    async def authenticate(self, secret: str) -> TokenView | None:
        """The active token with this secret, marking it used; None when unknown or dead."""
        now = utcnow()
        async with self.db.session() as s:
            row = await s.scalar(select(TokenRow).where(TokenRow.token_hash == hash_token(secret)))
            if row is None or not _active(row, now):
                return None
            if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
                row.last_used_at = now
            return token_view(row, now)

    async def list(self) -> list[TokenView]:
        now = utcnow()
        async with self.db.session() as s:
            rows = (await s.scalars(select(TokenRow).order_by(TokenRow.id))).all()
            return [token_view(r, now) for r in rows]

    async def revoke(self, token_id: int) -> TokenView:
        """Revoke a token; never the last admin token that does not expire (409): that
        would lock every client out, for good or at its expiry."""
        now = utcnow()
        async with self.db.session() as s:
            row = await s.get(TokenRow, token_id)
            if row is None:
                raise NotFound(f"token {token_id} not found", {"token": token_id})
            if row.role == "admin" and _active(row, now):
                lasting = await s.scalars(
                    select(TokenRow.id)
                    .where(
                        TokenRow.role == "admin",
                        TokenRow.revoked_at.is_(None),
                        TokenRow.expires_at.is_(None),
                    )
                    .with_for_update()
                )
                if not set(lasting.all()) - {token_id}:
                    raise Conflict(
                        f"token {token_id} is the last admin token that does not expire: "
                        "revoking it would lock every client out. Issue another admin token "
                        "first; a lost admin token is replaced with `corral reset-admin-token` "
                        "where the database is.",
                        {"token": token_id},
                    )
            if row.revoked_at is None:
                row.revoked_at = now
            return token_view(row, now)

    async def count_active_admins(self) -> int:
        now = utcnow()
        async with self.db.session() as s:
            query = select(func.count()).where(
                TokenRow.role == "admin",
                TokenRow.revoked_at.is_(None),
                (TokenRow.expires_at.is_(None)) | (TokenRow.expires_at > now),
            )
            return int(await s.scalar(query) or 0)

    async def revoke_all_admins(self) -> int:
        """Revoke every admin token (the `corral admin reset` recovery path)."""
        async with self.db.session() as s:
            result = await s.execute(
                update(TokenRow)
                .where(TokenRow.role == "admin", TokenRow.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            return int(getattr(result, "rowcount", 0))
