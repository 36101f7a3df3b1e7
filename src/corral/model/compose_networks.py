"""Compose `networks:` and `volumes:` sections: each named entry checked into a NetworkSpec or
a VolumeSpec (external ones take only a name)."""

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from corral.model.compose_check import Checker
from corral.model.compose_fields import (
    Key,
    _Bad,
    _bool,
    _mapping,
    _sequence,
    _subnet,
    _word,
)
from corral.model.names import check_name
from corral.model.stack_spec import (
    NetworkSpec,
    VolumeSpec,
)

T = TypeVar("T")


class NetworksVolumes(Checker):
    """The top-level networks and volumes."""

    def named_sections(
        self, data: Mapping[str, Any], key: str, parse: Callable[[str, Any, Key], T]
    ) -> dict[str, T]:
        body: dict[str, Any] = self.opt(data, key, (), _mapping, {})
        declared = self.declared_networks if key == "networks" else self.declared_volumes
        declared.update(body)
        out: dict[str, T] = {}
        for name, value in body.items():
            path: Key = (key, name)
            if name.startswith("x-"):
                continue
            try:
                check_name(name, f"{key[:-1]} name")
            except ValueError as exc:
                self.add(path, str(exc))
                continue
            try:
                out[name] = parse(name, value, path)
            except _Bad as bad:
                self.add(bad.path, bad.message)
        return out

    def external(self, body: Mapping[str, Any], path: Key, what: str) -> tuple[bool, str | None]:
        """The `external` and `name` keys, shared by networks and volumes."""
        external_name = self.opt(body, "name", path, _word, None)
        raw = body.get("external")
        external = False
        if isinstance(raw, dict):  # legacy `external: {name: x}`
            external = True
            self.check_keys(raw, (*path, "external"), {"name"})
            external_name = self.opt(raw, "name", (*path, "external"), _word, external_name)
        elif raw is not None:
            external = self.attempt(False, _bool, raw, (*path, "external"))
        if external:
            for key in body:
                if key not in ("external", "name") and not key.startswith("x-"):
                    self.add((*path, key), f"an external {what} takes only 'name'")
        elif "name" in body:
            self.add(
                (*path, "name"),
                f"only an external {what} may set name; corral names the {what}s it creates",
            )
            external_name = None
        return external, external_name

    def network(self, name: str, value: Any, path: Key) -> NetworkSpec:
        if value is None:
            return NetworkSpec(name)
        body = _mapping(value, path)
        self.check_keys(body, path, {"driver", "external", "attachable", "ipam", "labels", "name"})
        external, external_name = self.external(body, path, "network")
        ipam = self.section(body, "ipam", path, {"driver", "config"})
        ipam_path = (*path, "ipam")
        driver = self.opt(ipam, "driver", ipam_path, _word, "default")
        if driver != "default":
            self.add((*ipam_path, "driver"), "only the default IPAM driver is supported")
        subnet: str | None = None
        configs: list[Any] = self.opt(ipam, "config", ipam_path, _sequence, [])
        if len(configs) > 1:
            self.add((*ipam_path, "config"), "only one IPAM config (one subnet) is supported")
        elif configs:
            config_path = (*ipam_path, "config", 0)
            config = self.attempt({}, _mapping, configs[0], config_path)
            self.check_keys(config, config_path, {"subnet"})
            subnet = self.opt(config, "subnet", config_path, _subnet, None)
        return NetworkSpec(
            name=name,
            driver=self.opt(body, "driver", path, _word, None),
            external=external,
            attachable=self.opt(body, "attachable", path, _bool, False),
            subnet=subnet,
            labels=self.opt(body, "labels", path, self.labels, {}),
            external_name=external_name,
        )

    def volume(self, name: str, value: Any, path: Key) -> VolumeSpec:
        if value is None:
            return VolumeSpec(name)
        body = _mapping(value, path)
        self.check_keys(body, path, {"driver", "external", "name"})
        external, external_name = self.external(body, path, "volume")
        driver = self.opt(body, "driver", path, _word, None)
        return VolumeSpec(name, driver, external, external_name)
