"""Prometheus metrics of the webhook server, on a registry of their own.

A private registry (not prometheus_client's global one) lets every app instance, and every test,
count from zero, and keeps /metrics free of whatever else the process happens to import.
Label values are bounded on purpose: a provider event name is only used as a label after the
delivery's signature verified, so an unauthenticated caller cannot mint new time series.

`bridge serve` counts in two processes (the server and its worker process), so it runs
prometheus_client's multiprocess mode: `bridge.cli` points PROMETHEUS_MULTIPROC_DIR at a
directory before prometheus_client is imported, every process writes its values there, and
/metrics adds them up. Without that variable (tests, the Action) the values live in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

UNVERIFIED: Final = "-"  # the event label of a delivery rejected before its signature verified
MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

# Ack latency: GitHub gives up after 10 s; anything above 1 s deserves a look.
ACK_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _StoreCollector(Collector):
    """Reads the store's counts at scrape time, so the gauge never drifts from the truth."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "bridge_store_items", "Deliveries and builds held in the store, by kind", labels=["kind"]
        )
        try:
            counts = self._counts()
        except Exception:  # a scrape must not fail because the store is briefly unavailable
            counts = {}
        for kind, value in sorted(counts.items()):
            family.add_metric([kind], float(value))
        yield family


def _multiprocess() -> bool:
    """Whether values go to PROMETHEUS_MULTIPROC_DIR (decided when prometheus_client was imported)."""
    return bool(os.environ.get(MULTIPROCESS_ENV)) and prometheus_values.ValueClass is not (
        prometheus_values.MutexValue
    )


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # What /metrics renders: this registry, or in multiprocess mode every process's values.
        self._exposed = self.registry
        if _multiprocess():
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed)  # type: ignore[no-untyped-call]
        self.deliveries = Counter(
            "bridge_deliveries",
            "Webhook and SNS deliveries answered, by provider, event and outcome",
            ["provider", "event", "outcome"],
            registry=self.registry,
        )
        self.builds = Counter(
            "bridge_builds",
            "Builds started and builds finished, by CodeBuild status (STARTED for a start)",
            ["status"],
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "bridge_ack_seconds",
            "Time from receiving a delivery to answering it",
            ["provider"],
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )
        self.worker_errors = Counter(
            "bridge_worker_errors",
            "Failures in the background worker, by stage and whether they will be retried",
            ["stage", "retryable"],
            registry=self.registry,
        )
        self._store_collector: _StoreCollector | None = None
        # labels() validates and locks on every call; a delivery's children are looked up once.
        self._delivery_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def watch_store(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Expose the store's counts as the `bridge_store_items` gauge (once per registry)."""
        if self._store_collector is None:
            self._store_collector = _StoreCollector(counts)
            self.registry.register(self._store_collector)
            if self._exposed is not self.registry:
                self._exposed.register(self._store_collector)

    def delivery(self, provider: str, event: str, outcome: str, seconds: float) -> None:
        key = (provider, event or UNVERIFIED, outcome)
        children = self._delivery_children.get(key)
        if children is None:  # two threads may both get here: labels() hands both the same children
            children = (self.deliveries.labels(*key), self.ack_seconds.labels(provider))
            self._delivery_children[key] = children
        count, latency = children
        count.inc()
        latency.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self._exposed), CONTENT_TYPE_LATEST
