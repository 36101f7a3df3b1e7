"""HMAC signatures of robot messages (the protocol's signed mode), stdlib only.

Used by `RobotClient` and `HttpRobot` to sign what a robot sends, and by the corral server
to check it (`from corral.robot.signing import verify`).
"""

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any


def canonical(message: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: sorted keys, no spaces, without the `sig` field."""
    body = {k: v for k, v in message.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def key_bytes(key: str | bytes) -> bytes:
    """The HMAC key: the bytes a hex key stands for (a non-hex text key is used as UTF-8)."""
    if isinstance(key, bytes):
        return key
    try:
        return bytes.fromhex(key)
    except ValueError:
        return key.encode()


def signature(message: Mapping[str, Any], key: str | bytes) -> str:
    """HMAC-SHA256 (hex) of the canonical JSON of `message` without `sig`."""
    return hmac.new(key_bytes(key), canonical(message), hashlib.sha256).hexdigest()


def sign(message: Mapping[str, Any], key: str | bytes, n: int) -> dict[str, Any]:
    """A copy of `message` with the counter `n` and its signature `sig` added."""
    signed = {k: v for k, v in message.items() if k != "sig"}
    signed["n"] = n
    signed["sig"] = signature(signed, key)
    return signed


def verify(message: Mapping[str, Any], key: str | bytes) -> bool:
    """True when `message` carries an integer `n` and a `sig` that matches it under `key`.

    The counter's growth (each `n` above the last one) is for the receiver to check.
    """
    sig, n = message.get("sig"), message.get("n")
    if not isinstance(sig, str) or not isinstance(n, int) or isinstance(n, bool):
        return False
    return hmac.compare_digest(sig, signature(message, key))
