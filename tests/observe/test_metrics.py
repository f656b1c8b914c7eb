"""The Prometheus endpoint: parsed by prometheus-client's own text parser, with values that move after commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from soloist import App, DomainError, NotFound, Overloaded
from soloist._metrics import Histogram, Metrics
from soloist.net import Client, FollowerStatistics
from soloist.net._http import HttpServer
from soloist.net._jetstream import JetStreamPublisherStatistics
from tests.net.harness import raw, serving
from tests.toy import BANK, Deposit, Open

if TYPE_CHECKING:
    from pathlib import Path


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, keyed by (name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: bytes, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


async def http_get(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """One raw HTTP exchange: (status line, headers, body)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        data = b""
        with anyio.fail_after(5):
            while True:
                try:
                    data += await stream.receive()
                except anyio.EndOfStream:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    status, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return status, headers, body


class TestHistogram:
    def test_buckets_are_cumulative_and_weighted(self) -> None:
        """observe(v, n) counts n samples in v's bucket; buckets() are cumulative and end with +Inf."""
        h = Histogram((1.0, 10.0))
        h.observe(0.5)
        h.observe(5.0, 3)
        h.observe(50.0)
        assert h.buckets() == [("1.0", 1.0), ("10.0", 4.0), ("+Inf", 5.0)]
        assert (h.count, h.sum) == (5, 0.5 + 15.0 + 50.0)
        assert h.quantile(0.5) == 10.0
        assert h.quantile(1.0) == 10.0  # past the last bound: the last bound is the estimate
        assert Histogram((1.0,)).quantile(0.99) == 0.0

    def test_bounds_must_ascend(self) -> None:
        """Unsorted or empty bounds are refused, naming them."""
        with pytest.raises(ValueError, match=r"\[2.0, 1.0\]"):
            Histogram((2.0, 1.0))
        with pytest.raises(ValueError, match="non-empty"):
            Histogram(())


class TestMetrics:
    async def test_values_move_after_commands(self, tmp_path: Path) -> None:
        """Counters, queue gauges, the three histograms and the replicas' positions move with the commands."""
        async with App(BANK, tmp_path / "bank.db", replicas=2) as app:
            metrics = Metrics(app)
            before = metrics.render()
            assert value(before, "soloist_commands_accepted_total") == 0
            assert value(before, "soloist_command_latency_seconds_count") == 0
            assert value(before, "soloist_info", role="writer") == 1
            await app.execute(Open(account="a"), idempotency_key="open-a")
            for _ in range(5):
                await app.execute(Deposit(account="a", amount=2))
            with pytest.raises(DomainError, match="positive"):
                await app.execute(Deposit(account="a", amount=0))
            await app.router.wait_for(app.position, timeout=5)
            after = metrics.render()
            assert value(after, "soloist_commands_accepted_total") == 6
            assert value(after, "soloist_commands_rejected_total") == 1
            assert value(after, "soloist_position") == 6
            assert value(after, "soloist_queue_peak_depth") >= 1
            assert value(after, "soloist_queue_capacity") == 8192
            assert value(after, "soloist_idempotency_keys") == 1
            assert value(after, "soloist_idempotency_keys_forgotten_total") == 0
            assert value(after, "soloist_batch_size_commands_count") == 7  # one batch per awaited command
            assert value(after, "soloist_batch_size_commands_sum") == 7
            assert value(after, "soloist_commit_duration_seconds_count") == 6  # the rejected batch wrote nothing
            assert value(after, "soloist_command_latency_seconds_count") == 7
            assert value(after, "soloist_command_latency_seconds_sum") > 0
            assert value(after, "soloist_command_latency_seconds_bucket", le="+Inf") == 7
            for name in ("replica-0", "replica-1"):
                assert value(after, "soloist_replica_position", replica=name) == 6
                assert value(after, "soloist_replica_lag_events", replica=name) == 0
                assert ("soloist_replica_lag_seconds", (("replica", name),)) in samples(after)
            snapshot = metrics.snapshot()
            assert snapshot["accepted"] == 6
            assert snapshot["position"] == 6
            metrics.detach()
            await app.execute(Deposit(account="a", amount=1))
            assert value(metrics.render(), "soloist_command_latency_seconds_count") == 7  # detached: not recorded
            assert value(metrics.render(), "soloist_commands_accepted_total") == 7  # read from statistics()

    async def test_server_requests_by_op_and_error_code(self, tmp_path: Path) -> None:
        """Requests are counted by op (the pipelined query fast path included), errors by their wire code."""
        async with serving(tmp_path, app_options={"queue_capacity": 1}) as (app, server):
            metrics = Metrics(app, server=server)
            async with Client.connect("127.0.0.1", server.port) as client:
                await client.command("Open", {"account": "a"})
                await client.query("Total")
                await client.query("Total")
                with pytest.raises(NotFound, match="zz"):
                    await client.query("Balance", {"account": "zz"})
                await client.ping()
            async with raw(server) as conn:  # a burst of 50 in one write over a queue of 1: some are `overloaded`
                line = orjson.dumps({"op": "command", "type": "Deposit", "data": {"account": "a", "amount": 1}})
                await conn.send((line + b"\n") * 50)
                results = [await conn.answer() for _ in range(50)]
            text = metrics.render()
            assert value(text, "soloist_requests_total", op="command") == 51
            assert value(text, "soloist_requests_total", op="query") == 3
            assert value(text, "soloist_requests_total", op="ping") == 1
            assert value(text, "soloist_request_errors_total", code="not_found") == 1
            refused = sum(1 for r in results if not r.get("ok"))
            assert refused > 0
            assert value(text, "soloist_request_errors_total", code="overloaded") == refused
            assert value(text, "soloist_commands_overloaded_total") == refused
            assert value(text, "soloist_connections_peak") >= 1
            assert value(text, "soloist_connections_accepted_total") == 2
            assert Overloaded.code == "overloaded"


class _FakeFollower:
    """Stands in for a Follower's statistics (a replica process is covered end to end in test_processes)."""

    def __init__(self) -> None:
        self.lag = 3

    def statistics(self) -> FollowerStatistics:
        return FollowerStatistics(
            upstream="127.0.0.1:7420",
            connected=True,
            position=7,
            upstream_position=7 + self.lag,
            lag_events=self.lag,
            reconnects=1,
            batches=2,
            events=7,
            probes=0,
            last_error=None,
        )


class _Broken:
    def statistics(self) -> object:
        raise RuntimeError("statistics exploded")


class TestFollowerMetrics:
    async def test_follower_lag_is_exported(self, tmp_path: Path) -> None:
        """A follower's link figures are exported under its upstream's label, and in the dashboard's snapshot."""
        async with App(BANK, tmp_path / "bank.db", replicas=1) as app:
            follower = _FakeFollower()
            metrics = Metrics(app, follower=follower)
            text = metrics.render()
            assert value(text, "soloist_follower_lag_events", upstream="127.0.0.1:7420") == 3
            assert value(text, "soloist_follower_connected", upstream="127.0.0.1:7420") == 1
            assert value(text, "soloist_follower_reconnects_total", upstream="127.0.0.1:7420") == 1
            follower.lag = 0
            assert value(metrics.render(), "soloist_follower_lag_events", upstream="127.0.0.1:7420") == 0
            assert metrics.snapshot()["follower"] == {"upstream": "127.0.0.1:7420", "lag_events": 0}


class TestHttpServer:
    async def test_a_failing_collector_answers_500_and_keeps_serving(self, tmp_path: Path) -> None:
        """A bug behind /metrics is answered 500 with its message; the page is still served."""
        async with App(BANK, tmp_path / "bank.db", replicas=1) as app, anyio.create_task_group() as tg:
            http = await tg.start(HttpServer(Metrics(app, server=_Broken()), port=0).serve)
            assert isinstance(http, HttpServer)
            status, _, body = await http_get(http.port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert status.startswith("HTTP/1.1 500")
            assert b"statistics exploded" in body
            status, _, _ = await http_get(http.port, b"GET / HTTP/1.1\r\n\r\n")
            assert status == "HTTP/1.1 200 OK"
            tg.cancel_scope.cancel()

    async def test_metrics_stats_page_and_errors(self, tmp_path: Path) -> None:
        """GET /metrics (Prometheus text), /api/stats (JSON), / (the page); HEAD; 404, 405 and 400 with a hint."""
        async with App(BANK, tmp_path / "bank.db", replicas=1) as app, anyio.create_task_group() as tg:
            http = await tg.start(HttpServer(Metrics(app), port=0).serve)
            assert isinstance(http, HttpServer)
            await app.execute(Open(account="a"))
            status, headers, body = await http_get(http.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == "HTTP/1.1 200 OK"
            assert headers["content-type"].startswith("text/plain; version=0.0.4")
            assert int(headers["content-length"]) == len(body)
            assert value(body, "soloist_commands_accepted_total") == 1
            status, headers, body = await http_get(http.port, b"GET /api/stats?x=1 HTTP/1.1\r\n\r\n")
            assert headers["content-type"] == "application/json"
            stats = orjson.loads(body)
            assert (stats["accepted"], stats["role"], len(stats["replicas"])) == (1, "writer", 1)
            status, headers, body = await http_get(http.port, b"GET / HTTP/1.0\r\n\r\n")
            assert headers["content-type"].startswith("text/html")
            assert b"/api/stats" in body
            assert b"http://" not in body  # self-contained: nothing loaded from elsewhere
            assert b"https://" not in body
            status, headers, body = await http_get(http.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert (status, body) == ("HTTP/1.1 200 OK", b"")
            status, _, body = await http_get(http.port, b"GET /nope HTTP/1.1\r\n\r\n")
            assert status.startswith("HTTP/1.1 404")
            assert b"/metrics" in body
            status, _, body = await http_get(http.port, b"POST /metrics HTTP/1.1\r\n\r\n")
            assert status.startswith("HTTP/1.1 405")
            assert b"POST" in body
            status, _, _ = await http_get(http.port, b"nonsense\r\n\r\n")
            assert status.startswith("HTTP/1.1 400")
            status, _, _ = await http_get(http.port, b"GET /" + b"x" * 20000)
            assert status.startswith("HTTP/1.1 431")
            assert http.requests == 7  # the oversized head is refused before it is a request
            tg.cancel_scope.cancel()


class _FakePublisher:
    """Stands in for a JetStreamPublisher's statistics (a real one is covered in tests/jetstream)."""

    def __init__(self) -> None:
        self.published = 4

    def statistics(self) -> JetStreamPublisherStatistics:
        return JetStreamPublisherStatistics(
            url="nats://127.0.0.1:4222",
            stream="soloist-bank",
            connected=True,
            published_position=self.published,
            lag_events=9 - self.published,
            messages=2,
            events=self.published,
            sessions=1,
            resyncs=1,
            last_error=None,
        )


class TestPublisherMetrics:
    async def test_publisher_position_and_lag_are_exported(self, tmp_path: Path) -> None:
        """A JetStream publisher's position and lag are exported under its stream's label, and in the snapshot."""
        async with App(BANK, tmp_path / "bank.db", replicas=1) as app:
            publisher = _FakePublisher()
            metrics = Metrics(app, publisher=publisher)
            text = metrics.render()
            assert value(text, "soloist_jetstream_published_position", stream="soloist-bank") == 4
            assert value(text, "soloist_jetstream_lag_events", stream="soloist-bank") == 5
            assert value(text, "soloist_jetstream_connected", stream="soloist-bank") == 1
            publisher.published = 9
            assert value(metrics.render(), "soloist_jetstream_lag_events", stream="soloist-bank") == 0
            assert metrics.snapshot()["publisher"] == {
                "stream": "soloist-bank",
                "connected": True,
                "published_position": 9,
                "lag_events": 0,
            }
