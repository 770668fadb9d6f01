"""The delivery contracts under chaos: a bank that must not apply a transfer twice.

Clients move money from their account to a pool, through network chaos, buggify
and a bank process that crashes and reboots.  The bank's books (``ctx.state``,
which outlives a crash, like a disk that syncs every write) must show every
client's account at its starting balance minus exactly the transfers that
client saw succeed.  Three ways of calling:

* ``try_get_reply`` (at most once) and, when the outcome is unknown
  (``MaybeDelivered`` or a timeout), a read-back that also *fences* the
  transfer, so that a copy still on its way can no longer apply: correct;
* ``get_reply`` (at least once) with the bank deduplicating by
  ``ReceivedEnvelope.request_id``: correct;
* ``get_reply`` retried blindly on timeout, with no deduplication: the transport
  resends a transfer whose reply was lost, the bank applies it again, and the
  simulation catches it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio

from moonpool.net import ChaosConfig
from moonpool.sim import (
    Attrition,
    FixedCount,
    ProcessContext,
    SimulationBuilder,
    SimulationReport,
    WorkloadContext,
    always,
    sometimes,
)
from moonpool.transport import (
    ClientTransport,
    ConnectionFailed,
    MaybeDelivered,
    ReceivedEnvelope,
    ServerTransport,
    TransportError,
    TransportTimeout,
)
from tests.transport.sim_servers import serve_until_shutdown

INITIAL = 1000
TRANSFERS = 12
CLIENTS = 2
CALL_TIMEOUT = 2.0
ATTRITION = Attrition(max_dead=1, interval=3.0, crash=1.0, reboot=1.0)


def execute(books: dict[str, Any], request: ReceivedEnvelope[object], *, dedup: bool) -> bytes:
    """One bank operation, synchronous from receipt to reply: a crash lands before
    or after it, never in the middle."""
    balances, applies = books["balances"], books["applies"]
    fenced, answers = books["fenced"], books["answers"]
    op, tid, *rest = request.payload.decode().split()
    if op == "Q":  # read back, and fence if it never applied
        if tid in applies:
            return b"APPLIED"
        fenced[tid] = True
        return b"NOT_APPLIED"
    if dedup and request.request_id in answers:
        books["dedup_hits"] += 1
        return bytes(answers[request.request_id])
    if tid in fenced:
        return b"FENCED"  # a copy that arrives after its read-back: too late
    source, amount = rest[0], int(rest[1])
    balances.setdefault(source, INITIAL)
    balances[source] -= amount
    balances["pool"] += amount
    applies[tid] = applies.get(tid, 0) + 1
    always(applies[tid] == 1, "a transfer is applied at most once")
    answers[request.request_id] = b"OK"
    return b"OK"


async def serve_bank(ctx: ProcessContext, *, dedup: bool) -> None:
    books = ctx.state.setdefault(
        "books",
        {"balances": {"pool": 0}, "applies": {}, "fenced": {}, "answers": {}, "dedup_hits": 0},
    )

    async def run(server: ServerTransport[Any]) -> None:
        async for request in server:
            answer = execute(books, request, dedup=dedup)
            with contextlib.suppress(TransportError):
                server.send_reply(request, answer)

    await serve_until_shutdown(ctx, run)


async def plain_bank(ctx: ProcessContext) -> None:
    await serve_bank(ctx, dedup=False)


async def dedup_bank(ctx: ProcessContext) -> None:
    try:
        await serve_bank(ctx, dedup=True)
    finally:
        sometimes(ctx.state["books"]["dedup_hits"] > 0, "a resent transfer is answered once")


class BankClient:
    """Moves money to the pool; subclasses choose how to call."""

    mode = ""

    async def run(self, ctx: WorkloadContext) -> None:
        bank = ctx.peers["bank"]
        account = f"acct-{ctx.name}"
        believed = ctx.state.setdefault("believed", {})
        believed[account] = 0
        async with ClientTransport(ctx.network) as client:
            for n in range(TRANSFERS):
                amount = ctx.random.randint(1, 20)
                message = f"T {ctx.name}-{n} {account} {amount}".encode()
                if await self.transfer(client, ctx, bank, message):
                    believed[account] += amount
                await anyio.sleep(ctx.random.uniform(0.0, 0.5))

    async def transfer(
        self, client: ClientTransport, ctx: WorkloadContext, bank: str, message: bytes
    ) -> bool:
        raise NotImplementedError

    async def read_back(self, client: ClientTransport, bank: str, message: bytes) -> bool:
        """Whether the transfer applied; if it did not, it never will (fenced)."""
        tid = message.split()[1]
        while True:
            try:
                # Reading back is idempotent: at least once is right.
                reply = await client.get_reply(bank, b"Q " + tid, timeout=CALL_TIMEOUT)
            except TransportError:
                await anyio.sleep(0.1)
                continue
            return reply == b"APPLIED"

    async def check(self, ctx: WorkloadContext) -> None:
        account = f"acct-{ctx.name}"
        books = ctx.state.get("books", {"balances": {}})
        balance = books["balances"].get(account, INITIAL)
        always(
            balance == INITIAL - ctx.state["believed"][account],
            "each account moved exactly what its client saw succeed",
        )
        # Every account but the pool started at INITIAL; transfers only move money.
        balances = books["balances"]
        always(
            not balances or sum(balances.values()) == INITIAL * (len(balances) - 1),
            "money is conserved",
        )


class AtMostOnceClient(BankClient):
    async def transfer(
        self, client: ClientTransport, ctx: WorkloadContext, bank: str, message: bytes
    ) -> bool:
        while True:
            try:
                reply = await client.try_get_reply(bank, message, timeout=CALL_TIMEOUT)
            except (MaybeDelivered, TransportTimeout) as unknown:
                sometimes(isinstance(unknown, MaybeDelivered), "a transfer may have been delivered")
                applied = await self.read_back(client, bank, message)
                sometimes(applied, "an unknown outcome had applied")
                sometimes(not applied, "an unknown outcome had not applied")
                return applied
            except ConnectionFailed:
                # It never left: resending the same transfer is safe -- and if that
                # claim were wrong, the bank would count two applies.
                sometimes(True, "a transfer never left and is sent again")
                await anyio.sleep(ctx.random.uniform(0.05, 0.3))
                continue
            except TransportError:
                await anyio.sleep(0.1)
                continue
            return reply == b"OK"


class DedupClient(BankClient):
    async def transfer(
        self, client: ClientTransport, ctx: WorkloadContext, bank: str, message: bytes
    ) -> bool:
        try:
            reply = await client.get_reply(bank, message, timeout=4 * CALL_TIMEOUT)
        except TransportError:
            return await self.read_back(client, bank, message)
        return reply == b"OK"


class BlindRetryClient(BankClient):
    async def transfer(
        self, client: ClientTransport, ctx: WorkloadContext, bank: str, message: bytes
    ) -> bool:
        while True:
            try:
                reply = await client.get_reply(bank, message, timeout=CALL_TIMEOUT)
            except TransportError:
                continue  # "it probably did not go through": the bug
            return reply == b"OK"


def bank_simulation(client: type[BankClient], *, dedup: bool, seeds: int) -> SimulationReport:
    bank = dedup_bank if dedup else plain_bank
    return (
        SimulationBuilder()
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .set_attrition(ATTRITION)
        .register_process("bank", bank)
        .register_workload("client", client, count=CLIENTS)
        .set_iteration_control(FixedCount(seeds))
        .run()
    )


def test_at_most_once_with_read_back_keeps_the_books_right() -> None:
    report = bank_simulation(AtMostOnceClient, dedup=False, seeds=100)
    report.assert_success()
    assert report.fault_totals["crash"] + report.fault_totals["reboot"] > 80
    assert report.fault_totals["reset"] > 0


def test_at_least_once_with_request_id_dedup_keeps_the_books_right() -> None:
    report = bank_simulation(DedupClient, dedup=True, seeds=100)
    report.assert_success()  # including: a resent transfer was answered from the table
    assert report.fault_totals["crash"] + report.fault_totals["reboot"] > 80


def test_blind_retries_without_dedup_are_caught_applying_twice() -> None:
    """About one seed in five catches it; 100 seeds all missing it: ~1e-9."""
    report = bank_simulation(BlindRetryClient, dedup=False, seeds=100)
    assert report.failures, "chaos must expose the double applies"
    assert all(failure.kind == "assertion" for failure in report.failures)
    assert all("applied at most once" in failure.error for failure in report.failures)
    # Each failing seed replays to the same failure.
    first = report.failures[0]
    replay = (
        SimulationBuilder()
        .enable_buggify()
        .set_chaos(ChaosConfig.default())
        .set_attrition(ATTRITION)
        .register_process("bank", plain_bank)
        .register_workload("client", BlindRetryClient, count=CLIENTS)
        .set_seeds([first.seed])
        .run()
    )
    assert [failure.error for failure in replay.failures] == [first.error]
