"""Prometheus metrics for one App (writer or follower) and its socket server: ``Metrics(app, server=...)``.

Why prometheus-client: it is the Prometheus project's own library, small, pure Python, with a text
parser we test against; OpenTelemetry would add an SDK, a meter pipeline and an exporter package for
the same text. Counters and gauges are *not* updated on the hot path: :class:`Metrics` is a custom
``Collector`` that reads the objects' existing ``statistics()`` at scrape time (zero cost between
scrapes). The three histograms that need every sample (batch size, commit duration, submit-to-ack
latency) are fed once per committed batch by the writer's ``observer`` hook into :class:`Histogram`,
a bucket array with a weighted ``observe`` (a batch of 500 commands costs one bisect per command,
no lock, no label lookup).

Names follow Prometheus conventions: ``soloist_`` prefix, base units (seconds, events), ``_total``
counters. The same collector serves both roles; writer-only families are absent on a follower and
follower-only ones on a writer. A writer that publishes to NATS JetStream adds the ``soloist_jetstream_``
families (its publisher's position and lag); a replica fed by JetStream reports its link in the
``soloist_follower_`` families, labelled with its ``--upstream`` or, without one, its NATS URL.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Final, Protocol, final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ._app import App

__all__ = ["CONTENT_TYPE", "Histogram", "Metrics"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
BATCH_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0)
SECONDS_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class _Statistics(Protocol):
    """What Metrics reads from a server, a follower or a publisher: their ``statistics()`` dataclass."""

    def statistics(self) -> object: ...


@final
class Histogram:
    """Cumulative-bucket histogram with a weighted ``observe``; read by :class:`Metrics` at scrape time."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(bounds) or not bounds:
            raise ValueError(f"histogram bounds must be non-empty and ascending, got {list(bounds)!r}")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times
        self.count += times

    def buckets(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs, ending with ``+Inf``, as HistogramMetricFamily takes them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out

    def quantile(self, q: float) -> float:
        """An estimate (the bucket's upper bound) of the ``q`` quantile; 0.0 when empty. For the dashboard."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            if running >= rank:
                return bound
        return self.bounds[-1]


@final
class Metrics(Collector):
    """The ``soloist_`` metrics of one process; :meth:`render` gives the Prometheus text format.

    Attach after the App has started (its writer exists). Pass the socket ``server``, on a replica the
    ``follower``, and on a writer that publishes to JetStream the ``publisher`` to include their figures.
    """

    def __init__(
        self,
        app: App,
        *,
        server: _Statistics | None = None,
        follower: _Statistics | None = None,
        publisher: _Statistics | None = None,
    ) -> None:
        self.app = app
        self.server = server
        self.follower = follower
        self.publisher = publisher
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.commit_seconds = Histogram(SECONDS_BUCKETS)
        self.latency_seconds = Histogram(SECONDS_BUCKETS)
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        if app.follower_of is None:
            app.writer.observer = self.observe_batch

    def detach(self) -> None:
        """Stop recording (the writer's hook is removed); scraping still works."""
        if self.app.follower_of is None and self.app.writer.observer == self.observe_batch:
            self.app.writer.observer = None

    def observe_batch(self, commit_seconds: float | None, submitted: list[float], acked_at: float) -> None:
        """The writer's hook: one committed batch (``submitted``: each command's ``perf_counter`` at submit)."""
        self.batch_size.observe(len(submitted))
        if commit_seconds is not None:
            self.commit_seconds.observe(commit_seconds)
        latency = self.latency_seconds
        for t in submitted:
            latency.observe(acked_at - t)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (what ``GET /metrics`` answers)."""
        return generate_latest(self.registry)

    # -- the collector ----------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        s = self.app.statistics()
        info = GaugeMetricFamily("soloist_info", "This process's role (writer or follower)", labels=["role"])
        info.add_metric([s.role], 1.0)
        yield info
        yield GaugeMetricFamily(
            "soloist_position", "Last committed (writer) or replicated (follower) position", s.position
        )
        yield GaugeMetricFamily("soloist_start_time_seconds", "When metrics were attached (Unix time)", self.started)
        w = s.writer
        if w is not None:
            for name, value, doc in (
                ("accepted", w.accepted, "Commands committed"),
                ("rejected", w.rejected, "Commands refused by a rule or a bug (nothing written)"),
                ("duplicate", w.duplicates, "Commands answered from an idempotency key"),
                ("failed", w.failed, "Commands lost to a failed commit"),
            ):
                yield CounterMetricFamily(f"soloist_commands_{name}", doc, value)
            yield CounterMetricFamily("soloist_batches", "Batches decided", w.batches)
            yield GaugeMetricFamily("soloist_idempotency_keys", "Idempotency keys remembered", w.keys)
            yield CounterMetricFamily(
                "soloist_idempotency_keys_forgotten", "Idempotency keys deleted after key_ttl", w.keys_forgotten
            )
            yield GaugeMetricFamily("soloist_queue_depth", "Commands waiting in the writer's queue", w.queue_depth)
            yield GaugeMetricFamily("soloist_queue_peak_depth", "Deepest the writer's queue has been", w.queue_peak)
            yield GaugeMetricFamily("soloist_queue_capacity", "The writer queue's bound", w.queue_capacity)
            yield _histogram("soloist_batch_size_commands", "Commands per batch", self.batch_size)
            yield _histogram("soloist_commit_duration_seconds", "One batch's append and commit", self.commit_seconds)
            yield _histogram(
                "soloist_command_latency_seconds",
                "Submit to durable acknowledgement, per command",
                self.latency_seconds,
            )
        yield from self._replicas(s.replicas)
        if self.server is not None:
            yield from self._server(self.server.statistics())
        if self.follower is not None:
            yield from self._follower(self.follower.statistics())
        if self.publisher is not None:
            yield from self._publisher(self.publisher.statistics())

    def _replicas(self, replicas: Sequence[object]) -> Iterator[Metric]:
        position = GaugeMetricFamily("soloist_replica_position", "Replica's applied position", labels=["replica"])
        lag_events = GaugeMetricFamily("soloist_replica_lag_events", "Events behind the head", labels=["replica"])
        lag_seconds = GaugeMetricFamily(
            "soloist_replica_lag_seconds", "Commit-to-apply delay of its last applied batch", labels=["replica"]
        )
        queries = CounterMetricFamily("soloist_replica_queries", "Queries answered", labels=["replica"])
        ready = GaugeMetricFamily("soloist_replica_ready", "1 once caught up and serving", labels=["replica"])
        for r in replicas:
            name = [str(getattr(r, "name", "?"))]
            position.add_metric(name, float(getattr(r, "position", 0)))
            lag_events.add_metric(name, float(getattr(r, "lag_events", 0)))
            lag_seconds.add_metric(name, float(getattr(r, "lag_ms", 0.0)) / 1000)
            queries.add_metric(name, float(getattr(r, "queries", 0)))
            ready.add_metric(name, 1.0 if getattr(r, "ready", False) else 0.0)
        yield from (position, lag_events, lag_seconds, queries, ready)

    def _server(self, st: object) -> Iterator[Metric]:
        yield GaugeMetricFamily("soloist_connections", "Open connections", getattr(st, "connections", 0))
        yield GaugeMetricFamily("soloist_connections_peak", "Most open at once", getattr(st, "peak_connections", 0))
        yield CounterMetricFamily("soloist_connections_accepted", "Connections accepted", getattr(st, "accepted", 0))
        yield GaugeMetricFamily("soloist_requests_in_flight", "Requests not answered yet", getattr(st, "in_flight", 0))
        by_op = CounterMetricFamily("soloist_requests", "Requests by op", labels=["op"])
        for op, n in sorted(getattr(self.server, "requests_by_op", {}).items()):
            by_op.add_metric([op], float(n))
        yield by_op
        errors = getattr(self.server, "errors_by_code", {})
        by_code = CounterMetricFamily("soloist_request_errors", "Error answers by error code", labels=["code"])
        for code, n in sorted(errors.items()):
            by_code.add_metric([code], float(n))
        yield by_code
        if self.app.follower_of is None:  # a full queue is answered with the `overloaded` error code
            yield CounterMetricFamily(
                "soloist_commands_overloaded", "Commands refused: the queue was full", errors.get("overloaded", 0)
            )

    def _follower(self, st: object) -> Iterator[Metric]:
        yield from _figures(
            st,
            "upstream",
            _followed(st),
            ("soloist_follower_connected", "connected", "1 while linked to the writer", GaugeMetricFamily),
            (
                "soloist_follower_upstream_position",
                "upstream_position",
                "Newest writer position seen",
                GaugeMetricFamily,
            ),
            ("soloist_follower_lag_events", "lag_events", "Events behind the writer", GaugeMetricFamily),
            ("soloist_follower_reconnects", "reconnects", "Reconnections to the writer", CounterMetricFamily),
            ("soloist_follower_events", "events", "Events replicated", CounterMetricFamily),
        )

    def _publisher(self, st: object) -> Iterator[Metric]:
        yield from _figures(
            st,
            "stream",
            str(getattr(st, "stream", "?")),
            ("soloist_jetstream_connected", "connected", "1 while publishing to NATS", GaugeMetricFamily),
            (
                "soloist_jetstream_published_position",
                "published_position",
                "Last position the JetStream stream holds",
                GaugeMetricFamily,
            ),
            (
                "soloist_jetstream_lag_events",
                "lag_events",
                "Committed events not in the stream yet (the outbox's depth)",
                GaugeMetricFamily,
            ),
            ("soloist_jetstream_messages", "messages", "Messages published", CounterMetricFamily),
            ("soloist_jetstream_events", "events", "Events published", CounterMetricFamily),
            (
                "soloist_jetstream_sessions",
                "sessions",
                "Sessions with NATS (the first and reconnections)",
                CounterMetricFamily,
            ),
            (
                "soloist_jetstream_resyncs",
                "resyncs",
                "Times the stream's last message was read again (reconnect, fence, duplicate)",
                CounterMetricFamily,
            ),
        )

    # -- the dashboard's figures ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """The live figures the dashboard polls (``GET /api/stats``), as plain JSON values."""
        s = self.app.statistics()
        w = s.writer
        out: dict[str, object] = {"time": time.time(), "role": s.role, "position": s.position}
        if w is not None:
            out |= {
                "accepted": w.accepted,
                "rejected": w.rejected,
                "duplicates": w.duplicates,
                "queue_depth": w.queue_depth,
                "queue_peak": w.queue_peak,
                "batch_size_last": w.batch_size_last,
                "batch_size_mean": round(w.batch_size_mean, 2),
                "commit_ms_last": round(w.commit_ms_last, 3),
                "latency_p99_ms": self.latency_seconds.quantile(0.99) * 1000,
            }
        out["replicas"] = [
            {"name": r.name, "position": r.position, "lag_events": r.lag_events, "lag_ms": r.lag_ms} for r in s.replicas
        ]
        if self.follower is not None:
            f = self.follower.statistics()
            out["follower"] = {"upstream": _followed(f), "lag_events": getattr(f, "lag_events", 0)}
        if self.publisher is not None:
            p = self.publisher.statistics()
            out["publisher"] = {
                "stream": getattr(p, "stream", "?"),
                "connected": getattr(p, "connected", False),
                "published_position": getattr(p, "published_position", 0),
                "lag_events": getattr(p, "lag_events", 0),
            }
        return out


def _followed(st: object) -> str:
    """What a follower follows: its ``upstream`` (the writer), or for a JetStream replica without one, its NATS URL."""
    return str(getattr(st, "upstream", None) or getattr(st, "url", "?"))


def _figures(
    st: object, label: str, value: str, *rows: tuple[str, str, str, type[GaugeMetricFamily | CounterMetricFamily]]
) -> Iterator[Metric]:
    """One family per ``(name, attribute of st, help, kind)``, each with one sample labelled ``label=value``."""
    for name, attr, doc, family in rows:
        metric = family(name, doc, labels=[label])
        metric.add_metric([value], float(getattr(st, attr, 0)))
        yield metric


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.buckets(), sum_value=h.sum)
