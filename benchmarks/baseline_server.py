"""The yardstick (issue 8): the shop's wire subset served the simple, competent way, in one file.

What a good engineer writes in an hour for the job ``soloist serve`` does with the shop, and nothing more:

- one asyncio ``Protocol`` server on uvloop, speaking the NDJSON protocol of docs/protocol.md for ``ping``,
  ``command`` (the shop's seven commands) and ``query`` (``GetProduct``, ``GetOrder``), same request and
  answer shapes, same error codes, orjson both ways, one ``transport.write`` per received chunk;
- one writer task draining a bounded ``asyncio.Queue``: it decides each command against in-memory state
  with the rules of ``soloist_shop.decider``, appends one row per event with one ``executemany`` and one
  ``commit`` per batch (SQLite WAL, ``synchronous=FULL``, on one worker thread so the loop keeps reading),
  then applies the events to a dict read model and answers: a command is acknowledged after its commit;
- on start it replays the log into memory, or seeds an empty log with ``soloist_shop.seed.seed_commands()``.

Left out on purpose (soloist has them): idempotency keys (the field is accepted and ignored), per-stream
versions, in-process replicas, subscriptions, stats, auth, snapshots, per-connection in-flight limits.

    python benchmarks/baseline_server.py --db PATH [--host 127.0.0.1] [--port 0]

Prints ``{"event": "server_listening", "host": ..., "port": ...}`` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import orjson
import uvloop

from soloist_shop.seed import seed_commands

Json = dict[str, Any]
Event = tuple[str, Json]  # (type, data)

MAX_LINE = 1 << 20
MAX_ORDER_LINES = 100
QUEUE_SIZE = 8192
MAX_BATCH = 2048
FIELDS = {
    "ping": {"id", "op"},
    "command": {"id", "op", "type", "data", "idempotency_key", "timeout_ms"},
    "query": {"id", "op", "type", "data", "consistency", "min_position", "timeout_ms"},
}
_NL = orjson.OPT_APPEND_NEWLINE


class WireError(Exception):
    """An error answer: ``code`` is the wire code, the message is for humans."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def ok(rid: object, result: object, position: int) -> bytes:
    return orjson.dumps({"id": rid, "ok": True, "result": result, "position": position}, option=_NL)


def error(rid: object, code: str, message: str) -> bytes:
    return orjson.dumps({"id": rid, "ok": False, "error": {"code": code, "message": message}}, option=_NL)


def _str(data: Json, name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise WireError("bad_request", f"field {name!r}: expected a string, got {type(value).__name__}")
    return value


def _int(data: Json, name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError("bad_request", f"field {name!r}: expected an integer, got {type(value).__name__}")
    return value


def rejected(message: str) -> WireError:
    return WireError("rejected", message)


# -- state: products, customers, orders as plain dicts, built by applying events -------------------------


class Shop:
    """The shop as dicts in the shapes the queries answer. The writer keeps one (decisions), the readers another."""

    def __init__(self) -> None:
        self.position = 0
        self.products: dict[str, Json] = {}  # sku -> GetProduct's answer
        self.customers: dict[str, str] = {}  # customer id -> name
        self.orders: dict[str, Json] = {}  # order id -> GetOrder's answer

    def apply(self, position: int, kind: str, data: Json) -> None:
        """Fold one committed (or about to be) event in; ``data`` is never kept or mutated."""
        if kind == "ProductAdded":
            self.products[data["sku"]] = {**data, "units_sold": 0}
        elif kind == "PriceChanged":
            self.products[data["sku"]]["price_cents"] = data["price_cents"]
        elif kind in ("ProductRestocked", "StockReleased"):
            self.products[data["sku"]]["stock"] += data["quantity"]
        elif kind == "StockReserved":
            self.products[data["sku"]]["stock"] -= data["quantity"]
        elif kind == "CustomerRegistered":
            self.customers[data["customer_id"]] = data["name"]
        elif kind == "OrderPlaced":
            lines = [{**x, "line_total_cents": x["quantity"] * x["unit_price_cents"]} for x in data["lines"]]
            for line in lines:
                self.products[line["sku"]]["units_sold"] += line["quantity"]
            self.orders[data["order_id"]] = {
                "order_id": data["order_id"],
                "status": "placed",
                "customer": {"customer_id": data["customer_id"], "name": data["customer_name"]},
                "lines": lines,
                "total_cents": sum(line["line_total_cents"] for line in lines),
            }
        elif kind == "OrderCancelled":
            order = self.orders[data["order_id"]]
            order["status"] = "cancelled"
            for line in order["lines"]:
                self.products[line["sku"]]["units_sold"] -= line["quantity"]
        elif kind == "OrderShipped":
            self.orders[data["order_id"]]["status"] = "shipped"
        self.position = position


def stream_of(kind: str, data: Json) -> str:
    if kind.startswith("Order"):
        return f"order-{data['order_id']}"
    if kind == "CustomerRegistered":
        return f"customer-{data['customer_id']}"
    return f"product-{data['sku']}"


# -- decisions: the rules of soloist_shop.decider, on dicts ----------------------------------------------


def _product(shop: Shop, sku: str) -> Json:
    product = shop.products.get(sku)
    if product is None:
        raise rejected(f"product {sku!r} does not exist")
    return product


def _placed_order(shop: Shop, order_id: str, verb: str) -> Json:
    order = shop.orders.get(order_id)
    if order is None:
        raise rejected(f"order {order_id!r} does not exist")
    if order["status"] != "placed":
        raise rejected(f"cannot {verb} order {order_id!r}: it is already {order['status']}")
    return order


def _price(sku: str, price_cents: int) -> int:
    if price_cents <= 0:
        raise rejected(f"price_cents for sku {sku!r} must be > 0, got {price_cents}")
    return price_cents


def register_customer(shop: Shop, data: Json) -> list[Event]:
    customer_id, name, email = _str(data, "customer_id"), _str(data, "name"), _str(data, "email")
    if not name.strip():
        raise rejected(f"name of customer {customer_id!r} must not be empty")
    if "@" not in email:
        raise rejected(f"email {email!r} of customer {customer_id!r} has no '@'")
    if customer_id in shop.customers:
        raise rejected(f"customer {customer_id!r} already exists")
    return [("CustomerRegistered", {"customer_id": customer_id, "name": name, "email": email})]


def add_product(shop: Shop, data: Json) -> list[Event]:
    sku, name, category = _str(data, "sku"), _str(data, "name"), _str(data, "category")
    price, stock = _price(sku, _int(data, "price_cents")), _int(data, "stock")
    description = _str(data, "description") if "description" in data else ""
    if stock < 0:
        raise rejected(f"stock of sku {sku!r} must be >= 0, got {stock}")
    if not name.strip():
        raise rejected(f"name of sku {sku!r} must not be empty")
    if sku in shop.products:
        raise rejected(f"product {sku!r} already exists")
    product = {"sku": sku, "name": name, "category": category, "description": description}
    return [("ProductAdded", {**product, "price_cents": price, "stock": stock})]


def change_price(shop: Shop, data: Json) -> list[Event]:
    sku = _str(data, "sku")
    _product(shop, sku)
    return [("PriceChanged", {"sku": sku, "price_cents": _price(sku, _int(data, "price_cents"))})]


def restock(shop: Shop, data: Json) -> list[Event]:
    sku, quantity = _str(data, "sku"), _int(data, "quantity")
    _product(shop, sku)
    if quantity <= 0:
        raise rejected(f"restock quantity of sku {sku!r} must be > 0, got {quantity}")
    return [("ProductRestocked", {"sku": sku, "quantity": quantity})]


def place_order(shop: Shop, data: Json) -> list[Event]:
    order_id, customer_id, lines = _str(data, "order_id"), _str(data, "customer_id"), data.get("lines")
    if not isinstance(lines, list) or not all(isinstance(line, dict) for line in lines):
        raise WireError("bad_request", "field 'lines': expected a list of objects with 'sku' and 'quantity'")
    requested = [(_str(line, "sku"), _int(line, "quantity")) for line in lines]
    if not 1 <= len(requested) <= MAX_ORDER_LINES:
        raise rejected(f"order {order_id!r} must have 1 to {MAX_ORDER_LINES} lines, got {len(requested)}")
    seen: set[str] = set()
    for sku, quantity in requested:
        if sku in seen:
            raise rejected(f"sku {sku!r} appears more than once in order {order_id!r}; put it on one line")
        seen.add(sku)
        if quantity <= 0:
            raise rejected(f"quantity of sku {sku!r} in order {order_id!r} must be > 0, got {quantity}")
    if order_id in shop.orders:
        raise rejected(f"order {order_id!r} already exists")
    customer_name = shop.customers.get(customer_id)
    if customer_name is None:
        raise rejected(f"customer {customer_id!r} does not exist")
    products = [_product(shop, sku) for sku, _ in requested]
    for (sku, quantity), product in zip(requested, products, strict=True):
        if quantity > product["stock"]:
            raise rejected(f"cannot order {quantity} of sku {sku!r}: only {product['stock']} in stock")
    placed = [
        {"sku": sku, "name": p["name"], "quantity": q, "unit_price_cents": p["price_cents"]}
        for (sku, q), p in zip(requested, products, strict=True)
    ]
    order = {"order_id": order_id, "customer_id": customer_id, "customer_name": customer_name, "lines": placed}
    reserved = [("StockReserved", {"sku": sku, "order_id": order_id, "quantity": q}) for sku, q in requested]
    return [("OrderPlaced", order), *reserved]


def cancel_order(shop: Shop, data: Json) -> list[Event]:
    order = _placed_order(shop, _str(data, "order_id"), "cancel")
    order_id = order["order_id"]
    lines = order["lines"]
    released = [("StockReleased", {"sku": x["sku"], "order_id": order_id, "quantity": x["quantity"]}) for x in lines]
    return [("OrderCancelled", {"order_id": order_id}), *released]


def ship_order(shop: Shop, data: Json) -> list[Event]:
    return [("OrderShipped", {"order_id": _placed_order(shop, _str(data, "order_id"), "ship")["order_id"]})]


DECIDERS = {
    "RegisterCustomer": register_customer,
    "AddProduct": add_product,
    "ChangePrice": change_price,
    "Restock": restock,
    "PlaceOrder": place_order,
    "CancelOrder": cancel_order,
    "ShipOrder": ship_order,
}


# -- the log and the writer ----------------------------------------------------------------------------


def open_log(path: str, shop: Shop, view: Shop) -> sqlite3.Connection:
    """Open (or create) the log, replay it into both states; seed an empty one."""
    db = sqlite3.connect(path, check_same_thread=False)  # used by one thread at a time: startup, then the writer's
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS events (position INTEGER PRIMARY KEY, stream TEXT, type TEXT, data BLOB)")
    db.commit()
    for position, kind, blob in db.execute("SELECT position, type, data FROM events ORDER BY position"):
        data = orjson.loads(blob)
        shop.apply(position, kind, data)
        view.apply(position, kind, data)
    if shop.position == 0:
        rows = []
        for command in seed_commands():
            for kind, data in DECIDERS[type(command).__name__](shop, msgspec.to_builtins(command)):
                shop.apply(shop.position + 1, kind, data)
                view.apply(shop.position, kind, data)
                rows.append((shop.position, stream_of(kind, data), kind, orjson.dumps(data)))
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
        db.commit()
    return db


Job = tuple["Connection", object, str, Json]  # (connection, request id, command type, data)


class Writer:
    """The only task that decides and writes: drain the queue, decide each command, commit the batch, answer."""

    def __init__(self, db: sqlite3.Connection, shop: Shop, view: Shop) -> None:
        self.db, self.shop, self.view = db, shop, view
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue(QUEUE_SIZE)
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    def _append(self, rows: list[tuple[int, str, str, bytes]]) -> None:
        self.db.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
        self.db.commit()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            rows: list[tuple[int, str, str, bytes]] = []
            events: list[tuple[int, str, Json]] = []
            answers: list[tuple[Connection, object, int | WireError]] = []
            for job in batch:
                if job is None:
                    continue
                conn, rid, kind, data = job
                try:
                    decided = DECIDERS[kind](self.shop, data)
                except WireError as exc:
                    answers.append((conn, rid, exc))
                    continue
                for event_kind, event_data in decided:
                    position = self.shop.position + 1
                    self.shop.apply(position, event_kind, event_data)
                    events.append((position, event_kind, event_data))
                    rows.append((position, stream_of(event_kind, event_data), event_kind, orjson.dumps(event_data)))
                answers.append((conn, rid, self.shop.position))
            try:
                if rows:
                    await loop.run_in_executor(self.thread, self._append, rows)
            except Exception as exc:  # the state is ahead of the log now: answer, then stop the server
                for conn, rid, _ in answers:
                    conn.send(error(rid, "internal", f"the log failed: {exc}"))
                raise
            for position, kind, data in events:
                self.view.apply(position, kind, data)
            out: dict[Connection, list[bytes]] = {}
            for conn, rid, outcome in answers:
                if isinstance(outcome, WireError):
                    line = error(rid, outcome.code, str(outcome))
                else:
                    result = {"position": outcome, "command_id": uuid.uuid4().hex, "duplicate": False}
                    line = ok(rid, result, outcome)
                out.setdefault(conn, []).append(line)
            for conn, lines in out.items():
                conn.send(b"".join(lines))
            if None in batch:
                return


# -- the server ----------------------------------------------------------------------------------------


class Connection(asyncio.Protocol):
    """One client: split chunks into lines, answer pings and queries at once, hand commands to the writer."""

    def __init__(self, writer: Writer) -> None:
        self.writer, self.view = writer, writer.view
        self.transport: asyncio.Transport | None = None
        self.partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n") if self.partial else data.split(b"\n")
        self.partial = lines.pop()
        out = [answer for line in lines if line.strip() and (answer := self.handle(line)) is not None]
        if len(self.partial) > MAX_LINE:
            out.append(error(None, "too_large", f"a request line may be at most {MAX_LINE} bytes"))
        if out:
            self.send(b"".join(out))
        if len(self.partial) > MAX_LINE and self.transport is not None:
            self.transport.close()

    def handle(self, line: bytes) -> bytes | None:
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return error(None, "bad_request", f"not JSON: {exc}")
        if not isinstance(request, dict):
            return error(None, "bad_request", "a request must be a JSON object")
        rid = request.get("id")
        if rid is not None and (not isinstance(rid, int | str) or isinstance(rid, bool)):
            return error(None, "bad_request", "field 'id': expected an integer or a string")
        try:
            return self._handle(request, rid)
        except WireError as exc:
            return error(rid, exc.code, str(exc))

    def _handle(self, request: Json, rid: object) -> bytes | None:
        op = request.get("op")
        fields = FIELDS.get(op) if isinstance(op, str) else None
        if fields is None:
            raise WireError("unknown_op", f"unknown op {op!r}; this server knows {', '.join(FIELDS)}")
        unknown = request.keys() - fields
        if unknown:
            raise WireError("bad_request", f"unknown field(s) {', '.join(sorted(unknown))} for op {op!r}")
        if op == "ping":
            return ok(rid, "pong", self.view.position)
        kind, data = _str(request, "type"), request.get("data", {})
        if not isinstance(data, dict):
            raise WireError("bad_request", f"field 'data': expected an object, got {type(data).__name__}")
        if op == "query":
            return ok(rid, self.query(request, kind, data), self.view.position)
        if kind not in DECIDERS:
            raise WireError("unknown_type", f"unknown command type {kind!r}; known: {', '.join(DECIDERS)}")
        try:
            self.writer.queue.put_nowait((self, rid, kind, data))
        except asyncio.QueueFull:
            raise WireError("overloaded", "the writer's queue is full; retry later") from None
        return None

    def query(self, request: Json, kind: str, data: Json) -> object:
        consistency = request.get("consistency", "eventual")
        if consistency not in ("eventual", "session", "strong"):
            raise WireError("bad_request", f"field 'consistency': {consistency!r} is not eventual, session or strong")
        if consistency == "session" and _int(request, "min_position") > self.view.position:
            raise WireError("timeout", f"position {request['min_position']} is not committed")
        # The view is updated right after each commit, before any answer: it is always at the head.
        if kind == "GetProduct":
            sku = _str(data, "sku")
            product = self.view.products.get(sku)
            if product is None:
                raise WireError("not_found", f"product {sku!r} not found")
            return product
        if kind == "GetOrder":
            order_id = _str(data, "order_id")
            order = self.view.orders.get(order_id)
            if order is None:
                raise WireError("not_found", f"order {order_id!r} not found")
            return order
        raise WireError("unknown_type", f"unknown query type {kind!r}; known: GetProduct, GetOrder")


async def serve(db_path: str, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    shop, view = Shop(), Shop()
    db = open_log(db_path, shop, view)
    writer = Writer(db, shop, view)
    stop = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    writing = asyncio.create_task(writer.run())
    server = await loop.create_server(lambda: Connection(writer), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()
    print(orjson.dumps({"event": "server_listening", "host": bound[0], "port": bound[1]}).decode(), flush=True)
    try:
        await asyncio.wait([stop, writing], return_when=asyncio.FIRST_COMPLETED)
        server.close()
        if not writing.done():
            await writer.queue.put(None)  # answer what is queued, then stop
        await writing  # re-raises a failed commit
    finally:
        writer.thread.shutdown()
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="SQLite file for the event log")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 picks a free one)")
    args = parser.parse_args()
    uvloop.run(serve(args.db, args.host, args.port))


if __name__ == "__main__":
    main()
