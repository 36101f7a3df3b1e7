"""The Docker Engine driver: one docker-py client per host over unix, tcp (TLS) or ssh.

Built by the control layer's host service; every call blocks and runs in a worker thread.
"""

import os
from typing import Any

import docker
from docker.errors import DockerException
from docker.tls import TLSConfig

from corral.errors import Unreachable
from corral.hosts.ssh_tunnel import SshTunnel
from corral.model.hosts import EngineFacts, HostSpec, SwarmRole, parse_engine_url


def _labels(items: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items or []:
        key, _, value = item.partition("=")
        labels[key] = value
    return labels


def facts_from_info(info: dict[str, Any], version: dict[str, Any]) -> EngineFacts:
    """Turn `docker info` and `docker version` answers into EngineFacts."""
    swarm = info.get("Swarm") or {}
    role: SwarmRole = "none"
    if swarm.get("LocalNodeState") == "active":
        role = "manager" if swarm.get("ControlAvailable") else "worker"
    return EngineFacts(
        engine_version=str(version.get("Version", info.get("ServerVersion", ""))),
        api_version=str(version.get("ApiVersion", "")),
        os=str(info.get("OperatingSystem", "")),
        arch=str(info.get("Architecture", "")),
        cpus=int(info.get("NCPU", 0)),
        memory_bytes=int(info.get("MemTotal", 0)),
        containers_running=int(info.get("ContainersRunning", 0)),
        containers_total=int(info.get("Containers", 0)),
        images=int(info.get("Images", 0)),
        swarm_role=role,
        swarm_node_id=str(swarm.get("NodeID", "")),
        engine_labels=_labels(info.get("Labels")),
        hostname=str(info.get("Name", "")),
    )


API_VERSION = "1.41"  # Docker 20.10; newer engines still serve it.


class DockerEngine:
    """A HostDriver for one Docker Engine."""

    def __init__(self, spec: HostSpec, timeout: float) -> None:
        self.spec = spec
        self.timeout = timeout
        self._client: docker.DockerClient | None = None
        address = parse_engine_url(spec.url)
        self._tunnel = SshTunnel(spec.name, address, timeout) if address.scheme == "ssh" else None

    def _connect(self) -> docker.DockerClient:
        if self._client is None:
            tls: TLSConfig | bool = False
            if self.spec.tls is not None:
                for what, path in (
                    ("CA certificate", self.spec.tls.ca),
                    ("client certificate", self.spec.tls.cert),
                    ("client key", self.spec.tls.key),
                ):
                    if not os.path.isfile(path):
                        raise Unreachable(f"TLS {what} {path} is not a readable file")
                tls = TLSConfig(
                    client_cert=(self.spec.tls.cert, self.spec.tls.key),
                    ca_cert=self.spec.tls.ca,
                    verify=self.spec.tls.verify,
                )
            url = self.spec.url.replace("tcp://", "https://", 1) if self.spec.tls else self.spec.url
            if self._tunnel is not None:
                url = self._tunnel.open()
            self._client = docker.DockerClient(
                base_url=url,
                tls=tls,
                timeout=max(1, round(self.timeout)),
                version=API_VERSION,
            )
            # requests would let REQUESTS_CA_BUNDLE replace the host's own CA, and
            # HTTP(S)_PROXY reroute engine traffic: an engine connection takes neither.
            self._client.api.trust_env = False
        return self._client

    def probe(self) -> EngineFacts:
        try:
            client = self._connect()
            info = client.info()
            version = client.version()
        except (DockerException, OSError) as exc:
            self.close()
            raise Unreachable(_short(exc), {"host": self.spec.name}) from None
        return facts_from_info(info, version)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None
        if self._tunnel is not None:
            self._tunnel.close()


def _short(exc: BaseException) -> str:
    """A one-line reason from a docker-py or socket error."""
    text = str(exc) or type(exc).__name__
    for marker in (
        "Connection refused",
        "timed out",
        "No such file or directory",
        "Name or service",
    ):
        if marker in text:
            return {
                "Connection refused": "connection refused",
                "timed out": "timed out",
                "No such file or directory": "socket not found",
                "Name or service": "host name does not resolve",
            }[marker]
    return text.splitlines()[0][:300]
