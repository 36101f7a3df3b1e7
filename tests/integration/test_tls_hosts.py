"""A `tcp://` host with TLS client certificates, through a real mutual-TLS handshake.

The engine end demands a certificate from our CA; corral's must pass, a stranger's must not.
"""

from collections.abc import Iterator
from pathlib import Path

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
