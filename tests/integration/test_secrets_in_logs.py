"""Secrets never reach corral's log: a real `corral serve` with its access log on is used
with tokens in headers and query strings, then hit by an internal error (its token table
gone from under it) while a known token is being checked; the log is then searched for
every token used, and must show the error and the requests, but no secret."""

import asyncio
import json
import secrets
import sqlite3
from pathlib import Path

import httpx
import websockets
from tests.support.server import ADMIN, ServeProcess, wait_until


def test_an_internal_error_and_the_access_log_show_no_token(tmp_path: Path) -> None:
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_MDNS_ENABLED": "false",
        "CORRAL_LOG_LEVEL": "info",
        "CORRAL_ACCESS_LOG": "true",
    }
    serve = ServeProcess(tmp_path, env).start()
    used = [ADMIN]
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        operator = httpx.post(
            f"{serve.url}/tokens", json={"name": "ops", "role": "operator"}, headers=admin
        ).json()["token"]
        robot = httpx.post(f"{serve.url}/fleet/robots", json={"name": "r1"}, headers=admin)
        robot_token = robot.json()["token"]
        used += [operator, robot_token]
        mine = {"Authorization": f"Bearer {operator}"}
        assert httpx.get(f"{serve.url}/whoami?token={operator}", headers=mine).status_code == 200

        async def robot_socket(token: str) -> None:
            async with websockets.connect(
                serve.url.replace("http://", "ws://") + f"/fleet/ws?token={token}"
            ) as ws:
                await ws.send(json.dumps({"type": "hello", "robot": "r1"}))
                await asyncio.wait_for(ws.recv(), 30)

        asyncio.run(robot_socket(robot_token))

        # The token table disappears: checking a token corral has not seen yet fails inside.
        database = sqlite3.connect(tmp_path / ".corral" / "corral.db")
        database.execute("ALTER TABLE tokens RENAME TO tokens_gone")
        database.commit()
        unknown = "crl_" + secrets.token_urlsafe(32)
        used.append(unknown)
        failed = httpx.get(
            f"{serve.url}/hosts?token={unknown}", headers={"Authorization": f"Bearer {unknown}"}
        )
        assert failed.status_code == 500
        assert unknown not in failed.text
        database.execute("ALTER TABLE tokens_gone RENAME TO tokens")
        database.commit()
        database.close()
        wait_until(lambda: "unhandled error" in serve.output(), "the error in the log")
        wait_until(lambda: "/whoami" in serve.output(), "the access log line")
    finally:
        serve.stop()
    log = serve.output()
    assert "Traceback" in log, "the internal error was logged with its traceback"
    assert "OperationalError" in log
    assert "/whoami?token=[redacted]" in log, "the access log names the request"
    assert "/fleet/ws?token=[redacted]" in log
    # (the start banner's first-admin line is the bootstrap's own business: checked from
    # the moment the server serves)
    served = log[log.index("Started server process") :]
    for token in used:
        assert token not in served
        assert token[4:16] not in served, "not even a part of a token"
