"""The crash suite: a real ``soloist serve`` (shop domain) killed with SIGKILL under load, round after round.

Each round: start the writer on the same SQLite file (fixed port), drive concurrent clients sending keyed shop
commands while recording every request and answer, ``kill -9`` once a random number of answers arrived, restart,
resend every unanswered request with its key, then check the whole history:

- every acknowledged command is in the log exactly once (its key, one command id, its receipt's position);
  lost = acknowledged but absent, duplicated = one key with two command ids or two receipt positions;
- every event belongs to an acknowledged command (no event without a command, none of a rejected one);
- positions are 1..head with no gap;
- each product's stock is >= 0 and equals initial + restocks - units of orders not cancelled, computed from the
  acknowledged commands alone;
- the writer, a replica process following it across the crashes, and an offline replay of the file answer
  GetProduct for every sku and SalesSummary identically.

On PostgreSQL (``dsn``), the same rounds run with a standby: the writer and a ``--standby`` process share the
log; the writer is killed, the standby takes over (its ``standby_took_over`` line), a new standby starts on the
dead writer's port, and the resend goes to the new writer. After every resend a few acknowledged requests are
sent again: each must come back as a duplicate with its first receipt.

``python -m tests.e2e.crash_suite --rounds 100 [--seed N] [--postgres SERVER]`` (``make chaos``) prints the
figures; ``tests/e2e/test_crash_suite.py`` runs a few rounds of each in the default suite.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import asyncpg
import orjson

from soloist import ConnectionLost, CQRSError, DomainError
from soloist._log import LogScanner
from soloist._messages import TypeRegistry
from soloist._postgres import PostgresStore
from soloist.net import Client
from soloist_shop.queries import GetProduct, SalesSummary
from soloist_shop.wiring import DOMAIN
from tests.e2e.processes import ROOT, SoloistProcess, _env
from tests.postgres import admin

__all__ = ["CrashSuite", "Figures"]

SKUS = tuple(f"SKU-{i}" for i in range(6))
CUSTOMERS = tuple(f"c-{i}" for i in range(3))
INITIAL_STOCK = 40
CLIENTS = 8


@dataclass(eq=False)
class Request:
    """One keyed command, sent until it gets an answer (ok or rejected)."""

    key: str
    type: str
    data: dict[str, object]
    answer: str | None = None  # "ok" / "rejected"; None while unanswered
    positions: set[int] = field(default_factory=set)  # receipt positions seen (one, for an honest log)
    attempts: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Figures:
    seed: int
    rounds: int
    sent: int
    acknowledged: int
    rejected: int
    retried: int
    found_committed: int
    lost: int
    duplicated: int
    events: int
    seconds: float

    def line(self) -> str:
        return (
            f"crash suite: seed {self.seed}, rounds {self.rounds}, commands sent {self.sent}, "
            f"acknowledged {self.acknowledged}, rejected {self.rejected}, resent after a kill {self.retried} "
            f"(of which already committed {self.found_committed}), "
            f"lost {self.lost}, duplicated {self.duplicated}, events in the log {self.events}, {self.seconds:.1f} s"
        )


class HistoryViolation(AssertionError):
    """The log and the recorded history disagree: an invariant of the crash suite is broken."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CrashSuite:
    """Rounds of load, SIGKILL, restart and resend against one log file; ``check()`` after each round."""

    def __init__(self, directory: Path, *, seed: int, dsn: str | None = None, lease_ttl: float = 1.0) -> None:
        self.directory = directory
        self.db = directory / "crash.db"
        self.dsn = dsn  # a PostgreSQL log shared by the writer and a standby; None: the SQLite file
        self.lease_ttl = lease_ttl
        self.rng = random.Random(seed)
        self.seed = seed
        self.port = _free_port()  # the writer's
        self.spare_port = _free_port()  # PostgreSQL: the standby's
        self.requests: list[Request] = []
        self.orders: list[str] = []  # acknowledged PlaceOrder ids (candidates for CancelOrder / ShipOrder)
        self.retried = 0
        self.found_committed = 0
        self._next = 0
        self._starts = 0
        self._outer = AsyncExitStack()

    # -- processes ------------------------------------------------------------------------------------

    async def _start(self, stack: AsyncExitStack, *args: str) -> SoloistProcess:
        self._starts += 1
        log = self.directory / f"{args[0]}-{self._starts}.log"
        with log.open("wb") as sink:
            process = await anyio.open_process(
                [sys.executable, "-m", "soloist.cli", *args],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                env=_env(),
                cwd=ROOT,
            )
        stack.push_async_callback(process.aclose)

        def kill() -> None:
            if process.returncode is None:
                process.kill()

        stack.callback(kill)
        running = SoloistProcess(process, log)
        await running.wait_listening()
        return running

    async def _serve(self, port: int, *, standby: bool = False) -> SoloistProcess:
        """A ``soloist serve`` on the log (killed at the end of the run if still alive)."""
        args = ["serve", "--db", self.dsn or str(self.db), "--port", str(port), "--no-seed"]
        if self.dsn is not None:
            args += ["--lease-ttl", str(self.lease_ttl), *(["--standby"] if standby else [])]
        return await self._start(self._outer, *args)

    # -- requests -------------------------------------------------------------------------------------

    def _request(self, type_name: str, data: dict[str, object]) -> Request:
        self._next += 1
        request = Request(key=f"k{self.seed}-{self._next}", type=type_name, data=data)
        self.requests.append(request)
        return request

    def _random_request(self) -> Request:
        rng = self.rng
        roll = rng.random()
        if roll < 0.55 or not self.orders:
            skus = rng.sample(SKUS, rng.randint(1, 2))
            lines = [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in skus]
            data: dict[str, object] = {
                "order_id": f"o{self.seed}-{self._next + 1}",
                "customer_id": rng.choice(CUSTOMERS),
                "lines": lines,
            }
            return self._request("PlaceOrder", data)
        if roll < 0.8:
            return self._request("Restock", {"sku": rng.choice(SKUS), "quantity": rng.randint(1, 5)})
        if roll < 0.95:
            return self._request("CancelOrder", {"order_id": rng.choice(self.orders)})
        return self._request("ShipOrder", {"order_id": rng.choice(self.orders)})

    async def _send(self, client: Client, request: Request) -> None:
        """Send once; record an ok or a rejection. Connection loss and other errors leave it unanswered."""
        request.attempts += 1
        try:
            receipt = await client.command(request.type, request.data, idempotency_key=request.key)
        except DomainError:
            request.answer = "rejected"
            return
        request.answer = "ok"
        if request.attempts > 1 and receipt.get("duplicate") is True:
            self.found_committed += 1  # resent after a kill, and the log already had it: answered once
        position = receipt["position"]
        assert isinstance(position, int)
        request.positions.add(position)
        if request.type == "PlaceOrder":
            self.orders.append(str(request.data["order_id"]))

    async def _setup(self) -> None:
        async with Client.connect("127.0.0.1", self.port) as client:
            for customer in CUSTOMERS:
                data: dict[str, object] = {"customer_id": customer, "name": f"Customer {customer}", "email": "a@b.c"}
                await self._send(client, self._request("RegisterCustomer", data))
            for sku in SKUS:
                data = {"sku": sku, "name": sku, "category": "c", "price_cents": 150, "stock": INITIAL_STOCK}
                await self._send(client, self._request("AddProduct", data))
        if any(r.answer != "ok" for r in self.requests):
            raise HistoryViolation(f"setup failed: {[(r.type, r.answer) for r in self.requests]}")

    async def _drive(self, writer: SoloistProcess, kill_after: int) -> None:
        """CLIENTS concurrent clients, one request in flight each, until SIGKILL after ``kill_after`` answers."""
        answered = 0
        killed = anyio.Event()

        async def client_loop() -> None:
            nonlocal answered
            try:
                async with Client.connect("127.0.0.1", self.port) as client:
                    while not killed.is_set():
                        await self._send(client, self._random_request())
                        answered += 1
                        if answered >= kill_after and not killed.is_set():
                            writer.process.send_signal(signal.SIGKILL)  # in-flight requests of the others die
                            killed.set()
            except (ConnectionLost, OSError, CQRSError):
                killed.set()  # the kill reached this client mid-request: that request stays unanswered

        async with anyio.create_task_group() as tg:
            for _ in range(CLIENTS):
                tg.start_soon(client_loop)
        if writer.process.returncode is None:
            writer.process.send_signal(signal.SIGKILL)
        with anyio.fail_after(30):
            await writer.process.wait()

    async def _resend(self) -> None:
        """After the restart: every unanswered request again, with its key, until answered; then a few
        acknowledged ones, which must come back as duplicates with their first receipt."""
        async with Client.connect("127.0.0.1", self.port) as client:
            for request in self.requests:
                if request.answer is None:
                    self.retried += 1
                    await self._send(client, request)
                    if request.answer is None:  # pragma: no cover - only after a failure of the writer itself
                        raise HistoryViolation(f"resending {request.key} gave no answer")
            acknowledged = [r for r in self.requests if r.answer == "ok"]
            for request in self.rng.sample(acknowledged, min(3, len(acknowledged))):
                receipt = await client.command(request.type, request.data, idempotency_key=request.key)
                position = receipt["position"]
                assert isinstance(position, int)
                request.positions.add(position)  # a second position is counted as duplicated
                if receipt.get("duplicate") is not True:
                    raise HistoryViolation(f"{request.key}, acknowledged before, was executed again: {receipt}")

    # -- rounds ---------------------------------------------------------------------------------------

    async def run(self, rounds: int, *, max_kill_after: int = 150) -> Figures:
        started = time.perf_counter()
        async with AsyncExitStack() as outer:
            self._outer = outer
            writer = await self._serve(self.port)
            await self._setup()
            standby = await self._serve(self.spare_port, standby=True) if self.dsn is not None else None
            replica_db = self.directory / "replica.db"
            replica = await self._start(  # follows the first writer's address (on PostgreSQL: writer or standby)
                outer, "replica", "--upstream", f"127.0.0.1:{self.port}", "--db", str(replica_db), "--port", "0"
            )
            for _ in range(rounds):
                await self._drive(writer, self.rng.randint(5, max_kill_after))
                if standby is None:
                    writer = await self._serve(self.port)  # restarted on the same file
                else:
                    await standby.wait_for("standby_took_over", within=self.lease_ttl + 30)
                    writer, self.port, self.spare_port = standby, self.spare_port, self.port
                    standby = await self._serve(self.spare_port, standby=True)  # where the dead writer was
                await self._resend()
                await self.check(replica)
            for process in (writer, standby):
                if process is not None:
                    await process.terminate(within=30)
        return await self.figures(rounds, time.perf_counter() - started)

    # -- the checks -----------------------------------------------------------------------------------

    async def _log_rows(self) -> list[tuple[int, str | None, str]]:
        sql = "SELECT position, idempotency_key, command_id FROM {}events ORDER BY position"
        if self.dsn is not None:
            conn = await asyncpg.connect(self.dsn)
            try:
                rows = [tuple(row) for row in await conn.fetch(sql.format("soloist."))]
            finally:
                await conn.close()
        else:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as db:
                rows = db.execute(sql.format("")).fetchall()
            db.close()
        return [(int(p), k, str(c)) for p, k, c in rows]

    async def figures(self, rounds: int, seconds: float) -> Figures:
        rows = await self._log_rows()
        commands_of: dict[str | None, set[str]] = defaultdict(set)
        for _, key, command_id in rows:
            commands_of[key].add(command_id)
        acknowledged = [r for r in self.requests if r.answer == "ok"]
        return Figures(
            seed=self.seed,
            rounds=rounds,
            sent=len(self.requests),
            acknowledged=len(acknowledged),
            rejected=sum(r.answer == "rejected" for r in self.requests),
            retried=self.retried,
            found_committed=self.found_committed,
            lost=sum(r.key not in commands_of for r in acknowledged),
            duplicated=sum(len(commands_of.get(r.key, ())) > 1 or len(r.positions) > 1 for r in acknowledged),
            events=len(rows),
            seconds=seconds,
        )

    def _expected_stock(self) -> dict[str, int]:
        stock = dict.fromkeys(SKUS, INITIAL_STOCK)
        orders: dict[str, list[tuple[str, int]]] = {}
        for request in self.requests:
            if request.answer != "ok":
                continue
            data = request.data
            if request.type == "Restock":
                stock[str(data["sku"])] += int(str(data["quantity"]))
            elif request.type == "PlaceOrder":
                lines = data["lines"]
                assert isinstance(lines, list)
                orders[str(data["order_id"])] = [(str(line["sku"]), int(line["quantity"])) for line in lines]
                for sku, quantity in orders[str(data["order_id"])]:
                    stock[sku] -= quantity
            elif request.type == "CancelOrder":
                for sku, quantity in orders[str(data["order_id"])]:
                    stock[sku] += quantity
        return stock

    async def _answers(self, port: int, head: int) -> dict[str, object]:
        async with Client.connect("127.0.0.1", port) as client:
            out: dict[str, object] = {}
            for sku in SKUS:
                answer = await client.query(
                    "GetProduct", {"sku": sku}, consistency="session", min_position=head, timeout_ms=30_000
                )
                out[sku] = answer.result
            summary = await client.query("SalesSummary", consistency="session", min_position=head, timeout_ms=30_000)
            out["SalesSummary"] = summary.result
        return out

    async def _replayed(self, head: int) -> dict[str, object]:
        """The read models of an offline replay of the log (read-only: no lock, no lease)."""
        models = DOMAIN.read_models()
        events = TypeRegistry("event", DOMAIN.events)
        if self.dsn is not None:
            async with PostgresStore(self.dsn, events) as store:
                async for chunk in store.replay(0, head):
                    for event in chunk:
                        models.apply(event)
        else:
            with LogScanner(self.db, events) as scanner:
                after = 0
                while chunk := scanner.read(after):
                    for event in chunk:
                        models.apply(event)
                    after = chunk[-1].position
        out: dict[str, object] = {sku: models.query(GetProduct(sku=sku)) for sku in SKUS}
        out["SalesSummary"] = models.query(SalesSummary())
        return orjson.loads(orjson.dumps(out))  # type: ignore[no-any-return]

    async def check(self, replica: SoloistProcess) -> None:
        """Every invariant of the history (see the module docstring); HistoryViolation names the first broken."""
        rows = await self._log_rows()
        positions = [p for p, _, _ in rows]
        if positions != list(range(1, len(rows) + 1)):
            raise HistoryViolation(f"positions are not 1..{len(rows)}: first gap near {_first_gap(positions)}")
        head = positions[-1] if positions else 0
        commands_of: dict[str | None, set[str]] = defaultdict(set)
        last_position: dict[str | None, int] = {}
        for position, key, command_id in rows:
            commands_of[key].add(command_id)
            last_position[key] = position
        by_key = {r.key: r for r in self.requests}
        for key in commands_of:
            request = by_key.get(key) if key is not None else None
            if request is None or request.answer != "ok":
                state = "no command" if request is None else f"a {request.answer} command"
                raise HistoryViolation(f"events with key {key!r} belong to {state}")
        for request in self.requests:
            if request.answer is None:
                raise HistoryViolation(f"{request.key} is still unanswered after the resend")
            if request.answer != "ok":
                continue
            ids = commands_of.get(request.key)
            if not ids:
                raise HistoryViolation(f"acknowledged {request.type} {request.key} is not in the log (lost)")
            if len(ids) != 1 or len(request.positions) != 1:
                receipts = sorted(request.positions)
                raise HistoryViolation(f"{request.key} appears as {sorted(ids)} at receipts {receipts}")
            if request.positions != {last_position[request.key]}:
                raise HistoryViolation(
                    f"{request.key}: receipt {request.positions} but its last event is at {last_position[request.key]}"
                )
        expected = self._expected_stock()
        if any(stock < 0 for stock in expected.values()):
            raise HistoryViolation(f"negative stock from the acknowledged commands: {expected}")
        served = await self._answers(self.port, head)
        followed = await self._answers(replica.port, head)
        replayed = await self._replayed(head)
        stocks = {sku: answer["stock"] for sku, answer in served.items() if isinstance(answer, dict) and sku in SKUS}
        if stocks != expected:
            raise HistoryViolation(f"stock served {stocks}, expected from the acknowledged commands {expected}")
        if served != replayed:
            raise HistoryViolation(f"the writer answers {served}, an offline replay {replayed}")
        if followed != replayed:
            raise HistoryViolation(f"the replica process answers {followed}, an offline replay {replayed}")


def _first_gap(positions: list[int]) -> int:
    for expected, position in enumerate(positions, start=1):
        if position != expected:
            return expected
    return len(positions) + 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None, help="RNG seed (default: random, printed)")
    parser.add_argument("--dir", default=None, help="working directory (default: a temporary one)")
    parser.add_argument(
        "--postgres",
        default=None,
        metavar="SERVER",
        help="run on PostgreSQL with a standby: a server DSN without database (postgresql://postgres@127.0.0.1:5432);"
        " a database is created and dropped",
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    where = "PostgreSQL with a standby" if args.postgres else "SQLite"
    print(f"crash suite ({where}): seed {seed}, rounds {args.rounds}", flush=True)
    dsn = None
    if args.postgres:
        server = args.postgres.rstrip("/")
        name = f"soloist_chaos_{secrets.token_hex(4)}"
        try:
            anyio.run(admin, server, f"CREATE DATABASE {name}")
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"crash suite on PostgreSQL not run: no server at {server} ({exc})", flush=True)
            return 1 if os.environ.get("CI") == "true" else 0
        dsn = f"{server}/{name}"
    try:
        with tempfile.TemporaryDirectory(prefix="soloist-chaos-") as tmp:
            directory = Path(args.dir) if args.dir else Path(tmp)
            directory.mkdir(parents=True, exist_ok=True)
            suite = CrashSuite(directory, seed=seed, dsn=dsn)
            try:
                figures = anyio.run(suite.run, args.rounds, backend_options={"use_uvloop": True})
            except HistoryViolation as exc:
                print(f"crash suite FAILED (seed {seed}): {exc}", flush=True)
                return 1
    finally:
        if args.postgres:
            anyio.run(admin, server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    print(figures.line(), flush=True)
    print(f"rounds: {figures.rounds}\nacknowledged: {figures.acknowledged}\nlost: {figures.lost}")
    print(f"duplicated: {figures.duplicated}")
    return 0 if figures.lost == 0 and figures.duplicated == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
