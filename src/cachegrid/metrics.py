"""Prometheus metric definitions of a node. Definitions only: others record into them.

Owns: the names, help texts, labels and buckets of every metric, in a registry of its own
(no process-global registry, so several nodes can live in one process, as in tests).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Histogram(
            "cachegrid_request_seconds", "HTTP request latency, by route and cache result.",
            ["route", "cache"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.responses = Counter(
            "cachegrid_responses_total", "HTTP responses by route and status.",
            ["route", "status"], registry=r,
        )  # fmt: skip
        self.cache_results = Counter(
            "cachegrid_cache_lookups_total", "Reads at the owner: hit or miss.", ["result"],
            registry=r,
        )  # fmt: skip
        self.fills = Counter(
            "cachegrid_fills_total", "Store reads made to fill the cache (after single-flight).",
            registry=r,
        )  # fmt: skip
        self.store_seconds = Histogram(
            "cachegrid_store_quorum_seconds", "Quorum store operation latency, by operation.",
            ["op"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.handoff_wait = Histogram(
            "cachegrid_handoff_wait_seconds",
            "Time requests waited for their key's range to become active here.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.forwarded = Counter(
            "cachegrid_forwarded_total", "Requests forwarded to the key's owner.", registry=r
        )
        self.stale_hits = Counter(
            "cachegrid_stale_hits_total",
            "Sampled cache hits older than the store: must stay 0 (a consistency bug).",
            registry=r,
        )  # fmt: skip
        self.stale_checks = Counter(
            "cachegrid_stale_checks_total", "Cache hits re-read from the store by the detector.",
            registry=r,
        )  # fmt: skip

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (lease slack, ring epoch, cache size...)."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
