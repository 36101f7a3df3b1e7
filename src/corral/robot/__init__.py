"""corral's robot side: the client a robot runs to join a fleet, and a fleet simulator.

Needs only the standard library and `websockets` (`HttpRobot` needs only the standard
library), and imports nothing else from corral: copy this folder onto a robot and use it.

    from corral.robot import RobotClient, HttpRobot, RobotRefused
"""

from typing import TYPE_CHECKING, Any

from .errors import RobotError, RobotHttpError, RobotRefused
from .http_client import HttpRobot

if TYPE_CHECKING:  # imported on first use: HttpRobot works without websockets
    from .client import RobotClient

__all__ = ["HttpRobot", "RobotClient", "RobotError", "RobotHttpError", "RobotRefused"]


def __getattr__(name: str) -> Any:
    if name == "RobotClient":
        from .client import RobotClient

        return RobotClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
