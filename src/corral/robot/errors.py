"""The robot client's exceptions, shared by the WebSocket and HTTP clients.

Standard library only, so `HttpRobot` imports it on a robot without `websockets`.
"""


class RobotError(Exception):
    """A failure talking to corral that retrying will not fix by itself."""


class RobotRefused(RobotError):
    """corral refused the robot's credential (bad token, or a token for another robot).

    `code` is the protocol's error code (`unauthorized`, `forbidden`) or `http 401`/`http 403`;
    `reason` the error code in an HTTP answer's body (`bad_signature`, …) when it has one.
    """

    def __init__(self, code: str, message: str = "", reason: str = "") -> None:
        super().__init__(f"corral refused the robot ({code}){': ' + message if message else ''}")
        self.code = code
        self.message = message
        self.reason = reason


class RobotHttpError(RobotError):
    """An HTTP answer of 400 or more other than 401/403 (`status`, and the body's text)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body
