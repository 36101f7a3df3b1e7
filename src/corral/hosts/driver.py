"""The protocol every host driver follows, and the factory that picks one for a spec.

Drivers are synchronous (SDKs block); the control layer calls them from threads.
"""

from typing import Protocol

from corral.model.hosts import EngineFacts, HostSpec


class HostDriver(Protocol):
    """One connection to one engine."""

    def probe(self) -> EngineFacts:
        """Look at the engine; raise `corral.errors.Unreachable` when it does not answer."""
        ...

    def close(self) -> None:
        """Release connections; the driver is not used again."""
        ...


class DriverFactory(Protocol):
    def __call__(self, spec: HostSpec, timeout: float) -> HostDriver: ...
