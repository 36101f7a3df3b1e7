"""Compose `services:`: one service body checked into a ServiceSpec (image or build, command,
environment, ports, mounts, networks, dependencies, health, deploy), and what swarm refuses."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.model.compose_check import Checker
from corral.model.compose_env import parse_env_text
from corral.model.compose_fields import (
    _SERVICE_KEYS,
    _VOLUME_OPTIONS,
    Key,
    _absolute,
    _argv,
    _Bad,
    _bool,
    _bytes,
    _condition,
    _constraint,
    _cpus,
    _device,
    _duration,
    _exposed,
    _extra_host,
    _failure_action,
    _health_test,
    _image,
    _int,
    _mapping,
    _mode,
    _network_mode,
    _order,
    _port,
    _positive_bytes,
    _ratio,
    _replicas,
    _restart,
    _scalar,
    _sequence,
    _swarm_restart,
    _text,
    _word,
)
from corral.model.names import check_name
from corral.model.stack_spec import (
    ROLLBACK_DEFAULTS,
    BuildSpec,
    Condition,
    Constraint,
    Dependency,
    FailureAction,
    Healthcheck,
    PortMapping,
    RestartPolicy,
    ServiceSpec,
    UpdatePolicy,
    VolumeMount,
)


@dataclass
class _Deploy:
    replicas: int = 1
    cpu_limit: float | None = None
    memory_limit: int | None = None
    cpu_reservation: float | None = None
    memory_reservation: int | None = None
    constraints: tuple[Constraint, ...] = ()
    update_order: str = "stop-first"
    restart: tuple[RestartPolicy, int] | None = None
    update_config: UpdatePolicy = field(default_factory=UpdatePolicy)
    rollback_config: UpdatePolicy = ROLLBACK_DEFAULTS
    max_replicas_per_node: int = 0
    restart_delay_s: float | None = None
    restart_window_s: float | None = None
    global_mode: bool = False


_UPDATE_KEYS = {"parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order"}
# What a swarm service cannot express, so swarm mode refuses it (the key, and why).
_NOT_IN_SWARM = {
    "privileged": "swarm services cannot run privileged containers",
    "devices": "swarm services cannot map devices",
    "runtime": "swarm services cannot choose a container runtime",
    "shm_size": "swarm services cannot set the size of /dev/shm",
    "network_mode": "swarm services attach to overlay networks; use networks:",
}


class Services(Checker):
    """The services, each on its own: a service with problems is left out."""

    def service(self, name: str, body: Any, all_names: set[str]) -> ServiceSpec | None:
        path: Key = ("services", name)
        try:
            check_name(name, "service name")
        except ValueError as exc:
            self.add(path, str(exc))
        if not isinstance(body, dict):
            self.add(path, "expected a mapping with image or build")
            return None
        self.check_keys(body, path, _SERVICE_KEYS)
        before = len(self.problems)

        build = self.opt(body, "build", path, self.build, None)
        image = self.opt(body, "image", path, _image, None)
        if body.get("image") is None and body.get("build") is None:
            self.add(path, "a service needs image or build")
        environment: dict[str, str] = self.opt(body, "env_file", path, self.env_files, {})
        environment.update(self.opt(body, "environment", path, self.key_values, dict[str, str]()))
        network_mode = self.opt(body, "network_mode", path, _network_mode, None)
        networks: dict[str, tuple[str, ...]] = self.opt(
            body, "networks", path, self.service_networks, {}
        )
        if body.get("networks") is not None and body.get("network_mode") is not None:
            self.add((*path, "networks"), "networks cannot be combined with network_mode")
        elif body.get("networks") is None and body.get("network_mode") is None:
            networks = {"default": ()}
        deploy = self.opt(body, "deploy", path, self.deploy, _Deploy())
        restart = self.opt(body, "restart", path, _restart, None) or deploy.restart or ("no", 0)
        depends_on: tuple[Dependency, ...] = self.opt(body, "depends_on", path, self.depends_on, ())
        for dependency in depends_on:
            if dependency.service not in all_names:
                where = self.dependency_paths[(name, dependency.service)]
                self.add(where, f"depends on unknown service {dependency.service!r}")
        spec = ServiceSpec(
            name=name,
            image=image or f"{self.stack}-{name}:latest",
            line=self.doc.line_of(path),
            build=build,
            command=self.opt(body, "command", path, _argv, None),
            entrypoint=self.opt(body, "entrypoint", path, _argv, None),
            environment=environment,
            ports=self.opt(body, "ports", path, self.ports, ()),
            expose=self.opt(body, "expose", path, self.expose, ()),
            volumes=self.opt(body, "volumes", path, self.mounts, ()),
            networks=networks,
            network_mode=network_mode,
            depends_on=depends_on,
            restart=restart[0],
            restart_max=restart[1],
            healthcheck=self.opt(body, "healthcheck", path, self.healthcheck, None),
            labels=self.opt(body, "labels", path, self.labels, {}),
            hostname=self.opt(body, "hostname", path, _word, None),
            privileged=self.opt(body, "privileged", path, _bool, False),
            devices=self.opt(body, "devices", path, self.each(_device), ()),
            cap_add=self.opt(body, "cap_add", path, self.each(_word), ()),
            group_add=self.opt(body, "group_add", path, self.each(_word), ()),
            shm_size=self.opt(body, "shm_size", path, _bytes, None),
            runtime=self.opt(body, "runtime", path, _word, None),
            replicas=deploy.replicas,
            cpu_limit=deploy.cpu_limit,
            memory_limit=deploy.memory_limit,
            cpu_reservation=deploy.cpu_reservation,
            memory_reservation=deploy.memory_reservation,
            constraints=deploy.constraints,
            update_order=deploy.update_order,
            update_config=deploy.update_config,
            rollback_config=deploy.rollback_config,
            max_replicas_per_node=deploy.max_replicas_per_node,
            global_mode=deploy.global_mode,
            restart_delay_s=deploy.restart_delay_s,
            restart_window_s=deploy.restart_window_s,
            stop_grace_s=self.opt(body, "stop_grace_period", path, _duration, 10.0),
            working_dir=self.opt(body, "working_dir", path, _absolute, None),
            user=self.opt(body, "user", path, _word, None),
            init=self.opt(body, "init", path, _bool, False),
            tty=self.opt(body, "tty", path, _bool, False),
            stdin_open=self.opt(body, "stdin_open", path, _bool, False),
            extra_hosts=self.opt(body, "extra_hosts", path, self.extra_hosts, ()),
        )
        if self.mode == "swarm" and len(self.problems) == before:
            self.swarm_checks(spec, body, path)
        # A service with problems is left out, so later checks do not pile on more.
        return spec if len(self.problems) == before else None

    def build(self, value: Any, path: Key) -> BuildSpec:
        if isinstance(value, str):
            return BuildSpec(self.context(value, path))
        body = _mapping(value, path)
        self.check_keys(body, path, {"context", "dockerfile", "args"})
        context = self.opt(body, "context", path, self.context, None)
        if context is None and body.get("context") is None:
            context = self.attempt(None, self.context, ".", (*path, "context"))
        return BuildSpec(
            context=context or "",
            dockerfile=self.opt(body, "dockerfile", path, _word, "Dockerfile"),
            args=self.opt(body, "args", path, self.key_values, {}),
        )

    def context(self, value: Any, path: Key) -> str:
        text = _word(value, path, "a build context directory")
        if "://" in text or text.startswith("git@"):
            raise _Bad(path, f"build context {text!r}: only local directories are supported")
        return self.resolve(text, path, "build context")

    def key_values(self, value: Any, path: Key) -> dict[str, str]:
        """`environment` or `args`: KEY=VALUE / KEY list, or a mapping; bare keys pass through."""
        out: dict[str, str] = {}
        if isinstance(value, list):
            for i, item in enumerate(value):
                text = self.attempt(None, _text, item, (*path, i), "KEY=VALUE")
                if text is None:
                    continue
                key, sep, rest = text.partition("=")
                if not key.strip():
                    self.add((*path, i), f"expected KEY=VALUE, got {text!r}")
                elif sep:
                    out[key.strip()] = rest
                elif key.strip() in self.variables:
                    out[key.strip()] = self.variables[key.strip()]
            return out
        for key, item in _mapping(value, path).items():
            if item is None:
                if key in self.variables:
                    out[key] = self.variables[key]
                continue
            text = self.attempt(None, _scalar, item, (*path, key))
            if text is not None:
                out[key] = text
        return out

    def env_files(self, value: Any, path: Key) -> dict[str, str]:
        entries = [(value, path)] if isinstance(value, str | dict) else None
        if entries is None:
            entries = [(item, (*path, i)) for i, item in enumerate(_sequence(value, path))]
        out: dict[str, str] = {}
        for entry, where in entries:
            out.update(self.attempt({}, self.env_file, entry, where))
        return out

    def env_file(self, entry: Any, path: Key) -> dict[str, str]:
        required = True
        if isinstance(entry, dict):
            self.check_keys(entry, path, {"path", "required"})
            required = self.opt(entry, "required", path, _bool, True)
            if entry.get("path") is None:
                raise _Bad(path, "an env_file entry needs a path")
            path = (*path, "path")
            entry = entry["path"]
        file = Path(self.resolve(_word(entry, path, "a file path"), path, "env_file"))
        try:
            text = self.read(file)
        except FileNotFoundError:
            if required:
                raise _Bad(path, f"env_file {str(file)!r} does not exist") from None
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise _Bad(path, f"cannot read env_file {str(file)!r}: {exc}") from None
        values, bare, errors = parse_env_text(text)
        for number, message in errors:
            self.add(path, f"env_file {str(file)!r} line {number}: {message}")
        for key in bare:
            if key in self.variables:
                values[key] = self.variables[key]
        return values

    def ports(self, value: Any, path: Key) -> tuple[PortMapping, ...]:
        items = _sequence(value, path)
        found = [self.attempt(None, _port, item, (*path, i)) for i, item in enumerate(items)]
        return tuple(port for port in found if port is not None)

    def expose(self, value: Any, path: Key) -> tuple[int, ...]:
        items = _sequence(value, path)
        found = [self.attempt(None, _exposed, item, (*path, i)) for i, item in enumerate(items)]
        return tuple(port for port in found if port is not None)

    def mounts(self, value: Any, path: Key) -> tuple[VolumeMount, ...]:
        items = _sequence(value, path)
        found = [self.attempt(None, self.mount, item, (*path, i)) for i, item in enumerate(items)]
        return tuple(mount for mount in found if mount is not None)

    def mount(self, value: Any, path: Key) -> VolumeMount:
        if isinstance(value, dict):
            return self.long_mount(value, path)
        text = _word(value, path, "source:target[:ro] or a mapping")
        parts = text.split(":")
        if len(parts) == 1:
            return VolumeMount("volume", _absolute(parts[0], path, "target"))
        if len(parts) > 3:
            raise _Bad(path, f"volume {text!r} must look like source:target[:ro]")
        source, target = parts[0], _absolute(parts[1], path, "target")
        read_only = False
        for option in parts[2].split(",") if len(parts) == 3 else []:
            if option not in _VOLUME_OPTIONS:
                raise _Bad(path, f"volume option {option!r} is not supported (ro or rw)")
            read_only = read_only or option == "ro"
        if not source:
            raise _Bad(path, f"volume {text!r} has an empty source")
        if source.startswith(("/", ".", "~")):
            return VolumeMount("bind", target, self.resolve(source, path, "bind source"), read_only)
        return VolumeMount("volume", target, self.named_volume(source, path), read_only)

    def named_volume(self, source: str, path: Key) -> str:
        if source not in self.declared_volumes:
            raise _Bad(path, f"volume {source!r} is not declared under top-level volumes")
        return source

    def long_mount(self, body: dict[str, Any], path: Key) -> VolumeMount:
        self.check_keys(
            body, path, {"type", "source", "target", "read_only", "consistency", "bind"}
        )
        bind = self.section(body, "bind", path, {"create_host_path"})
        self.opt(bind, "create_host_path", (*path, "bind"), _bool, True)
        kind = _word(body.get("type"), (*path, "type"), "type: volume, bind or tmpfs")
        target = _absolute(body.get("target"), (*path, "target"), "target")
        read_only = self.opt(body, "read_only", path, _bool, False)
        source = body.get("source")
        source_path = (*path, "source")
        if kind == "bind":
            text = _word(source, source_path, "a bind source path")
            return VolumeMount(
                "bind", target, self.resolve(text, source_path, "bind source"), read_only
            )
        if kind == "volume":
            if source is None or source == "":
                return VolumeMount("volume", target, "", read_only)
            name = self.named_volume(_word(source, source_path), source_path)
            return VolumeMount("volume", target, name, read_only)
        if kind == "tmpfs":
            if source not in (None, ""):
                raise _Bad(source_path, "a tmpfs mount has no source")
            return VolumeMount("tmpfs", target, "", read_only)
        raise _Bad((*path, "type"), f"mount type {kind!r} is not supported (volume, bind or tmpfs)")

    def service_networks(self, value: Any, path: Key) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        entries: list[tuple[str | None, Any, Key]]
        if isinstance(value, list):
            entries = [
                (self.attempt(None, _word, item, (*path, i)), None, (*path, i))
                for i, item in enumerate(value)
            ]
        else:
            entries = [(name, body, (*path, name)) for name, body in _mapping(value, path).items()]
        for name, body, where in entries:
            if name is None:
                continue
            if name != "default" and name not in self.declared_networks:
                self.add(where, f"network {name!r} is not declared under top-level networks")
                continue
            aliases: tuple[str, ...] = ()
            if body is not None:
                settings = self.attempt({}, _mapping, body, where)
                self.check_keys(settings, where, {"aliases"})
                aliases = self.opt(settings, "aliases", where, self.each(_word), ())
            out[name] = aliases
        return out

    def depends_on(self, value: Any, path: Key) -> tuple[Dependency, ...]:
        owner = str(path[1])
        out: list[Dependency] = []
        if isinstance(value, list):
            for i, item in enumerate(value):
                name = self.attempt(None, _word, item, (*path, i), "a service name")
                if name is not None:
                    self.dependency_paths[(owner, name)] = (*path, i)
                    out.append(Dependency(name))
            return tuple(out)
        for name, body in _mapping(value, path).items():
            where: Key = (*path, name)
            self.dependency_paths[(owner, name)] = where
            condition: Condition = "service_started"
            if body is not None:
                settings = self.attempt({}, _mapping, body, where)
                self.check_keys(settings, where, {"condition", "required", "restart"})
                condition = self.opt(settings, "condition", where, _condition, condition)
                self.opt(settings, "required", where, _bool, True)
                self.opt(settings, "restart", where, _bool, False)
            out.append(Dependency(name, condition))
        return tuple(out)

    def healthcheck(self, value: Any, path: Key) -> Healthcheck:
        body = _mapping(value, path)
        allowed = {"test", "interval", "timeout", "retries", "start_period", "disable"}
        self.check_keys(body, path, allowed)
        if self.opt(body, "disable", path, _bool, False):
            return Healthcheck(("NONE",))
        if body.get("test") is None:
            raise _Bad(path, "a healthcheck needs a test (or disable: true)")
        return Healthcheck(
            test=self.opt(body, "test", path, _health_test, ("NONE",)),
            interval_s=self.opt(body, "interval", path, _duration, 30.0),
            timeout_s=self.opt(body, "timeout", path, _duration, 30.0),
            retries=self.opt(body, "retries", path, _int, 3),
            start_period_s=self.opt(body, "start_period", path, _duration, 0.0),
        )

    def extra_hosts(self, value: Any, path: Key) -> tuple[str, ...]:
        if isinstance(value, dict):
            pairs = [(f"{k}:{_text(v, (*path, k))}", (*path, k)) for k, v in value.items()]
        else:
            pairs = [
                (_text(v, (*path, i)), (*path, i)) for i, v in enumerate(_sequence(value, path))
            ]
        found = [self.attempt(None, _extra_host, text, where) for text, where in pairs]
        return tuple(host for host in found if host is not None)

    def deploy(self, value: Any, path: Key) -> _Deploy:
        body = _mapping(value, path)
        allowed = {
            "replicas",
            "resources",
            "placement",
            "restart_policy",
            "update_config",
            "rollback_config",
            "mode",
            "labels",
        }
        self.check_keys(body, path, allowed)
        out = _Deploy()
        out.global_mode = self.opt(body, "mode", path, _mode, "replicated") == "global"
        out.replicas = self.opt(body, "replicas", path, _replicas, 1)
        if out.global_mode and self.mode != "swarm":
            self.add(
                (*path, "mode"),
                "deploy mode 'global' (a task on every node) needs swarm mode "
                "(x-corral: {mode: swarm}); in container mode use replicas and constraints",
            )
        if out.global_mode and body.get("replicas") is not None:
            self.add((*path, "replicas"), "replicas cannot be combined with mode: global")
        resources = self.section(body, "resources", path, {"limits", "reservations"})
        resources_path = (*path, "resources")
        limits = self.section(resources, "limits", resources_path, {"cpus", "memory"})
        limits_path = (*resources_path, "limits")
        out.cpu_limit = self.opt(limits, "cpus", limits_path, _cpus, None)
        out.memory_limit = self.opt(limits, "memory", limits_path, _positive_bytes, None)
        reserved = self.section(resources, "reservations", resources_path, {"cpus", "memory"})
        reserved_path = (*resources_path, "reservations")
        out.cpu_reservation = self.opt(reserved, "cpus", reserved_path, _cpus, None)
        out.memory_reservation = self.opt(reserved, "memory", reserved_path, _positive_bytes, None)
        placement = self.section(body, "placement", path, {"constraints", "max_replicas_per_node"})
        out.max_replicas_per_node = self.opt(
            placement, "max_replicas_per_node", (*path, "placement"), _int, 0
        )
        if out.max_replicas_per_node and self.mode != "swarm":
            self.add(
                (*path, "placement", "max_replicas_per_node"),
                "only swarm mode spreads replicas this way (x-corral: {mode: swarm})",
            )
        constraints: list[Any] = self.opt(
            placement, "constraints", (*path, "placement"), _sequence, []
        )
        constraints_path = (*path, "placement", "constraints")
        found = [
            self.attempt(None, _constraint, item, (*constraints_path, i))
            for i, item in enumerate(constraints)
        ]
        out.constraints = tuple(c for c in found if c is not None)
        policy = self.section(
            body, "restart_policy", path, {"condition", "max_attempts", "delay", "window"}
        )
        policy_path = (*path, "restart_policy")
        if policy:
            condition: RestartPolicy = self.opt(
                policy, "condition", policy_path, _swarm_restart, "always"
            )
            attempts = self.opt(policy, "max_attempts", policy_path, _int, 0)
            out.restart_delay_s = self.opt(policy, "delay", policy_path, _duration, None)
            out.restart_window_s = self.opt(policy, "window", policy_path, _duration, None)
            out.restart = (condition, attempts if condition == "on-failure" else 0)
        out.update_config = self.update_policy(body, "update_config", path, UpdatePolicy())
        out.update_order = out.update_config.order
        out.rollback_config = self.update_policy(body, "rollback_config", path, ROLLBACK_DEFAULTS)
        labels = body.get("labels")
        if labels is not None and not isinstance(labels, dict | list):
            self.add((*path, "labels"), "expected a mapping or a list")
        return out

    def update_policy(
        self, body: Mapping[str, Any], key: str, path: Key, default: UpdatePolicy
    ) -> UpdatePolicy:
        """`update_config` or `rollback_config`; absent keys keep the default's values."""
        config = self.section(body, key, path, _UPDATE_KEYS)
        where = (*path, key)
        action: FailureAction = self.opt(
            config, "failure_action", where, _failure_action, default.failure_action
        )
        if key == "rollback_config" and action == "rollback":
            self.add(
                (*where, "failure_action"), "a rollback cannot roll back; use pause or continue"
            )
        return UpdatePolicy(
            parallelism=self.opt(config, "parallelism", where, _int, default.parallelism),
            delay_s=self.opt(config, "delay", where, _duration, default.delay_s),
            failure_action=action,
            monitor_s=self.opt(config, "monitor", where, _duration, default.monitor_s),
            max_failure_ratio=self.opt(
                config, "max_failure_ratio", where, _ratio, default.max_failure_ratio
            ),
            order=self.opt(config, "order", where, _order, default.order),
        )

    def swarm_checks(self, spec: ServiceSpec, body: Mapping[str, Any], path: Key) -> None:
        """Refuse, by key, what a swarm service cannot express."""
        for key, why in _NOT_IN_SWARM.items():
            value = getattr(spec, key)
            if value is not None and value is not False and value != ():
                self.add((*path, key), f"not supported in swarm mode: {why}")
        for dependency in spec.depends_on:
            if dependency.condition != "service_started":
                self.add(
                    (*self.dependency_paths[(spec.name, dependency.service)], "condition"),
                    f"not supported in swarm mode: swarm starts services without waiting for "
                    f"{dependency.condition}",
                )
        for i, port in enumerate(spec.ports):
            if port.host_ip:
                self.add(
                    (*path, "ports", i),
                    "not supported in swarm mode: a swarm port is published on every address",
                )
        if "networks" in body:
            for name in spec.networks:
                driver = self.networks.get(name)
                if driver is not None and driver.driver not in (None, "overlay"):
                    self.add(
                        (*path, "networks", name),
                        f"not supported in swarm mode: network {name!r} has driver "
                        f"{driver.driver!r}; swarm services need overlay networks",
                    )
