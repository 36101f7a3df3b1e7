"""The private subnets of session networks: a pool cut into equal blocks, one per session,
never one that overlaps a network the engine already has (Docker's own default pools end
after about 30 networks, so corral names each session network's subnet itself).
"""

import ipaddress
from collections.abc import Iterable, Mapping

Block = ipaddress.IPv4Network


def parse_pool(pool: str, prefix: int) -> Block:
    """The pool as a network; ValueError (saying why) for a pool that is not an IPv4 network
    or whose blocks would not fit in it."""
    try:
        network = ipaddress.ip_network(pool, strict=True)
    except ValueError as exc:
        raise ValueError(f"{pool!r} is not an IPv4 network in CIDR form ({exc})") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"{pool!r} is not an IPv4 network")
    if not network.prefixlen <= prefix <= 29:
        raise ValueError(
            f"blocks of /{prefix} do not fit in {pool} (from /{network.prefixlen} to /29)"
        )
    return network


def containers_per_block(prefix: int) -> int:
    """Addresses a block leaves for containers (network, broadcast and gateway taken)."""
    return (1 << (32 - prefix)) - 3


class SubnetPool:
    """The blocks of one host's pool: which session holds which, and the subnets of the
    engine's own networks (by network name), which no block may overlap."""

    def __init__(self, pool: str, prefix: int) -> None:
        self.pool = parse_pool(pool, prefix)
        self.prefix = prefix
        self.held: dict[str, Block] = {}  # session -> its block
        self.engine: dict[str, list[Block]] = {}  # network name -> its subnets
        self.known = False  # the engine's networks have been read
        self._next = 0  # blocks are handed out round the pool, not lowest first
        self._count = 2 ** (prefix - self.pool.prefixlen)

    def describe(self) -> str:
        return f"{self.pool} in /{self.prefix} blocks"

    def note_engine(self, networks: Mapping[str, Iterable[str]]) -> None:
        """The engine's networks and their subnets as just read (IPv6 ones are ignored)."""
        seen: dict[str, list[Block]] = {}
        for name, subnets in networks.items():
            for text in subnets:
                try:
                    net = ipaddress.ip_network(text, strict=False)
                except ValueError:
                    continue
                if isinstance(net, ipaddress.IPv4Network):
                    seen.setdefault(name, []).append(net)
        self.engine = seen
        self.known = True

    def take(self, session: str, network: str) -> str | None:
        """The session's block (the one it holds, else a free one), or None when every block
        is held or overlaps a network of the engine. `network` is the session's own network
        name: its subnet on the engine (a restart) is the session's, not a conflict."""
        if session in self.held:
            return str(self.held[session])
        own = self.engine.get(network, [])
        if own and own[0].prefixlen == self.prefix and own[0].subnet_of(self.pool):
            self.held[session] = own[0]
            return str(own[0])
        busy = [n for name, nets in self.engine.items() if name != network for n in nets]
        busy = [n for n in busy if n.overlaps(self.pool)]
        held = set(self.held.values())
        size = 2 ** (32 - self.prefix)
        start = int(self.pool.network_address)
        for step in range(self._count):
            index = (self._next + step) % self._count
            block = ipaddress.IPv4Network((start + index * size, self.prefix))
            if block in held or any(block.overlaps(n) for n in busy):
                continue
            self._next = (index + 1) % self._count
            self.held[session] = block
            return str(block)
        return None

    def refuse(self, session: str, network: str, taken_by: str = "") -> None:
        """The engine refused the session's block (a network made meanwhile overlaps it):
        keep that block out until the engine's networks are read again."""
        block = self.held.pop(session, None)
        if block is not None:
            self.engine.setdefault(taken_by or f"?{network}", []).append(block)

    def release(self, session: str, network: str) -> None:
        """The session's network is gone: its block is free again."""
        self.held.pop(session, None)
        self.engine.pop(network, None)

    def free(self) -> int:
        """Blocks neither held nor overlapping an engine network (for messages and tests)."""
        busy = [n for nets in self.engine.values() for n in nets if n.overlaps(self.pool)]
        held = set(self.held.values())
        size = 2 ** (32 - self.prefix)
        start = int(self.pool.network_address)
        count = 0
        for index in range(self._count):
            block = ipaddress.IPv4Network((start + index * size, self.prefix))
            if block not in held and not any(block.overlaps(n) for n in busy):
                count += 1
        return count
