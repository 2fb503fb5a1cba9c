"""Prometheus metrics through prometheus_client: requests, latency, batches, queue, tokens, streams, the process.

Each app has its own registry (several servers may live in one process, as in the tests), with the standard
process, platform and garbage-collector collectors beside capmill's own.
"""

from __future__ import annotations

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FAST_PATH_STATES = ("off", "unverified", "verified", "disabled")


class Metrics:
    """The server's metrics; every method is safe from any thread."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            PlatformCollector,
            ProcessCollector,
        )
        from prometheus_client.gc_collector import GCCollector

        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter(
            "capmill_requests", "HTTP requests by route, method and status.", ["route", "method", "status"],
            registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "capmill_request_seconds", "Request latency by route.", ["route"], buckets=LATENCY_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.batch_size = Histogram("capmill_batch_size", "Requests per engine batch.", buckets=BATCH_BUCKETS,
                                    registry=registry)  # fmt: skip
        self.batch_seconds = Histogram("capmill_batch_seconds", "Engine time per batch.", buckets=LATENCY_BUCKETS,
                                       registry=registry)  # fmt: skip
        self.queue_depth = Gauge("capmill_queue_depth", "Requests waiting for the engine.", registry=registry)
        self.in_flight = Gauge("capmill_in_flight", "Requests inside the engine now.", registry=registry)
        self.tokens = Counter("capmill_tokens", "Tokens processed.", ["kind"], registry=registry)
        self.records = Counter("capmill_records", "Caption records by status.", ["status"], registry=registry)
        self.rejected = Counter(
            "capmill_rejected", "Requests refused before the engine, by reason.", ["reason"], registry=registry
        )
        self.first_token = Histogram(
            "capmill_time_to_first_token_seconds", "From queueing to the first streamed token.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.streams = Gauge("capmill_streams_open", "Streaming answers being sent now.", registry=registry)
        self.cancelled = Counter(
            "capmill_cancelled", "Requests cancelled after queueing (off the queue, or their row out of its batch).",
            ["reason"], registry=registry,
        )  # fmt: skip

        self.fast_path = Gauge(
            "capmill_fast_path", "1 for each fast path's current state (off, unverified, verified, disabled).",
            ["path", "state"], registry=registry,
        )  # fmt: skip

    def set_fast_paths(self, report: dict[str, dict]) -> None:
        """The engine's fast paths (engines/fast_paths.py) as one 0/1 series per path and state."""
        for path, info in report.items():
            for state in FAST_PATH_STATES:
                self.fast_path.labels(path, state).set(1 if info.get("state") == state else 0)

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def batch_done(self, size: int, seconds: float, prompt_tokens: int, completion_tokens: int) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.tokens.labels("prompt").inc(prompt_tokens)
        self.tokens.labels("completion").inc(completion_tokens)

    def record_status(self, status: str) -> None:
        self.records.labels(status).inc()

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def set_queue(self, depth: int, in_flight: int) -> None:
        self.queue_depth.set(depth)
        self.in_flight.set(in_flight)

    def render(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode("utf-8")
