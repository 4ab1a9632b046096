"""Prometheus metrics on a per-app :class:`CollectorRegistry` (never the global one).

Request rates and latencies per route template, append latency (a timing proxy in
front of the log, :class:`TimedLog`), committed batch sizes (a log listener), the tree
size, orchestrations by status, and each witness's cosigned size and failures.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ledger.events import EventCatalog, NewEvent
from ledger.log import Log, RecordedEvent
from ledger.orchestration import Engine
from ledger.receipt import Receipt
from ledger.store import EventStore
from ledger.witnessing import Witnessing

__all__ = ["CONTENT_TYPE", "Metrics", "TimedLog"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TERMINAL = {
    "orchestration.completed": "completed",
    "orchestration.failed": "failed",
    "orchestration.cancelled": "cancelled",
}


class _StatusCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily(
            "maip_orchestrations",
            "Orchestrations by status (in flight from the engine's registry; ended ones "
            "counted since this process started)",
            labels=["status"],
        )
        engine = self._metrics.engine
        in_flight = {"pending": 0, "running": 0}
        if engine is not None:
            for summary in engine.summaries.unfinished():
                in_flight[summary.status] = in_flight.get(summary.status, 0) + 1
        for status, n in in_flight.items():
            family.add_metric([status], n)
        for status, n in self._metrics.ended.items():
            family.add_metric([status], n)
        if engine is None:
            return [family]
        summaries = engine.summaries
        held = GaugeMetricFamily(
            "maip_summaries_held",
            "Orchestration summaries held in memory (runs not ended, changes not written)",
        )
        held.add_metric([], summaries.held)
        pending = GaugeMetricFamily(
            "maip_summaries_pending",
            "Summary changes folded from the log and not yet in the summaries file",
        )
        pending.add_metric([], summaries.pending)
        failures = CounterMetricFamily(
            "maip_summaries_write_failures", "Writes the summaries file refused"
        )
        failures.add_metric([], summaries.write_failures)
        return [family, held, pending, failures]


class _WitnessCollector(Collector):
    """Each witness's largest cosigned tree size and its failed submissions, read from
    the submitter at scrape time (labelled by witness name: the config refuses two
    witnesses of one name)."""

    def __init__(self, witnessing: Witnessing) -> None:
        self._witnessing = witnessing

    def collect(self) -> list[Metric]:
        sizes = GaugeMetricFamily(
            "maip_witness_cosigned_tree_size",
            "The largest tree size the log holds the witness's cosignature for",
            labels=["witness"],
        )
        failures = CounterMetricFamily(
            "maip_witness_failures",
            "Failed checkpoint submissions to the witness, by reason",
            labels=["witness", "reason"],
        )
        for status in self._witnessing.witnesses:
            name = status.endpoint.key.name
            sizes.add_metric([name], status.cosigned_size)
            for reason, n in status.failures.items():
                failures.add_metric([name, reason], n)
        return [sizes, failures]


class _RouteLatency:
    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last one is +Inf
        self.total = 0.0


class _RequestCollector(Collector):
    """Request counts and latencies in plain dicts, read at scrape time.

    Every request is observed, and prometheus_client's Counter and Histogram children
    take a lock per value and find the bucket in a Python loop. Together with the
    per-request head timer (``api/server.py``) this took ~5% of a busy server's
    ``GET /v1/receipts`` time. Only the event loop's thread observes and scrapes, so
    nothing here needs a lock.
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = tuple(float(b) for b in buckets)
        # The exposition's "le" labels, as prometheus_client writes them (all bounds
        # here are plain decimals, so repr is its Go-style float).
        self._labels = (*(repr(b) for b in self._bounds), "+Inf")
        self._counts: dict[tuple[str, str, int], int] = {}
        self._latency: dict[str, _RouteLatency] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = _RouteLatency(len(self._bounds))
        # Prometheus buckets are "less than or equal": the first bound >= seconds.
        latency.counts[bisect.bisect_left(self._bounds, seconds)] += 1
        latency.total += seconds

    def collect(self) -> list[Metric]:
        requests = CounterMetricFamily(
            "maip_http_requests",
            "HTTP requests by method, route template and status",
            labels=["method", "route", "status"],
        )
        for (method, route, status), n in self._counts.items():
            requests.add_metric([method, route, str(status)], n)
        durations = HistogramMetricFamily(
            "maip_http_request_duration_seconds",
            "HTTP request latency by route template",
            labels=["route"],
        )
        for route, latency in self._latency.items():
            cumulative, buckets = 0, []
            for label, n in zip(self._labels, latency.counts, strict=True):
                cumulative += n
                buckets.append((label, cumulative))
            durations.add_metric([route], buckets, latency.total)
        return [requests, durations]


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = _RequestCollector(
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
        )
        self.registry.register(self._requests)
        self.append_latency = Histogram(
            "maip_log_append_duration_seconds",
            "Time from append to durable, checkpointed receipts",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.batch_size = Histogram(
            "maip_log_batch_events",
            "Events per committed batch (group commit)",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
        )
        self.tree_size = Gauge(
            "maip_log_tree_size", "Leaves in the Merkle tree", registry=self.registry
        )
        self.stalled_runs = Gauge(
            "maip_engine_stalled_runs",
            "Runs stopped for lack of storage, waiting for it to take writes again",
            registry=self.registry,
        )
        self.unresumable_runs = Gauge(
            "maip_engine_unresumable_runs",
            "Runs this process could not resume: their history did not read back whole",
            registry=self.registry,
        )
        self.ended: dict[str, int] = {"completed": 0, "failed": 0, "cancelled": 0}
        self.engine: Engine | None = None
        self.registry.register(_StatusCollector(self))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request under its method, route template and status; time it."""
        if method not in _METHODS:
            # The client chooses the method: each made-up one would be a new time series
            # kept for the life of the process.
            method = "other"
        self._requests.observe(method, route, status, seconds)

    def attach(self, log: Log, engine: Engine) -> None:
        self.engine = engine
        self.tree_size.set_function(lambda: float(log.size))
        self.stalled_runs.set_function(lambda: float(engine.stalled))
        self.unresumable_runs.set_function(lambda: float(engine.unresumable))
        log.add_listener(self._on_commit)

    def attach_witnessing(self, witnessing: Witnessing) -> None:
        self.registry.register(_WitnessCollector(witnessing))

    def _on_commit(self, batch: Sequence[RecordedEvent]) -> None:
        # A listener sees each commit's events; consecutive events of one tree size
        # are one batch (the log signs one checkpoint per batch).
        sizes: dict[int, int] = {}
        for rec in batch:
            sizes[rec.tree_size] = sizes.get(rec.tree_size, 0) + 1
            status = _TERMINAL.get(rec.event.type)
            if status is not None:
                self.ended[status] += 1
        for n in sizes.values():
            self.batch_size.observe(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TimedLog:
    """The engine's view of the log, timing every append into ``append_latency``."""

    def __init__(
        self, log: Log, histogram: Histogram, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._log = log
        self._histogram = histogram
        self._clock = clock

    @property
    def catalog(self) -> EventCatalog:
        return self._log.catalog

    @property
    def size(self) -> int:
        return self._log.size

    async def append(
        self, tenant_id: str, stream_id: str, expected_seq: int, events: Sequence[NewEvent]
    ) -> list[Receipt]:
        return await (await self.submit(tenant_id, stream_id, expected_seq, events))

    async def submit(
        self, tenant_id: str, stream_id: str, expected_seq: int, events: Sequence[NewEvent]
    ) -> asyncio.Future[list[Receipt]]:
        start = self._clock()
        try:
            outcome = await self._log.submit(tenant_id, stream_id, expected_seq, events)
        except BaseException:
            self._histogram.observe(self._clock() - start)
            raise
        outcome.add_done_callback(lambda _: self._histogram.observe(self._clock() - start))
        return outcome

    async def read_stream(
        self, tenant_id: str, stream_id: str, after_seq: int = 0, limit: int | None = None
    ) -> Sequence[Any]:
        return await self._log.read_stream(tenant_id, stream_id, after_seq, limit)

    async def read_log(self, from_index: int = 0, limit: int = 1000) -> Sequence[Any]:
        return await self._log.read_log(from_index, limit)

    def add_listener(self, listener: Callable[[Sequence[Any]], None]) -> None:
        self._log.add_listener(listener)

    def remove_listener(self, listener: Callable[[Sequence[Any]], None]) -> None:
        self._log.remove_listener(listener)

    @property
    def store(self) -> EventStore:
        return self._log.store

    async def root_at(self, tree_size: int) -> bytes:
        return await self._log.root_at(tree_size)

    def seal(self, *parts: bytes | bytearray) -> bytes:
        return self._log.seal(*parts)
