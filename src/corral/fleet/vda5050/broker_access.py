"""Per-vehicle credentials on Mosquitto: a password file (PBKDF2-SHA512, Mosquitto 2's
`$7$` format) and an ACL file letting each vehicle publish and subscribe only its own
VDA 5050 topics, and corral all of them."""

import base64
import hashlib
import secrets

from corral.fleet.vda5050.messages import INBOUND, Topics

ITERATIONS = 101  # mosquitto_passwd's default
VEHICLE_READS = ("order", "instantActions")


def password_line(user: str, password: str, salt: bytes | None = None) -> str:
    """One line of a Mosquitto password file, as `mosquitto_passwd` writes it."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS, 64)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"{user}:$7${ITERATIONS}${encoded[0]}${encoded[1]}"


def vehicle_user(manufacturer: str, serial: str) -> str:
    """The broker user name of a vehicle."""
    return f"{manufacturer}.{serial}"


def acl_file(vehicles: list[tuple[str, str]], master_user: str, topics: Topics) -> str:
    """Mosquitto's ACL: `master_user` reads and writes every vehicle's topics; each vehicle
    writes its state, visualization, connection (and last will) and factsheet, and reads
    its order and instantActions; nothing else."""
    lines = [f"user {master_user}", f"topic readwrite {topics.interface}/{topics.major}/#", ""]
    for manufacturer, serial in sorted(vehicles):
        lines.append(f"user {vehicle_user(manufacturer, serial)}")
        lines += [f"topic write {topics.of(manufacturer, serial, t)}" for t in INBOUND]
        lines += [f"topic read {topics.of(manufacturer, serial, t)}" for t in VEHICLE_READS]
        lines.append("")
    return "\n".join(lines)
