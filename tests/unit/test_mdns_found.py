"""An mDNS service as discovery reports it: the TXT `address` comes first, since several
supervisors may share one host name and so each other's address records."""

import socket

from zeroconf.asyncio import AsyncServiceInfo

from corral.devices.discovery import found_from


def _info(addresses: list[str], properties: dict[str, str]) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        "_webthing._tcp.local.",
        "pi-2._webthing._tcp.local.",
        addresses=[socket.inet_aton(a) for a in addresses],
        port=5000,
        properties=properties,
        server="raspberrypi.local.",
    )


def test_the_txt_address_is_used_first() -> None:
    shared = ["192.168.1.11", "192.168.1.12"]
    found = found_from(_info(shared, {"path": "/", "tls": "0", "address": "192.168.1.12"}))
    assert found.name == "pi-2"
    assert found.addresses == ["192.168.1.12", "192.168.1.11"]
    found = found_from(_info(shared, {"address": "10.0.0.5"}))
    assert found.addresses == ["10.0.0.5", *shared]
    assert found_from(_info(shared, {})).addresses == shared
