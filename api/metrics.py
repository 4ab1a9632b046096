"""Prometheus metrics on a per-app :class:`CollectorRegistry` (never the global one).

Request rates and latencies per route template, append latency (a timing proxy in
front of the log, :class:`TimedLog`), committed batch sizes (a log listener), the tree
size, and orchestrations by status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ledger.events import EventCatalog, NewEvent
from ledger.log import Log, RecordedEvent
from ledger.orchestration import Engine
from ledger.receipt import Receipt

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

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "maip_orchestrations",
            "Orchestrations by status (in flight from the engine's registry; ended ones "
            "counted since this process started)",
            labels=["status"],
        )
        engine = self._metrics.engine
        in_flight = {"pending": 0, "running": 0}
        if engine is not None:
            for summary in engine.registry.unfinished():
                in_flight[summary.status] = in_flight.get(summary.status, 0) + 1
        for status, n in in_flight.items():
            family.add_metric([status], n)
        for status, n in self._metrics.ended.items():
            family.add_metric([status], n)
        return [family]


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "maip_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "maip_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
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
        self.ended: dict[str, int] = {"completed": 0, "failed": 0, "cancelled": 0}
        self.engine: Engine | None = None
        self.registry.register(_StatusCollector(self))
        # labels() validates and looks its arguments up under a lock on every call; the
        # children it returns are stable, so each request's pair is looked up once.
        self._per_request: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request under its method, route template and status; time it."""
        if method not in _METHODS:
            # The client chooses the method: each made-up one would be a new time series
            # kept for the life of the process.
            method = "other"
        key = (method, route, status)
        children = self._per_request.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(route),
            )
            self._per_request[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def attach(self, log: Log, engine: Engine) -> None:
        self.engine = engine
        self.tree_size.set_function(lambda: float(log.size))
        log.add_listener(self._on_commit)

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
