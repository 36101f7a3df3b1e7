"""Readiness facts read from inside a container: which TCP ports are listening.

The Docker driver reads a container's /proc/net/tcp (from this machine's /proc, or by `cat`
inside it) and asks this module which ports listen: a check that takes no connection.
"""

LISTEN = "0A"


def listening_ports(proc_net_tcp: str) -> set[int]:
    """Local ports in LISTEN state in the text of /proc/net/tcp (and tcp6)."""
    found: set[int] = set()
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] == "sl" or not fields[0].endswith(":"):
            continue
        local, state = fields[1], fields[3]
        _, colon, port = local.rpartition(":")
        if colon and state.upper() == LISTEN:
            try:
                found.add(int(port, 16))
            except ValueError:
                continue
    return found
