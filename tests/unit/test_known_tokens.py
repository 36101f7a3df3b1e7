"""The access service's cache of known tokens: a token is read from the store once per
period, expiry still holds, and a `token.` event (a revocation here or relayed from another
replica) forgets them all at once. A fake store counts reads; the real one is behind
tests/integration/test_api.py and test_replicas.py."""

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from corral.control import access
from corral.control.access import AccessService
from corral.errors import Unauthorized
from corral.events import EventBus
from corral.model.views import EventView, TokenView
from corral.store.tokens import TokenStore


class FakeTokens:
    def __init__(self) -> None:
        self.reads = 0
        self.alive = True
        self.expires_at: datetime | None = None

    async def authenticate(self, secret: str) -> TokenView | None:
        self.reads += 1
        if not self.alive or secret != "crl_good":
            return None
        now = datetime.now(UTC)
        return TokenView(
            id=1,
            name="ops",
            role="operator",
            prefix="crl_good",
            created_at=now,
            expires_at=self.expires_at,
            revoked_at=None,
            last_used_at=now,
            active=True,
        )


class FakeStore:
    async def append(self, *_: Any) -> None:
        raise AssertionError("not used")


def _service() -> tuple[AccessService, FakeTokens, EventBus]:
    tokens = FakeTokens()
    bus = EventBus(cast(Any, FakeStore()), cast(Any, None))
    return AccessService(cast(TokenStore, tokens), bus), tokens, bus


def _event(kind: str) -> EventView:
    return EventView(
        id=1, time=datetime.now(UTC), kind=kind, resource="token/1", message="m", data={}
    )


async def test_a_known_token_is_read_once_per_period() -> None:
    service, tokens, _ = _service()
    for _ in range(5):
        assert (await service.identify("crl_good")).name == "ops"
    assert tokens.reads == 1


async def test_a_token_event_forgets_known_tokens() -> None:
    service, tokens, bus = _service()
    await service.identify("crl_good")
    tokens.alive = False  # revoked in the store, e.g. by another replica
    bus.relay(_event("token.revoked"))
    with pytest.raises(Unauthorized):
        await service.identify("crl_good")
    bus.relay(_event("stack.applied"))  # other events change nothing
    assert tokens.reads == 2


async def test_known_tokens_are_read_again_after_the_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, tokens, _ = _service()
    await service.identify("crl_good")
    clock = access.time.monotonic() + access.KNOWN_SECONDS + 1
    monkeypatch.setattr(access.time, "monotonic", lambda: clock)
    await service.identify("crl_good")
    assert tokens.reads == 2


async def test_an_expired_known_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    service, tokens, _ = _service()
    now = datetime.now(UTC)
    tokens.expires_at = now + timedelta(seconds=1)
    await service.identify("crl_good")
    tokens.alive = False  # the store no longer finds it active either
    monkeypatch.setattr(access, "utcnow", lambda: now + timedelta(seconds=2))
    with pytest.raises(Unauthorized):
        await service.identify("crl_good")
    assert tokens.reads == 2


async def test_unknown_tokens_are_not_kept() -> None:
    service, tokens, _ = _service()
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await service.identify("crl_bad")
    assert tokens.reads == 3
    assert service._known == {}
