"""TLS failures said plainly: which side refused (corral or the engine) and why, and the
validity dates of corral's own client certificate.

Used by the Docker Engine driver when a tcp:// + TLS engine cannot be reached, and by the
host service to warn ahead of the client certificate's expiry.
"""

import ssl
from datetime import UTC, datetime
from typing import Any

from corral.model.hosts import TlsFiles


def _decoded(path: str) -> dict[str, Any]:
    """A PEM certificate's fields as the ssl module reads them ({} when it cannot)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return {}
    try:
        found: dict[str, Any] = decode(path)
    except (OSError, ValueError, ssl.SSLError):
        return {}
    return found


def certificate_dates(path: str) -> tuple[datetime, datetime] | None:
    """notBefore and notAfter of a PEM certificate; None when it cannot be read."""
    found = _decoded(path)
    try:
        start = ssl.cert_time_to_seconds(str(found["notBefore"]))
        end = ssl.cert_time_to_seconds(str(found["notAfter"]))
    except (ValueError, KeyError):
        return None
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def client_certificate_problem(tls: TlsFiles, now: datetime) -> str:
    """Why corral's own client certificate cannot be used now ("" when it can)."""
    dates = certificate_dates(tls.cert)
    if dates is None:
        return ""
    start, end = dates
    if now > end:
        return (
            f"corral's client certificate {tls.cert} expired on {_day(end)}: the engine will "
            "refuse it; issue a new one from the engine's CA"
        )
    if now < start:
        return f"corral's client certificate {tls.cert} is not valid before {_day(start)}"
    return ""


_NOT_OUR_CA = (
    "corral refused the engine: its certificate is not signed by the CA in {ca} (unknown CA)"
)
# (marker in the OpenSSL text, what it means); the first that matches wins.
_REASONS = (
    ("KEY_VALUES_MISMATCH", "corral's client key does not match its client certificate"),
    (
        "ALERT_UNKNOWN_CA",
        "the engine refused corral's client certificate: it is not signed by a CA the engine "
        "trusts (unknown CA)",
    ),
    ("UNKNOWN_CA", "the engine refused corral's client certificate (unknown CA)"),
    (
        "ALERT_CERTIFICATE_EXPIRED",
        "the engine refused corral's client certificate as expired",
    ),
    ("ALERT_BAD_CERTIFICATE", "the engine refused corral's client certificate (bad certificate)"),
    (
        "CERTIFICATE_REQUIRED",
        "the engine asks for a client certificate and refused the one given",
    ),
    ("certificate has expired", "corral refused the engine: the engine's certificate has expired"),
    ("mismatch", "corral refused the engine: its certificate does not name {host} (name mismatch)"),
    ("unable to get local issuer certificate", _NOT_OUR_CA),
    ("self signed certificate", _NOT_OUR_CA),
    ("self-signed certificate", _NOT_OUR_CA),
    ("WRONG_VERSION_NUMBER", "the engine does not speak TLS on that port (plain tcp:// there?)"),
)


def _names(path: str, field: str) -> str:
    parts = [f"{key}={value}" for rdn in _decoded(path).get(field, ()) for key, value in rdn]
    return ",".join(parts)


def tls_reason(text: str, tls: TlsFiles, host: str) -> str:
    """The plain reason for an OpenSSL failure text ("" when it is not a TLS failure)."""
    lowered = text.lower()
    for marker, reason in _REASONS:
        if marker.lower() in lowered:
            return reason.format(host=host, ca=tls.ca)
    if "eof occurred" in lowered or "reset by peer" in lowered:
        # The engine hung up during the handshake (TLS 1.3 may not show its alert): it
        # refused the client certificate. Say why when corral can see it.
        issuer, ca = _names(tls.cert, "issuer"), _names(tls.ca, "subject")
        if issuer and ca and issuer != ca:
            return (
                "the engine refused corral's client certificate: it is issued by "
                f"{issuer}, not by the CA in {tls.ca} ({ca}) (unknown CA)"
            )
        return "the engine closed the TLS handshake: it refused corral's client certificate"
    return ""
