"""Prometheus metric definitions of a node. Definitions only: others record into them.

Owns: the names, help texts, labels and buckets of every metric, in a registry of its own
(no process-global registry, so several nodes can live in one process, as in tests).

Why not prometheus_client's Counter and Histogram: each update takes a mutex, and the hot
path updates three of them per request. Here the node's event loop is the only writer and
the only reader (``/metrics`` is served by the same loop), so plain numbers suffice;
a collector turns them into Prometheus families at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Count:
    """One counter series. Not thread-safe: one event loop writes it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Distribution:
    """One histogram series with fixed buckets. Not thread-safe: one event loop writes it."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, result = 0, list[tuple[str, float]]()
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            result.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return result


class Counters:
    """A counter with labels; ``labels(...)`` returns its series (create once, keep it)."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.documentation, self.label_names = name, documentation, labels
        self.series: dict[tuple[str, ...], Count] = {}

    def labels(self, *values: str) -> Count:
        series = self.series.get(values)
        if series is None:
            series = self.series[values] = Count()
        return series

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.label_names)
        for values, series in self.series.items():
            family.add_metric(list(values), series.value)
        return family


class Histograms:
    """A histogram with labels and fixed buckets; ``labels(...)`` returns its series."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...],
                 buckets: tuple[float, ...]) -> None:  # fmt: skip
        self.name, self.documentation, self.label_names = name, documentation, labels
        self.bucket_bounds = buckets
        self.series: dict[tuple[str, ...], Distribution] = {}

    def labels(self, *values: str) -> Distribution:
        series = self.series.get(values)
        if series is None:
            series = self.series[values] = Distribution(self.bucket_bounds)
        return series

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        for values, series in self.series.items():
            family.add_metric(list(values), series.buckets(), series.total)
        return family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._families: list[Counters | Histograms] = []
        self.requests = self._histograms(
            "cachegrid_request_seconds", "HTTP request latency, by route and cache result.",
            ("route", "cache"), LATENCY_BUCKETS)  # fmt: skip
        self.responses = self._counters(
            "cachegrid_responses", "HTTP responses by route and status.", ("route", "status")
        )
        self.cache_results = self._counters(
            "cachegrid_cache_lookups", "Reads at the owner: hit or miss.", ("result",)
        )
        self.fills = self._count(
            "cachegrid_fills", "Store reads made to fill the cache (after single-flight)."
        )
        self.store_seconds = self._histograms(
            "cachegrid_store_quorum_seconds", "Quorum store operation latency, by operation.",
            ("op",), LATENCY_BUCKETS)  # fmt: skip
        self.batch_keys = self._histograms(
            "cachegrid_batch_keys",
            "Keys per batched call: store reads (fills) and writes, GETs forwarded to an owner.",
            ("call",), BATCH_BUCKETS)  # fmt: skip
        self.handoff_wait = self._distribution(
            "cachegrid_handoff_wait_seconds",
            "Time requests waited for their key's range to become active here.",
            LATENCY_BUCKETS)  # fmt: skip
        self.forwarded = self._count("cachegrid_forwarded", "Requests forwarded to the owner.")
        self.connections_refused = self._count(
            "cachegrid_connections_refused",
            "Connections refused with 503 because node.max_connections were open.",
        )
        self.connections_timed_out = self._count(
            "cachegrid_connections_timed_out",
            "Connections closed by node.idle_timeout: idle, or stalled before a request head.",
        )
        self.forward_refused = self._count(
            "cachegrid_forward_refused",
            "Requests refused (503) because too many already waited on their owner.",
        )
        self.stale_hits = self._count(
            "cachegrid_stale_hits",
            "Sampled cache hits older than the store: must stay 0 (a consistency bug).",
        )
        self.stale_checks = self._count(
            "cachegrid_stale_checks", "Cache hits re-read from the store by the detector."
        )
        self.replica_hits = self._count(
            "cachegrid_replica_hits",
            "GETs answered from a copy held under a read lease (X-Cache: replica).",
        )
        self.lease_refusals = self._counters(
            "cachegrid_read_lease_refused",
            "Read-lease asks the owner refused, by reason (written_often: the key is written "
            "too often for leases to pay).", ("reason",))  # fmt: skip
        self.install_refusals = self._counters(
            "cachegrid_read_lease_install_refused",
            "Grants a holder did not install (withdrawn: a record, flush or ring change came "
            "first), by reason.", ("reason",))  # fmt: skip
        self.invalidation_wait = self._histograms(
            "cachegrid_invalidation_wait_seconds",
            "Time an owner waited for holders to drop their copies (acked by all, or some "
            "waited out until their lease expired).", ("outcome",), LATENCY_BUCKETS)  # fmt: skip
        self.registry.register(self)
        # process_open_fds / process_max_fds (how close to EMFILE), resident memory, CPU.
        ProcessCollector(registry=self.registry)

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()

    def describe(self) -> list[Metric]:
        return []

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (lease slack, ring epoch, cache size...)."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def labelled_gauge(self, name: str, documentation: str, label: str,
                       reads: dict[str, Callable[[], float]]) -> None:  # fmt: skip
        """A gauge with one label, each series read at scrape time."""
        self.registry.register(_LabelledGauge(name, documentation, label, reads))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _counters(self, name: str, documentation: str, labels: tuple[str, ...]) -> Counters:
        family = Counters(name, documentation, labels)
        self._families.append(family)
        return family

    def _histograms(self, name: str, documentation: str, labels: tuple[str, ...],
                    buckets: tuple[float, ...]) -> Histograms:  # fmt: skip
        family = Histograms(name, documentation, labels, buckets)
        self._families.append(family)
        return family

    def _count(self, name: str, documentation: str) -> Count:
        return self._counters(name, documentation, ()).labels()

    def _distribution(self, name: str, documentation: str,
                      buckets: tuple[float, ...]) -> Distribution:  # fmt: skip
        return self._histograms(name, documentation, (), buckets).labels()


class _LabelledGauge:
    """A collector of one gauge family whose series are read at scrape time."""

    def __init__(self, name: str, documentation: str, label: str,
                 reads: dict[str, Callable[[], float]]) -> None:  # fmt: skip
        self.name, self.documentation, self.label, self.reads = name, documentation, label, reads

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, read in self.reads.items():
            family.add_metric([value], read())
        yield family

    def describe(self) -> list[Metric]:
        return []
