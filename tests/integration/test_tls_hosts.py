"""A `tcp://` host with TLS client certificates, through a real mutual-TLS handshake.

The engine end demands a certificate from our CA; corral's must pass, a stranger's must not.
"""

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.server import ADMIN, ThreadServer
from tests.support.tls import TlsEngineProxy, make_pki

from corral.config import Settings


@pytest.fixture
def server(local_engine: str, tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(
        home=tmp_path / "home",
        bootstrap_token=ADMIN,
        local_docker_url="",
        engine_networks=["127.0.0.0/8"],
    )
    with ThreadServer(settings) as running:
        yield running


def test_tls_client_certificates(server: ThreadServer, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    stranger = make_pki(tmp_path / "other", name="stranger")
    with TlsEngineProxy(pki) as proxy, server.client() as api:
        url = f"tcp://127.0.0.1:{proxy.port}"
        tls = {"ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)}
        good = api.post("/hosts", json={"name": "tls", "url": url, "tls": tls})
        assert good.status_code == 201, good.text
        assert good.json()["reachable"] is True, good.json()["last_error"]
        assert good.json()["facts"]["cpus"] >= 1

        wrong = {
            "ca": str(pki.ca),
            "cert": str(stranger.client_cert),
            "key": str(stranger.client_key),
        }
        refused = api.post("/hosts", json={"name": "tls-stranger", "url": url, "tls": wrong})
        assert refused.status_code == 201
        assert refused.json()["reachable"] is False
        assert refused.json()["last_error"]

        plain = api.post("/hosts", json={"name": "tls-plain", "url": url}).json()
        assert plain["reachable"] is False

        missing = dict(tls, key=str(tmp_path / "nope.pem"))
        gone = api.post("/hosts", json={"name": "tls-missing", "url": url, "tls": missing})
        assert gone.json()["reachable"] is False
        assert "nope.pem" in gone.json()["last_error"]


def _expired_client(pki_folder: Path) -> Path:
    """A client certificate from the engine's own CA whose validity ended a day ago."""
    _run = ["openssl", "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey",
            "ca-key.pem", "-CAcreateserial", "-days", "-1", "-extfile", "client.ext",
            "-out", "expired.pem"]  # fmt: skip
    subprocess.run(_run, cwd=pki_folder, check=True, capture_output=True, timeout=60)
    return pki_folder / "expired.pem"


def test_tls_failures_say_which_side_and_why(server: ThreadServer, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    stranger = make_pki(tmp_path / "other", name="stranger")
    expired = _expired_client(tmp_path / "pki")
    with TlsEngineProxy(pki) as proxy, server.client() as api:
        url = f"tcp://127.0.0.1:{proxy.port}"

        def add(name: str, ca: Path, cert: Path, key: Path) -> dict[str, Any]:
            tls = {"ca": str(ca), "cert": str(cert), "key": str(key)}
            answer = api.post("/hosts", json={"name": name, "url": url, "tls": tls})
            assert answer.status_code == 201, answer.text
            view: dict[str, Any] = answer.json()
            assert view["reachable"] is False, view
            return view

        old = add("expired", pki.ca, expired, pki.client_key)
        assert old["last_error"].startswith(f"corral's client certificate {expired} expired on "), (
            old["last_error"]
        )
        foreign = add("other-ca", pki.ca, stranger.client_cert, stranger.client_key)
        # The engine's alert, or (TLS 1.3 may hang up before it is read) corral's own look
        # at who issued its certificate: either way it names the side and the reason.
        assert foreign["last_error"].startswith(
            "the engine refused corral's client certificate: it is"
        ), foreign["last_error"]
        assert foreign["last_error"].endswith("(unknown CA)")
        assert foreign["last_error"] != old["last_error"]
        distrust = add("wrong-ca", stranger.ca, pki.client_cert, pki.client_key)
        assert distrust["last_error"] == (
            f"corral refused the engine: its certificate is not signed by the CA in "
            f"{stranger.ca} (unknown CA)"
        )
        mismatched = add("wrong-key", pki.ca, pki.client_cert, stranger.client_key)
        assert mismatched["last_error"] == (
            "corral's client key does not match its client certificate"
        )

        # corral's own certificates of this PKI last two days: within the 14-day warning.
        good = {"ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)}
        assert api.post("/hosts", json={"name": "ok", "url": url, "tls": good}).json()["reachable"]
        warned = api.get("/events", params={"kind": "host.certificate_expiring"}).json()
        by_host = {e["resource"]: e["message"] for e in warned}
        assert (
            "expires in 1 days" in by_host["host/ok"] or "expires in 0 days" in by_host["host/ok"]
        ), by_host
        assert "expired, on" in by_host["host/expired"]
