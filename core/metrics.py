"""Prometheus metrics of one Tessera process, on a registry of its own (not the library's global one), so
that every Runtime, and every test, counts for itself.

The API serves them at /metrics; a `tessera worker` serves its own on TESSERA_WORKER_METRICS_PORT. Gauges
that describe shared state (documents by status, the queue's depth) are read when scraped, from the
registry and the broker, through callbacks the composition root provides; a failed read leaves the gauge
out of that scrape rather than reporting a wrong number.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: from a cached health check (1 ms) to a slow upload or a cold model (30 s).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Seconds per ingestion stage of one document: a tiny text (ms) to a large PDF (minutes).
_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_RESULT_COUNT_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)


class _StateCollector(Collector):
    """Gauges read at scrape time: documents by status and the ingestion queue's depth."""

    def __init__(self, documents_by_status: Callable[[], Mapping[str, int]], queue_depth: Callable[[], int]) -> None:
        self._documents_by_status = documents_by_status
        self._queue_depth = queue_depth

    def describe(self) -> list[Metric]:
        # Without this, registering the collector would collect once to learn its names (a broker round trip).
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self._documents_by_status()
        except Exception as exc:  # a scrape must not fail because the registry is down
            log.warning("metrics: could not count documents by status: %s", exc)
        else:
            documents = GaugeMetricFamily("tessera_documents", "Documents in the registry by status", labels=["status"])
            for status, count in sorted(counts.items()):
                documents.add_metric([status], count)
            yield documents
        try:
            depth = self._queue_depth()
        except Exception as exc:
            log.warning("metrics: could not read the ingestion queue's depth: %s", exc)
        else:
            yield GaugeMetricFamily("tessera_ingest_queue_depth", "Ingestion tasks waiting in the broker", value=depth)


class Metrics:
    """Every metric Tessera records, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_request_duration = Histogram(
            "tessera_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ingest_stage_duration = Histogram(
            "tessera_ingest_stage_duration_seconds",
            "Seconds one document spent in an ingestion stage",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.ingest_outcomes = Counter(
            "tessera_ingest_documents_total",
            "Ingestion attempts by how they ended",
            ["outcome"],
            registry=self.registry,
        )
        self.query_results = Histogram(
            "tessera_query_results",
            "Chunks returned per query (after the ACL filter)",
            ["mode"],
            buckets=_RESULT_COUNT_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "tessera_auth_failures_total",
            "Requests refused because the caller could not be authenticated",
            ["reason"],
            registry=self.registry,
        )
        self.acl_denied = Counter(
            "tessera_acl_denied_total",
            "Lookups of an existing document that the caller's ACL did not admit",
            ["action"],
            registry=self.registry,
        )

    def watch_state(self, documents_by_status: Callable[[], Mapping[str, int]], queue_depth: Callable[[], int]) -> None:
        """Report these at every scrape (once per Metrics)."""
        self.registry.register(_StateCollector(documents_by_status, queue_depth))

    def observe_stages(self, seconds_by_stage: Mapping[str, float]) -> None:
        for stage, seconds in seconds_by_stage.items():
            self.ingest_stage_duration.labels(stage=stage).observe(seconds)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
