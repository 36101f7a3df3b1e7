"""Prometheus metrics for one corral process, in a registry of its own.

The API middleware counts requests, the event bus counts events, the host monitor sets
reachability; `/metrics` renders the registry.
"""

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "corral_http_requests",
            "HTTP requests served, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "corral_http_request_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            registry=self.registry,
        )
        self.events = Counter(
            "corral_events", "Events recorded, by kind.", ["kind"], registry=self.registry
        )
        self.host_reachable = Gauge(
            "corral_host_reachable",
            "1 when the host's engine answered its last check, 0 when not.",
            ["host"],
            registry=self.registry,
        )
        self.broker_connected = Gauge(
            "corral_broker_connected",
            "1 while the broker connection is up, 0 when not.",
            ["broker"],
            registry=self.registry,
        )
        self.job_latency_seconds = Histogram(
            "corral_farm_ready_to_job_seconds",
            "From a ready message to its take job published to the arm.",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.host_check_seconds = Histogram(
            "corral_host_check_seconds",
            "Time one engine check took.",
            ["host"],
            registry=self.registry,
        )

    def forget_host(self, name: str) -> None:
        for metric in (self.host_reachable, self.host_check_seconds):
            with contextlib.suppress(KeyError):
                metric.remove(name)

    def render(self) -> bytes:
        return generate_latest(self.registry)
