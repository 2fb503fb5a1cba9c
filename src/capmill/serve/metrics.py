"""Prometheus text metrics without a client library: requests, latency, batch sizes, queue depth, tokens."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in pairs)
    return "{" + ",".join(escaped) + "}"


class Metrics:
    """Thread-safe counters and histograms, rendered in the Prometheus text exposition format 0.0.4."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        self.latency: dict[tuple[tuple[str, str], ...], Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)
        self.queue_depth = 0
        self.in_flight = 0
        self.tokens: dict[str, int] = defaultdict(int)
        self.records: dict[str, int] = defaultdict(int)
        self.rejected: dict[str, int] = defaultdict(int)

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (("route", route), ("method", method), ("status", str(status)))
        with self._lock:
            self.requests[key] += 1
            hist = self.latency.setdefault((("route", route),), Histogram(LATENCY_BUCKETS))
            hist.observe(seconds)

    def batch_done(self, size: int, seconds: float, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.batch_seconds.observe(seconds)
            self.tokens["prompt"] += prompt_tokens
            self.tokens["completion"] += completion_tokens

    def record_status(self, status: str) -> None:
        with self._lock:
            self.records[status] += 1

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def set_queue(self, depth: int, in_flight: int) -> None:
        with self._lock:
            self.queue_depth, self.in_flight = depth, in_flight

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            _counter(out, "capmill_requests_total", "HTTP requests by route, method and status.", self.requests)
            out.append("# HELP capmill_request_seconds Request latency by route.")
            out.append("# TYPE capmill_request_seconds histogram")
            for labels, hist in sorted(self.latency.items()):
                _histogram(out, "capmill_request_seconds", labels, hist)
            out.append("# HELP capmill_batch_size Requests per engine batch.")
            out.append("# TYPE capmill_batch_size histogram")
            _histogram(out, "capmill_batch_size", (), self.batch_size)
            out.append("# HELP capmill_batch_seconds Engine time per batch.")
            out.append("# TYPE capmill_batch_seconds histogram")
            _histogram(out, "capmill_batch_seconds", (), self.batch_seconds)
            _gauge(out, "capmill_queue_depth", "Requests waiting for the engine.", self.queue_depth)
            _gauge(out, "capmill_in_flight", "Requests inside the engine now.", self.in_flight)
            _counter(
                out, "capmill_tokens_total", "Tokens processed.", {(("kind", k),): v for k, v in self.tokens.items()}
            )
            _counter(
                out, "capmill_records_total", "Caption records by status.",
                {(("status", k),): v for k, v in self.records.items()},
            )  # fmt: skip
            _counter(
                out, "capmill_rejected_total", "Requests refused before the engine, by reason.",
                {(("reason", k),): v for k, v in self.rejected.items()},
            )  # fmt: skip
        return "\n".join(out) + "\n"


def _counter(out: list[str], name: str, help_text: str, values: dict) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} counter")
    for labels, value in sorted(values.items()):
        out.append(f"{name}{_labels(labels)} {value}")


def _gauge(out: list[str], name: str, help_text: str, value: float) -> None:
    out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]


def _histogram(out: list[str], name: str, labels: tuple[tuple[str, str], ...], hist: Histogram) -> None:
    for bound, count in zip(hist.buckets, hist.counts, strict=True):
        out.append(f"{name}_bucket{_labels(labels + (('le', _num(bound)),))} {count}")
    out.append(f"{name}_bucket{_labels(labels + (('le', '+Inf'),))} {hist.total}")
    out.append(f"{name}_sum{_labels(labels)} {hist.sum:.6f}")
    out.append(f"{name}_count{_labels(labels)} {hist.total}")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
