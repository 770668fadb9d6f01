"""Property tests: whatever the chaos does to *timing*, a sim stream never corrupts bytes.

Each example is its own ``trio.run`` on an autojump ``MockClock``, with the
network seed, the messages, the receiver's read sizes and deadlines all drawn by
Hypothesis.  Partial I/O is always on (every write may be cut, every read may be
short), together with the rest of the default chaos.  The receiver must get
exactly the bytes sent, in order, ending in ``EndOfStream``; or, if the
connection was reset, a prefix of them ending in a clean ``BrokenResourceError``.
Only with bit flips on may bytes differ -- and then by exactly the flips counted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import anyio
import msgspec
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from moonpool.net import ChaosConfig, SimNetwork, SimStream

SETTINGS = settings(
    max_examples=120,
    deadline=None,  # wall time per example varies with the machine, not the code
    suppress_health_check=[HealthCheck.too_slow],
)


def _bulk(size: int) -> bytes:
    """Incompressible filler of ``size`` bytes (Hypothesis favours short binaries)."""
    return random.Random(size).randbytes(size)


# Short hand-shaped messages mixed with bulk ones, so that both odd byte patterns
# and transfers large enough to fill buffers and be cut many ways get exercised.
messages_strategy = st.lists(
    st.binary(max_size=64) | st.integers(0, 20_000).map(_bulk), max_size=25
)
reads_strategy = st.lists(st.integers(1, 5000), min_size=1, max_size=8)
# Read deadlines around the default latency (0.5-5 ms one way) so that many reads
# are cancelled midway; None means "no deadline" for that read.  Every cycle of
# deadlines ends with an unbounded read, so the receiver always makes progress
# (a partition can hold data for seconds; tiny deadlines alone would spin).
deadlines_strategy = st.lists(st.none() | st.floats(0.0, 0.01), max_size=7).map(
    lambda deadlines: [*deadlines, None]
)


def chaos_with(partial_io: float, reset: float, bit_flip: float = 0.0) -> ChaosConfig:
    return msgspec.structs.replace(
        ChaosConfig.default(), partial_io=partial_io, reset=reset, bit_flip=bit_flip
    )


@dataclass
class Outcome:
    written: list[bytes] = field(default_factory=list)  # messages whose send() returned
    send_error: BaseException | None = None
    received: bytearray = field(default_factory=bytearray)
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (max_bytes, bytes got)
    end: BaseException | None = None  # what ended the receiver


async def _connect(net: SimNetwork) -> tuple[SimStream, SimStream]:
    listener = await net.listen("server:4500")
    client_net = net.for_host("client")
    while True:
        try:
            client = await client_net.connect("server:4500")
        except (ConnectionRefusedError, TimeoutError):  # chaos at work: try again
            continue
        return client, await listener.accept()


def run_transfer(
    net: SimNetwork,
    messages: list[bytes],
    reads: list[int],
    deadlines: list[float | None],
) -> Outcome:
    outcome = Outcome()

    async def sender(stream: SimStream) -> None:
        try:
            for message in messages:
                await stream.send(message)
                outcome.written.append(message)
            await stream.send_eof()
        except anyio.BrokenResourceError as exc:
            outcome.send_error = exc

    async def receiver(stream: SimStream) -> None:
        n = 0
        while True:
            max_bytes = reads[n % len(reads)]
            deadline = deadlines[n % len(deadlines)]
            n += 1
            try:
                with trio.move_on_after(deadline if deadline is not None else float("inf")):
                    chunk = await stream.receive(max_bytes)
                    outcome.chunks.append((max_bytes, len(chunk)))
                    outcome.received += chunk
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                outcome.end = exc
                return

    async def main() -> None:
        client, server = await _connect(net)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender, client)
            nursery.start_soon(receiver, server)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return outcome


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    messages=messages_strategy,
    reads=reads_strategy,
    deadlines=deadlines_strategy,
    partial_io=st.sampled_from([0.3, 0.7, 1.0]),
    reset=st.sampled_from([0.0, 0.0, 0.02, 0.2]),
    buffer_size=st.sampled_from([64, 1000, 256 * 1024]),
)
def test_receiver_gets_exactly_the_bytes_sent_or_a_clean_break(
    seed: int,
    messages: list[bytes],
    reads: list[int],
    deadlines: list[float | None],
    partial_io: float,
    reset: float,
    buffer_size: int,
) -> None:
    net = SimNetwork(seed=seed, chaos=chaos_with(partial_io, reset), buffer_size=buffer_size)
    outcome = run_transfer(net, messages, reads, deadlines)

    # Shown by --hypothesis-show-statistics: evidence the interesting cases occur.
    event("reset" if net.fault_counts.get("reset") else "no reset")
    event("partial I/O injected" if net.fault_counts.get("partial_io") else "no partial I/O")
    event(f"payload >= 10 KiB: {sum(map(len, messages)) >= 10240}")
    for max_bytes, got in outcome.chunks:
        assert 1 <= got <= max_bytes, "receive returns 1..max_bytes bytes, never b''"
    written = b"".join(outcome.written)
    if net.fault_counts.get("reset", 0) == 0:
        assert outcome.send_error is None
        assert outcome.written == messages
        assert isinstance(outcome.end, anyio.EndOfStream)
        assert bytes(outcome.received) == written, "lost, duplicated or reordered bytes"
    else:
        # A reset happens on a write and breaks the stream: the write that drew it
        # raised, the receiver ends with BrokenResourceError, and what it did get
        # is an uncorrupted prefix of what was written before.
        assert net.fault_counts["reset"] == 1
        assert isinstance(outcome.send_error, anyio.BrokenResourceError)
        assert isinstance(outcome.end, anyio.BrokenResourceError)
        assert written.startswith(bytes(outcome.received))
        assert len(outcome.written) < len(messages)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    messages=messages_strategy,
    reads=reads_strategy,
    bit_flip=st.sampled_from([0.05, 0.5, 1.0]),
)
def test_bit_flips_are_the_only_way_bytes_change(
    seed: int, messages: list[bytes], reads: list[int], bit_flip: float
) -> None:
    net = SimNetwork(seed=seed, chaos=chaos_with(partial_io=0.5, reset=0.0, bit_flip=bit_flip))
    outcome = run_transfer(net, messages, reads, [None])

    sent = b"".join(messages)
    assert isinstance(outcome.end, anyio.EndOfStream)
    assert len(outcome.received) == len(sent), "bit flips corrupt bytes, never drop them"
    flipped = sum((a ^ b).bit_count() for a, b in zip(outcome.received, sent, strict=True))
    # Each flip corrupts one bit of one chunk and chunks never overlap, so the bit
    # distance is exactly the number of flips counted.
    assert flipped == net.fault_counts.get("bit_flip", 0)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), messages=messages_strategy, reads=reads_strategy)
def test_a_perfect_network_delivers_everything_in_zero_time(
    seed: int, messages: list[bytes], reads: list[int]
) -> None:
    net = SimNetwork(seed=seed, chaos=ChaosConfig.none(), buffer_size=512)
    outcome = run_transfer(net, messages, reads, [None])
    assert bytes(outcome.received) == b"".join(messages)
    assert isinstance(outcome.end, anyio.EndOfStream)
    assert net.fault_counts == {}
