"""HMAC signatures of robot messages (the protocol's signed mode), stdlib only.

Used by `RobotClient` and `HttpRobot` to sign what a robot sends, and by the corral server
to check it (`from corral.robot.signing import verify`).
"""

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Any


def new_nonce() -> str:
    """A server nonce: 128 random bits as 32 lowercase hex digits."""
    return secrets.token_hex(16)


def canonical(message: Mapping[str, Any]) -> bytes:
    """The message's part of the signed bytes: sorted keys, no spaces, no `sig` field."""
    body = {k: v for k, v in message.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def signed_bytes(message: Mapping[str, Any], nonce: str) -> bytes:
    """What the HMAC covers: the server's nonce (ASCII), a newline, the canonical JSON."""
    return nonce.encode("ascii") + b"\n" + canonical(message)


def key_bytes(key: str | bytes) -> bytes:
    """The HMAC key: the bytes a hex key stands for (a non-hex text key is used as UTF-8)."""
    if isinstance(key, bytes):
        return key
    try:
        return bytes.fromhex(key)
    except ValueError:
        return key.encode()


def signature(message: Mapping[str, Any], key: str | bytes, nonce: str) -> str:
    """HMAC-SHA256 (hex) of `signed_bytes(message, nonce)`."""
    return hmac.new(key_bytes(key), signed_bytes(message, nonce), hashlib.sha256).hexdigest()


def sign(message: Mapping[str, Any], key: str | bytes, n: int, nonce: str) -> dict[str, Any]:
    """A copy of `message` with the counter `n` and its signature `sig` under `nonce`."""
    signed = {k: v for k, v in message.items() if k != "sig"}
    signed["n"] = n
    signed["sig"] = signature(signed, key, nonce)
    return signed


def verify(message: Mapping[str, Any], key: str | bytes, nonce: str) -> bool:
    """True when `message` carries an integer `n` and a `sig` that matches it under `key`
    and `nonce`.

    The counter's growth (each `n` above the last one) is for the receiver to check.
    """
    sig, n = message.get("sig"), message.get("n")
    if not isinstance(sig, str) or not isinstance(n, int) or isinstance(n, bool):
        return False
    try:
        expected = signature(message, key, nonce)
    except UnicodeEncodeError:  # a nonce that is not ASCII matches nothing
        return False
    return hmac.compare_digest(sig.encode(), expected.encode())
