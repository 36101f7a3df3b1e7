"""The fleet's figures for `/metrics`: plain counters that the robot channels, the
dispatcher and the journal bump (no lock, no label lookup per message), read at scrape time.

FleetService owns one FleetMeter; Core registers its FleetCollector in the process's registry.
"""

from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

CHANNELS = ("websocket", "http", "vda5050")
# from a command stored to its ack stored: 1 ms to 10 s
ROUND_TRIP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class ChannelCounts:
    """One channel's messages; a session binds its channel's counts once and bumps them."""

    received: int = 0  # messages robots sent (frames, requests, MQTT messages)
    sent: int = 0  # messages sent to robots
    telemetry: int = 0  # of those received, telemetry reports taken


class Buckets:
    """A histogram as plain counts (Prometheus `le` buckets, the last one +Inf)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, float(total)))
        return out


class FleetMeter:
    def __init__(self) -> None:
        self.websocket = ChannelCounts()
        self.http = ChannelCounts()
        self.vda5050 = ChannelCounts()
        self.checkpoints_taken = 0
        self.checkpoints_refused = 0  # off route: the marker was not reserved for the robot
        self.grants = 0  # reservations granted (each a move sent)
        self.refusals = 0  # reservation requests that made a robot wait (not each retry)
        self.round_trip = Buckets(ROUND_TRIP_BUCKETS)

    def channels(self) -> dict[str, ChannelCounts]:
        return {"websocket": self.websocket, "http": self.http, "vda5050": self.vda5050}


class FleetCollector:
    """Renders a FleetMeter and what the fleet holds now, every sample labelled with the
    replica. Reservations come only from the leader (a follower's copy is stale)."""

    def __init__(
        self,
        meter: FleetMeter,
        replica: str,
        connected: Callable[[], dict[str, int]],
        reservations: Callable[[], dict[str, int]],
        leading: Callable[[], bool],
    ) -> None:
        self.meter = meter
        self.replica = replica
        self.connected = connected
        self.reservations = reservations
        self.leading = leading

    def collect(self) -> Iterator[Metric]:
        meter, replica = self.meter, self.replica
        robots = GaugeMetricFamily(
            "corral_fleet_robots_connected",
            "Robots connected to this replica now, by channel (a socket open, a long poll "
            "waiting, a VDA 5050 vehicle online).",
            labels=["replica", "channel"],
        )
        connected = self.connected()
        for channel in CHANNELS:
            robots.add_metric([replica, channel], connected.get(channel, 0))
        yield robots
        messages = CounterMetricFamily(
            "corral_fleet_messages",
            "Messages from robots (in) and to them (out), by channel.",
            labels=["replica", "channel", "direction"],
        )
        telemetry = CounterMetricFamily(
            "corral_fleet_telemetry",
            "Telemetry reports taken from robots, by channel.",
            labels=["replica", "channel"],
        )
        for channel, counts in meter.channels().items():
            messages.add_metric([replica, channel, "in"], counts.received)
            messages.add_metric([replica, channel, "out"], counts.sent)
            telemetry.add_metric([replica, channel], counts.telemetry)
        yield messages
        yield telemetry
        checkpoints = CounterMetricFamily(
            "corral_fleet_checkpoints",
            "Checkpoints decided: taken, or refused (the marker was not reserved for the robot).",
            labels=["replica", "outcome"],
        )
        checkpoints.add_metric([replica, "taken"], meter.checkpoints_taken)
        checkpoints.add_metric([replica, "refused"], meter.checkpoints_refused)
        yield checkpoints
        requests = CounterMetricFamily(
            "corral_fleet_reservations",
            "Reservation requests decided: granted (a move sent), or refused (the robot waits).",
            labels=["replica", "outcome"],
        )
        requests.add_metric([replica, "granted"], meter.grants)
        requests.add_metric([replica, "refused"], meter.refusals)
        yield requests
        trips = HistogramMetricFamily(
            "corral_fleet_command_round_trip_seconds",
            "From a command stored to its robot's ack stored.",
            labels=["replica"],
        )
        trips.add_metric([replica], meter.round_trip.cumulative(), meter.round_trip.sum)
        yield trips
        held = GaugeMetricFamily(
            "corral_fleet_reservations_held",
            "Markers and lanes reserved by robots now (the markers they stand on included), "
            "by map; only the leader reports it.",
            labels=["replica", "map"],
        )
        if self.leading():
            for name, count in sorted(self.reservations().items()):
                held.add_metric([replica, name], count)
        yield held
