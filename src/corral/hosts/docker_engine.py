"""The Docker Engine driver: one docker-py client per host over unix, tcp (TLS) or ssh.

Built by the control layer's host service; every call blocks and runs in a worker thread.
"""

import contextlib
import errno
import os
import re
import threading
import weakref
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import docker
from docker import APIClient
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.tls import TLSConfig
from docker.types import IPAMConfig, IPAMPool
from requests.exceptions import ConnectionError as RequestsConnectionError

from corral.errors import Conflict, CorralError, Invalid, Unreachable
from corral.errors import NotFound as CorralNotFound
from corral.hosts.driver import ImageMissing, NotSwarmManager, SubnetTaken
from corral.hosts.ssh_tunnel import SshTunnel
from corral.hosts.tls_reasons import client_certificate_problem, tls_reason
from corral.model.containers import ContainerDetails, ContainerInfo, ContainerPlan, PublishedPort
from corral.model.hosts import EngineFacts, HostSpec, SshOptions, SwarmRole, parse_engine_url
from corral.model.readiness import listening_ports
from corral.model.stack_spec import BuildSpec
from corral.model.swarm import ServicePlan, SwarmNode, SwarmService, SwarmTask


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
        engine_id=str(info.get("ID", "")),
        data_root=str(info.get("DockerRootDir", "")),
    )


API_VERSION = "1.41"  # Docker 20.10; newer engines still serve it.
WORK_TIMEOUT = 300  # seconds for container, image and network work (not for checks)
_EXITED = re.compile(r"Exited \((-?\d+)\)")


def _info(summary: dict[str, Any]) -> ContainerInfo:
    status = str(summary.get("Status", ""))
    health = ""
    for word in ("healthy", "unhealthy", "starting"):
        if f"({word})" in status or f"health: {word}" in status:
            health = word
    exited = _EXITED.search(status)
    names = summary.get("Names") or ["/"]
    return ContainerInfo(
        id=str(summary["Id"]),
        name=str(names[0]).lstrip("/"),
        state=str(summary.get("State", "")),
        labels=dict(summary.get("Labels") or {}),
        exit_code=int(exited.group(1)) if exited else 0,
        health=health,
    )


def _when(text: Any) -> datetime | None:
    """Docker's RFC 3339 times (nanoseconds, Z); its zero time means never."""
    if not isinstance(text, str) or not text or text.startswith("0001-"):
        return None
    main, _, fraction = text.rstrip("Z").partition(".")
    try:
        moment = datetime.fromisoformat(main).replace(tzinfo=UTC)
    except ValueError:
        return None
    digits = "".join(ch for ch in fraction if ch.isdigit())[:6]
    return moment.replace(microsecond=int(digits.ljust(6, "0"))) if digits else moment


def _read_proc_tcp(pid: int, container_id: str) -> str | None:
    """/proc/<pid>/net/tcp{,6} of a container's process, if this machine shows it as that
    container's (its cgroup names the container); None otherwise."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as handle:
            if container_id not in handle.read():
                return None
        parts = []
        for name in ("tcp", "tcp6"):
            with (
                contextlib.suppress(FileNotFoundError),
                open(f"/proc/{pid}/net/{name}", encoding="utf-8") as handle,
            ):
                parts.append(handle.read())
        return "".join(parts)
    except OSError:
        return None


def _label_filter(labels: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" if v else k for k, v in labels.items()]


def _nanos(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _swarm_service(found: dict[str, Any]) -> SwarmService:
    spec = found.get("Spec") or {}
    status = found.get("UpdateStatus") or {}
    replicated = (spec.get("Mode") or {}).get("Replicated") or {}
    return SwarmService(
        id=str(found["ID"]),
        name=str(spec.get("Name", "")),
        version=int((found.get("Version") or {}).get("Index", 0)),
        labels=dict(spec.get("Labels") or {}),
        replicas=int(replicated.get("Replicas", 0)),
        update_state=str(status.get("State", "")),
        update_message=str(status.get("Message", "")),
        update_started=str(status.get("StartedAt", "")),
    )


def _swarm_task(found: dict[str, Any]) -> SwarmTask:
    status = found.get("Status") or {}
    container = status.get("ContainerStatus") or {}
    return SwarmTask(
        id=str(found["ID"]),
        slot=int(found.get("Slot") or 0),
        node_id=str(found.get("NodeID", "")),
        desired_state=str(found.get("DesiredState", "")),
        state=str(status.get("State", "")),
        message=str(status.get("Message", "")),
        error=str(status.get("Err", "")),
        container_id=str(container.get("ContainerID", "")),
        exit_code=int(container.get("ExitCode") or 0),
        updated_at=str(found.get("UpdatedAt", "")),
    )


class DockerEngine:
    """A HostDriver for one Docker Engine."""

    def __init__(self, spec: HostSpec, timeout: float) -> None:
        self.spec = spec
        self.timeout = timeout
        self._clients: dict[int, docker.DockerClient] = {}
        # the event streams not yet collected (a finished one closed itself), for close()
        self._streams: weakref.WeakSet[_Stream[Any]] = weakref.WeakSet()
        self._lock = threading.Lock()
        # once closed, no new client: a call still running in a worker thread when the
        # host service shuts down would otherwise open one that nothing ever closes
        self._closed = False
        address = parse_engine_url(spec.url)
        self._local = address.scheme == "unix"
        self._socket = address.path
        self._tunnel: SshTunnel | None = None
        if address.scheme == "ssh":
            self._tunnel = SshTunnel(spec.name, address, timeout, spec.ssh or SshOptions())

    def _connect(self, timeout: int) -> docker.DockerClient:
        if self._local and not os.path.exists(self._socket):
            # Checked here: docker-py would leave a socket open on a failed unix connect.
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", self._socket)
        with self._lock:
            if self._closed:
                raise Unreachable(
                    f"host {self.spec.name}: its engine connection is closed",
                    {"host": self.spec.name},
                )
            client = self._clients.get(timeout)
            if client is None:
                client = self._new_client(timeout)
                self._clients[timeout] = client
            return client

    def _new_client(self, timeout: int) -> docker.DockerClient:
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
        client = docker.DockerClient(base_url=url, tls=tls, timeout=timeout, version=API_VERSION)
        # requests would let REQUESTS_CA_BUNDLE replace the host's own CA, and
        # HTTP(S)_PROXY reroute engine traffic: an engine connection takes neither.
        client.api.trust_env = False
        return client

    @property
    def _api(self) -> APIClient:
        return self._connect(WORK_TIMEOUT).api

    def probe(self) -> EngineFacts:
        tls = self.spec.tls
        if tls is not None:
            problem = client_certificate_problem(tls, datetime.now(UTC))
            if problem:
                raise Unreachable(problem, {"host": self.spec.name})
        try:
            client = self._connect(max(1, round(self.timeout)))
            info = client.info()
            version = client.version()
        except (DockerException, OSError) as exc:
            said = self._tunnel.explain(settle=0.5) if self._tunnel is not None else ""
            if tls is not None:
                said = tls_reason(str(exc), tls, parse_engine_url(self.spec.url).host)
            self._reset()  # the next call connects afresh
            raise Unreachable(said or _short(exc), {"host": self.spec.name}) from None
        return facts_from_info(info, version)

    def containers(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        with _engine_errors(self.spec.name):
            found = self._api.containers(all=True, filters={"label": _label_filter(labels)})
        return [_info(c) for c in found]

    def ensure_network(
        self,
        name: str,
        driver: str,
        attachable: bool,
        subnet: str | None,
        labels: Mapping[str, str],
    ) -> None:
        with _engine_errors(self.spec.name):
            if any(n["Name"] == name for n in self._api.networks(names=[name])):
                return
            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)]) if subnet else None
            try:
                self._api.create_network(
                    name,
                    driver=driver,
                    attachable=attachable or None,
                    labels=dict(labels),
                    ipam=ipam,
                    check_duplicate=True,
                )
            except APIError as exc:
                # dockerd's IPAM answers an overlapping pool with 403 and these words; the
                # one place they are read, so callers can catch a type instead.
                if subnet and "overlap" in str(exc.explanation or "").lower():
                    raise SubnetTaken(f"{self.spec.name}: {exc.explanation}") from None
                raise

    def networks(self, labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
        with _engine_errors(self.spec.name):
            found = self._api.networks(filters={"label": _label_filter(labels)})
        return {str(n["Name"]): dict(n.get("Labels") or {}) for n in found}

    def network_subnets(self) -> dict[str, list[str]]:
        with _engine_errors(self.spec.name):
            found = self._api.networks()
        return {
            str(n["Name"]): [
                str(c["Subnet"])
                for c in (n.get("IPAM") or {}).get("Config") or []
                if c.get("Subnet")
            ]
            for n in found
        }

    def remove_network(self, name: str) -> None:
        with _engine_errors(self.spec.name), contextlib.suppress(NotFound):
            self._api.remove_network(name)

    def ensure_volume(self, name: str, labels: Mapping[str, str]) -> None:
        with _engine_errors(self.spec.name):
            found = self._api.volumes(filters={"name": name}).get("Volumes") or []
            if not any(v["Name"] == name for v in found):
                self._api.create_volume(name, labels=dict(labels))

    def has_image(self, ref: str) -> bool:
        with _engine_errors(self.spec.name):
            try:
                self._api.inspect_image(ref)  # type: ignore[no-untyped-call]
            except ImageNotFound:
                return False
            return True

    def build_image(self, build: BuildSpec, tag: str) -> None:
        with _engine_errors(self.spec.name):
            stream = self._api.build(
                path=build.context,
                dockerfile=build.dockerfile,
                tag=tag,
                buildargs=dict(build.args),
                rm=True,
                decode=True,
            )
            for chunk in stream:
                if "error" in chunk:
                    raise Invalid(f"building {tag} on {self.spec.name} failed: {chunk['error']}")

    def export_image(self, ref: str) -> Iterator[bytes]:
        with _engine_errors(self.spec.name):
            yield from self._api.get_image(ref)

    def import_image(self, chunks: Iterator[bytes]) -> None:
        with _engine_errors(self.spec.name):
            self._api.load_image(chunks)  # type: ignore[no-untyped-call]

    def create(self, plan: ContainerPlan, start: bool = True) -> str:
        spec = plan.spec
        with _engine_errors(self.spec.name):
            api = self._api
        restart: dict[str, Any] = {}
        if spec.restart != "no":
            restart = {"Name": spec.restart}
            if spec.restart == "on-failure" and spec.restart_max:
                restart["MaximumRetryCount"] = spec.restart_max
        binds = list(plan.binds)
        tmpfs = {m.target: "" for m in spec.volumes if m.kind == "tmpfs"}
        anonymous = [m.target for m in spec.volumes if m.kind == "volume" and not m.source]
        port_bindings: dict[int | str, Any] = {}
        for port in spec.ports:
            key = f"{port.container_port}/{port.protocol}"
            bound: tuple[str, int] | int | None = port.host_port
            if port.host_ip and port.host_port:
                bound = (port.host_ip, port.host_port)
            port_bindings.setdefault(key, []).append(bound)
        network_mode = spec.network_mode
        if network_mode is None and plan.networks:
            network_mode = plan.networks[0].name
        host_config = api.create_host_config(
            binds=binds or None,
            port_bindings=port_bindings or None,
            restart_policy=restart or None,
            privileged=spec.privileged,
            devices=list(spec.devices) or None,
            cap_add=list(spec.cap_add) or None,
            group_add=list(spec.group_add) or None,
            shm_size=spec.shm_size,
            runtime=spec.runtime,
            network_mode=network_mode,
            nano_cpus=int(spec.cpu_limit * 1e9) if spec.cpu_limit else None,
            mem_limit=spec.memory_limit,
            mem_reservation=spec.memory_reservation,
            tmpfs=tmpfs or None,
            init=spec.init or None,
            extra_hosts=list(spec.extra_hosts) or None,
        )
        networking = None
        if spec.network_mode is None and plan.networks:
            first = plan.networks[0]
            endpoint = api.create_endpoint_config(aliases=list(first.aliases))
            networking = api.create_networking_config({first.name: endpoint})  # type: ignore[arg-type]
        health = None
        if spec.healthcheck is not None:
            hc = spec.healthcheck
            health = {
                "test": list(hc.test),
                "interval": _nanos(hc.interval_s),
                "timeout": _nanos(hc.timeout_s),
                "retries": hc.retries,
                "start_period": _nanos(hc.start_period_s),
            }
        with _engine_errors(self.spec.name):
            try:
                created = api.create_container(
                    spec.image,
                    command=list(spec.command) if spec.command is not None else None,
                    entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
                    name=plan.name,
                    environment=dict(spec.environment),
                    labels=dict(plan.labels),
                    hostname=spec.hostname,
                    ports=[
                        *((p.container_port, p.protocol) for p in spec.ports),
                        *((port, "tcp") for port in spec.expose),
                    ]
                    or None,
                    volumes=anonymous or None,
                    host_config=host_config,
                    networking_config=networking,
                    working_dir=spec.working_dir,
                    user=spec.user,
                    healthcheck=health,
                    tty=spec.tty,
                    stdin_open=spec.stdin_open,
                    stop_timeout=round(spec.stop_grace_s),
                )
            except ImageNotFound as exc:
                raise ImageMissing(f"{self.spec.name}: {exc.explanation or exc}") from None
            except APIError as exc:
                if exc.status_code == 409:
                    message = f"container {plan.name} already exists on {self.spec.name}"
                    raise Conflict(message) from None
                raise
            container_id = str(created["Id"])
            for extra in plan.networks[1:] if spec.network_mode is None else ():
                aliases = list(extra.aliases)
                api.connect_container_to_network(container_id, extra.name, aliases=aliases)
            if start:
                api.start(container_id)
        return container_id

    def start(self, container_id: str) -> None:
        with _engine_errors(self.spec.name):
            self._api.start(container_id)

    def details(self, container_id: str) -> ContainerDetails:
        with _engine_errors(self.spec.name):
            found = self._api.inspect_container(container_id)
        state = found.get("State") or {}
        ports: list[PublishedPort] = []
        for key, bindings in ((found.get("NetworkSettings") or {}).get("Ports") or {}).items():
            number, _, protocol = str(key).partition("/")
            for binding in bindings or []:
                ports.append(
                    PublishedPort(
                        int(number),
                        protocol or "tcp",
                        str(binding.get("HostIp", "")),
                        int(binding.get("HostPort") or 0),
                    )
                )
        return ContainerDetails(
            state=str(state.get("Status", "")),
            exit_code=int(state.get("ExitCode") or 0),
            started_at=_when(state.get("StartedAt")),
            finished_at=_when(state.get("FinishedAt")),
            ports=tuple(sorted(ports, key=lambda p: (p.container_port, p.host_ip))),
            health=str((state.get("Health") or {}).get("Status", "")),
            pid=int(state.get("Pid") or 0),
        )

    def listening_ports(self, container_id: str, pid: int = 0) -> set[int]:
        """Read the container's /proc/net/tcp: straight from this machine's /proc when the
        engine is local and the process is visibly the container's (a few ms; no inspect
        when its `pid` is given), else by `cat` inside the container (one exec, tens of ms)."""
        if self._local and pid > 0:
            text = _read_proc_tcp(pid, container_id)
            if text is not None:
                return listening_ports(text)
        if self._local:
            with _engine_errors(self.spec.name):
                found = self._api.inspect_container(container_id)
            pid = int((found.get("State") or {}).get("Pid") or 0)
            text = _read_proc_tcp(pid, str(found.get("Id", container_id)))
            if text is not None:
                return listening_ports(text)
        with _engine_errors(self.spec.name):
            api = self._connect(max(1, round(self.timeout))).api
            made = api.exec_create(container_id, ["cat", "/proc/net/tcp", "/proc/net/tcp6"])
            output = bytes(api.exec_start(made["Id"]) or b"")
            code = api.exec_inspect(made["Id"]).get("ExitCode")
        text = output.decode(errors="replace")
        ports = listening_ports(text)
        if code in (126, 127) or "local_address" not in text:  # no cat, or no /proc/net/tcp
            raise Invalid(
                f"cannot see which ports container {container_id[:12]} listens on: its image "
                "has no `cat`; give the service a healthcheck instead"
            )
        return ports

    def stop(self, container_id: str, timeout: float) -> None:
        with _engine_errors(self.spec.name), contextlib.suppress(NotFound):
            self._api.stop(container_id, timeout=max(0, round(timeout)))

    def remove(self, container_id: str) -> None:
        with _engine_errors(self.spec.name), contextlib.suppress(NotFound):
            self._api.remove_container(container_id, force=True, v=True)

    def logs(
        self, container_id: str, tail: int, follow: bool, since: float | None = None
    ) -> "_Stream[bytes]":
        options: dict[str, Any] = {"since": since} if since is not None else {}
        with _engine_errors(self.spec.name):
            stream = self._api.logs(
                container_id,
                stream=True,
                follow=follow,
                tail=tail if tail >= 0 else "all",
                timestamps=False,
                **options,
            )
        return _Stream(self.spec.name, stream)

    # ------------------------------------------------------------ swarm (on a manager)
    def swarm_nodes(self) -> list[SwarmNode]:
        with _engine_errors(self.spec.name):
            found = self._api.nodes()
        return [
            SwarmNode(
                id=str(node["ID"]),
                hostname=str((node.get("Description") or {}).get("Hostname", "")),
                role=str((node.get("Spec") or {}).get("Role", "")),
            )
            for node in found
        ]

    def swarm_services(self, labels: Mapping[str, str]) -> list[SwarmService]:
        with _engine_errors(self.spec.name):
            found = self._api.services(filters={"label": _label_filter(labels)})  # type: ignore[no-untyped-call]
        return [_swarm_service(s) for s in found]

    def swarm_tasks(self, service_id: str) -> list[SwarmTask]:
        with _engine_errors(self.spec.name):
            found = self._api.tasks(filters={"service": service_id})  # type: ignore[no-untyped-call]
        return [_swarm_task(t) for t in found]

    def create_service(self, plan: ServicePlan) -> str:
        """Create the service; the image is used as named (no registry lookup)."""
        with _engine_errors(self.spec.name):
            try:
                created = self._api.create_service(  # type: ignore[no-untyped-call]
                    dict(plan.task_template), **_service_options(plan)
                )
            except APIError as exc:
                if exc.status_code == 409:
                    raise Conflict(f"service {plan.name} already exists on the swarm") from None
                raise
        return str(created["ID"])

    def update_service(self, service_id: str, version: int, plan: ServicePlan) -> None:
        """Replace the service's spec; swarm then rolls the change out by its update_config."""
        with _engine_errors(self.spec.name):
            self._api.update_service(
                service_id,
                version,
                task_template=dict(plan.task_template),
                fetch_current_spec=False,
                **_service_options(plan),
            )

    def remove_service(self, service_id: str) -> None:
        with _engine_errors(self.spec.name), contextlib.suppress(NotFound):
            self._api.remove_service(service_id)  # type: ignore[no-untyped-call]

    def events(self, labels: Mapping[str, str]) -> "_Stream[dict[str, Any]]":
        filters = {"type": ["container"], "label": _label_filter(labels)}
        with _engine_errors(self.spec.name):
            stream: _Stream[dict[str, Any]] = _Stream(
                self.spec.name, self._api.events(decode=True, filters=filters)
            )
        with self._lock:
            self._streams.add(stream)
        return stream

    def close(self) -> None:
        """Close the engine's clients, streams and tunnel for good (a driver is not used
        again: the host service makes a new one)."""
        with self._lock:
            self._closed = True
        self._reset()

    def _reset(self) -> None:
        """Close the clients, streams and tunnel open now."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            streams = list(self._streams)
            self._streams.clear()
        for stream in streams:
            stream.close()
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        if self._tunnel is not None:
            self._tunnel.close()


T = TypeVar("T")


class _Stream(Generic[T]):
    """What the engine streams, read item by item (driver.EngineStream); closed when it
    ends, when its reader stops early, or by close() from another thread."""

    def __init__(self, host: str, stream: Any) -> None:
        self._host = host
        self._stream = stream  # docker-py's CancellableStream
        self._closed = False

    def __iter__(self) -> "_Stream[T]":
        return self

    def __next__(self) -> T:
        try:
            with _engine_errors(self._host):
                item: T | None = next(self._stream, None)
        except CorralError:
            if self._closed:  # closed under a waiting reader: the end, not a failure
                raise StopIteration from None
            raise
        if item is None:
            self.close()
            raise StopIteration
        return item

    def close(self) -> None:
        """docker-py's close shuts the socket down first and, when the engine has already
        dropped the connection (ENOTCONN), raises before closing it, which would leave it
        open until collected: the response's own close closes it."""
        self._closed = True
        with contextlib.suppress(Exception):
            self._stream.close()
        with contextlib.suppress(Exception):
            self._stream._response.close()


@contextlib.contextmanager
def _engine_errors(host: str) -> Iterator[None]:
    """Turn docker-py and socket failures into corral errors naming the host."""
    try:
        yield
    except CorralError:
        raise
    except NotFound as exc:
        raise CorralNotFound(f"{host}: {exc.explanation or exc}") from None
    except APIError as exc:
        reason = f"{host}: {exc.explanation or exc}"
        if "not a swarm manager" in reason:  # the engine's words; its status (503) is shared
            raise NotSwarmManager(reason) from None
        raise Invalid(reason) from None
    except (DockerException, OSError, RequestsConnectionError) as exc:
        raise Unreachable(f"{host}: {_short(exc)}", {"host": host}) from None


_REASONS = {
    "Connection refused": "connection refused",
    "timed out": "timed out",
    "No such file or directory": "socket not found",
    "Name or service": "host name does not resolve",
}


def _short(exc: BaseException) -> str:
    """A one-line reason from a docker-py or socket error."""
    text = str(exc) or type(exc).__name__
    for marker, reason in _REASONS.items():
        if marker in text:
            return reason
    return text.splitlines()[0][:300]


def _service_options(plan: ServicePlan) -> dict[str, Any]:
    """What service create and update both send, besides the task template."""
    return {
        "name": plan.name,
        "labels": dict(plan.labels),
        "mode": dict(plan.mode),
        "update_config": dict(plan.update_config),
        "rollback_config": dict(plan.rollback_config),
        "endpoint_spec": dict(plan.endpoint_spec),
    }
