"""A writer process for the crash test: submits keyed deposits concurrently and prints each acknowledgement.

Usage: ``python -m tests.runtime.crash_worker DB FIRST LAST CONCURRENCY``. Prints ``ready`` once the app
is up, then ``ack <key> <position>`` after each command is durable, then ``done``.
"""

from __future__ import annotations

import sys

import anyio
import uvloop

from soloist import App, Receipt, configure_logging
from tests.toy import BANK, Balance, Deposit, Open


async def main(db: str, first: int, last: int, concurrency: int) -> None:
    out = sys.stdout

    def ack(key: str, receipt: Receipt) -> None:
        out.write(f"ack {key} {receipt.position}\n")
        out.flush()

    async with App(BANK, db, replicas=2, queue_capacity=256) as app:
        ack("open-a", await app.execute(Open(account="a"), idempotency_key="open-a"))
        out.write("ready\n")
        out.flush()

        async def submitter(offset: int) -> None:
            for i in range(first + offset, last, concurrency):
                key = f"dep-{i}"
                ack(key, await app.execute(Deposit(account="a", amount=1), idempotency_key=key))

        async with anyio.create_task_group() as tg:
            for offset in range(concurrency):
                tg.start_soon(submitter, offset)
        answer = await app.query(Balance(account="a"), consistency="strong")
        out.write(f"done {answer.result} {answer.position}\n")
        out.flush()


if __name__ == "__main__":
    configure_logging("warning")
    db, first, last, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    uvloop.run(main(db, first, last, concurrency))
