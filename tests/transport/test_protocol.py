"""TransportProtocol: the Sans-I/O request/response state machine, driven by hand."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moonpool.transport import (
    CheckedEnvelope,
    Completion,
    ConnectionFailed,
    EnvelopeKind,
    FrameTooLarge,
    RemoteError,
    RequestResponseEnvelope,
    RetryPolicy,
    SerializationError,
    Transmit,
    TransportClosed,
    TransportError,
    TransportProtocol,
    TransportTimeout,
)

SERVER = "server:4500"
OTHER = "other:4500"
RR = RequestResponseEnvelope.serializer()
CK = CheckedEnvelope.serializer()


def drain_transmits(proto: TransportProtocol[Any]) -> list[Transmit]:
    out = []
    while (t := proto.poll_transmit()) is not None:
        out.append(t)
    return out


def drain_completions(proto: TransportProtocol[Any]) -> list[Completion]:
    out = []
    while (c := proto.poll_completion()) is not None:
        out.append(c)
    return out


def reply_bytes(cid: int, payload: bytes) -> bytes:
    return RR.serialize(RequestResponseEnvelope(correlation_id=cid, payload=payload))


# --------------------------------------------------------------------------- basics


def test_start_request_queues_the_serialized_request() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    cid = proto.start_request(SERVER, b"PING", now=0.0, timeout=5.0)
    assert cid == 1
    assert proto.pending_count == len(proto) == 1
    assert proto.is_pending(cid)
    assert proto.pending_to(SERVER) == [cid]
    assert drain_transmits(proto) == [
        Transmit(SERVER, b"\x01" + b"\x00" * 7 + b"\x04\x00\x00\x00PING", cid)
    ]
    assert proto.poll_transmit() is None
    assert proto.stats.requests_started == 1
    assert proto.stats.bytes_sent == 16


def test_reply_completes_the_matching_request() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    cid = proto.start_request(SERVER, b"PING", now=0.0, timeout=5.0)
    drain_transmits(proto)
    proto.handle_received(SERVER, reply_bytes(cid, b"PONG"))
    assert drain_completions(proto) == [Completion(cid, b"PONG", None)]
    assert proto.pending_count == 0
    assert proto.poll_timeout() is None
    assert proto.stats.replies_matched == 1
    assert proto.poll_receive() is None  # a client does not queue replies as requests


def test_completion_unwrap() -> None:
    assert Completion(1, b"x", None).unwrap() == b"x"
    error = TransportTimeout("late")
    with pytest.raises(TransportTimeout):
        Completion(1, None, error).unwrap()


def test_correlation_ids_are_unique_and_never_reused() -> None:
    proto = TransportProtocol(RequestResponseEnvelope, first_correlation_id=100)
    seen = []
    for i in range(50):
        cid = proto.start_request(SERVER, b"", now=float(i), timeout=1.0)
        seen.append(cid)
        if i % 2:
            proto.cancel_request(cid)
        proto.handle_timeout(float(i) + 5)  # earlier ones expire: ids must still not recur
    assert len(set(seen)) == len(seen) == 50
    assert seen == list(range(100, 150))


@given(st.lists(st.sampled_from(["start", "cancel", "timeout", "reply"]), max_size=60))
def test_correlation_ids_unique_under_any_history(ops: list[str]) -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    ids: list[int] = []
    now = 0.0
    for op in ops:
        now += 0.5
        if op == "start":
            ids.append(proto.start_request(SERVER, b"", now=now, timeout=1.0))
        elif op == "cancel" and ids:
            proto.cancel_request(ids[-1])
        elif op == "timeout":
            proto.handle_timeout(now)
        elif op == "reply" and ids:
            proto.handle_received(SERVER, reply_bytes(ids[0], b""))
    assert len(set(ids)) == len(ids)
    assert proto.pending_count <= len(ids)


def test_many_concurrent_requests_each_get_their_own_reply_out_of_order() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    ids = [proto.start_request(SERVER, b"q%d" % i, now=0.0, timeout=5.0) for i in range(20)]
    sent = [RR.deserialize(t.data) for t in drain_transmits(proto)]
    assert [e.correlation_id for e in sent] == ids
    rng = random.Random(7)
    order = ids[:]
    rng.shuffle(order)
    # All replies in one chunk, shuffled: each must land on its own request.
    proto.handle_received(SERVER, b"".join(reply_bytes(c, b"a%d" % c) for c in order))
    completions = drain_completions(proto)
    assert [c.correlation_id for c in completions] == order
    assert {c.correlation_id: c.payload for c in completions} == {c: b"a%d" % c for c in ids}
    assert proto.pending_count == 0


def test_replies_split_across_reads() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    a = proto.start_request(SERVER, b"", now=0.0, timeout=5.0)
    b = proto.start_request(SERVER, b"", now=0.0, timeout=5.0)
    stream = reply_bytes(b, b"B") + reply_bytes(a, b"A")
    proto.handle_received(SERVER, stream[:5])
    assert proto.poll_completion() is None
    proto.handle_received(SERVER, stream[5:20])
    assert drain_completions(proto) == [Completion(b, b"B", None)]
    proto.handle_received(SERVER, stream[20:])
    assert drain_completions(proto) == [Completion(a, b"A", None)]


def test_unknown_reply_is_dropped_and_counted() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    cid = proto.start_request(SERVER, b"", now=0.0, timeout=5.0)
    proto.handle_received(SERVER, reply_bytes(cid + 1000, b"stray"))
    assert proto.poll_completion() is None
    assert proto.stats.dropped_replies == 1
    assert proto.is_pending(cid)


def test_reply_from_wrong_source_is_dropped() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    cid = proto.start_request(SERVER, b"", now=0.0, timeout=5.0)
    proto.handle_received(OTHER, reply_bytes(cid, b"spoof"))
    assert proto.poll_completion() is None
    assert proto.stats.dropped_replies == 1
    proto.handle_received(SERVER, reply_bytes(cid, b"real"))
    assert drain_completions(proto) == [Completion(cid, b"real", None)]


def test_duplicate_reply_is_dropped() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    cid = proto.start_request(SERVER, b"", now=0.0, timeout=5.0)
    proto.handle_received(SERVER, reply_bytes(cid, b"1") + reply_bytes(cid, b"2"))
    assert drain_completions(proto) == [Completion(cid, b"1", None)]
    assert proto.stats.dropped_replies == 1


# --------------------------------------------------------------------------- timeouts


def test_timeout_expires_request_and_late_reply_is_dropped() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    cid = proto.start_request(SERVER, b"", now=10.0, timeout=2.5)
    assert proto.poll_timeout() == 12.5
    proto.handle_timeout(12.4)
    assert proto.poll_completion() is None
    proto.handle_timeout(12.5)
    [completion] = drain_completions(proto)
    assert completion.correlation_id == cid
    assert completion.payload is None
    assert isinstance(completion.error, TransportTimeout)
    assert SERVER in str(completion.error)
    assert "2.5s" in str(completion.error)
    assert f"request {cid}" in str(completion.error)
    assert proto.stats.timeouts == 1
    assert proto.poll_timeout() is None

    proto.handle_received(SERVER, reply_bytes(cid, b"too late"))
    assert proto.poll_completion() is None
    assert proto.stats.dropped_replies == 1


def test_poll_timeout_is_the_earliest_live_deadline() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    a = proto.start_request(SERVER, b"", now=0.0, timeout=5.0)
    b = proto.start_request(SERVER, b"", now=0.0, timeout=3.0)
    c = proto.start_request(SERVER, b"", now=0.0, timeout=4.0)
    assert proto.poll_timeout() == 3.0
    proto.handle_received(SERVER, reply_bytes(b, b""))  # earliest one completes
    assert proto.poll_timeout() == 4.0
    proto.cancel_request(c)
    assert proto.poll_timeout() == 5.0
    proto.handle_timeout(5.0)
    assert [x.correlation_id for x in drain_completions(proto)] == [b, a]
    assert proto.poll_timeout() is None


def test_expiry_order_is_deadline_order() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    ids = [proto.start_request(SERVER, b"", now=0.0, timeout=t) for t in (3.0, 1.0, 2.0, 1.0)]
    proto.handle_timeout(100.0)
    assert [c.correlation_id for c in drain_completions(proto)] == [ids[1], ids[3], ids[2], ids[0]]


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("inf"), float("nan")])
def test_invalid_timeout_rejected(timeout: float) -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    with pytest.raises(ValueError, match="positive, finite"):
        proto.start_request(SERVER, b"", now=0.0, timeout=timeout)
    assert proto.pending_count == 0


def test_timer_heap_stays_bounded() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    for _ in range(5000):
        cid = proto.start_request(SERVER, b"", now=0.0, timeout=1000.0)
        proto.handle_received(SERVER, reply_bytes(cid, b""))
    assert len(proto._timers) < 200
    assert proto.poll_timeout() is None


# --------------------------------------------------------------------------- cancel


def test_cancelled_request_produces_no_completion_and_late_reply_is_dropped() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    cid = proto.start_request(SERVER, b"", now=0.0, timeout=5.0)
    drain_transmits(proto)
    proto.cancel_request(cid)
    proto.cancel_request(cid)  # idempotent
    proto.cancel_request(12345)  # unknown: ignored
    assert proto.stats.requests_cancelled == 1
    proto.handle_timeout(10.0)
    proto.handle_received(SERVER, reply_bytes(cid, b""))
    assert proto.poll_completion() is None
    assert proto.stats.dropped_replies == 1


def test_cancelled_before_sending_is_never_sent() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    a = proto.start_request(SERVER, b"a", now=0.0, timeout=5.0)
    b = proto.start_request(SERVER, b"b", now=0.0, timeout=5.0)
    proto.cancel_request(a)
    [transmit] = drain_transmits(proto)
    assert RR.deserialize(transmit.data).correlation_id == b


# ---------------------------------------------------------------- connection loss & retry


def test_connection_lost_fails_in_flight_requests_to_that_destination_only() -> None:
    proto = TransportProtocol(RequestResponseEnvelope, retry=RetryPolicy(max_attempts=1))
    a = proto.start_request(SERVER, b"", now=0.0, timeout=5.0)
    b = proto.start_request(OTHER, b"", now=0.0, timeout=5.0)
    drain_transmits(proto)
    proto.connection_lost(SERVER, now=1.0)
    [completion] = drain_completions(proto)
    assert completion.correlation_id == a
    assert isinstance(completion.error, ConnectionFailed)
    assert SERVER in str(completion.error)
    assert "attempt 1 of 1" in str(completion.error)
    assert proto.is_pending(b)
    assert proto.stats.connection_failures == 1


def test_connection_lost_requeues_requests_the_driver_never_wrote() -> None:
    """Frames still queued in the driver when the connection broke never reached
    the remote: they go out again as the same attempt, and do not fail."""
    proto = TransportProtocol(RequestResponseEnvelope, retry=RetryPolicy(max_attempts=1))
    written = proto.start_request(SERVER, b"on the wire", now=0.0, timeout=5.0)
    queued_a = proto.start_request(SERVER, b"queued a", now=0.0, timeout=5.0)
    queued_b = proto.start_request(SERVER, b"queued b", now=0.0, timeout=5.0)
    other = proto.start_request(OTHER, b"elsewhere", now=0.0, timeout=5.0)
    assert [t.correlation_id for t in drain_transmits(proto)] == [
        written,
        queued_a,
        queued_b,
        other,
    ]
    # Unknown ids and another destination's ids in ``unsent`` are ignored.
    proto.connection_lost(SERVER, now=1.0, unsent=[queued_a, queued_b, other, 999_999])
    (failed,) = drain_completions(proto)
    assert failed.correlation_id == written
    assert isinstance(failed.error, ConnectionFailed)
    again = drain_transmits(proto)
    assert [(t.destination, t.correlation_id) for t in again] == [
        (SERVER, queued_a),
        (SERVER, queued_b),
    ]
    assert again[0].data == reply_bytes(queued_a, b"queued a")  # same wire format
    assert proto.stats.retries == 0 and proto.stats.connection_failures == 1
    # Each frame counts as sent once, however often the driver handed it back.
    assert proto.stats.envelopes_sent == 4
    # Still first attempts: the next loss fails them (max_attempts=1), the reply
    # on a new connection completes them.
    proto.handle_received(SERVER, reply_bytes(queued_a, b"A"))
    assert drain_completions(proto) == [Completion(queued_a, b"A", None)]
    proto.connection_lost(SERVER, now=2.0)
    (lost,) = drain_completions(proto)
    assert lost.correlation_id == queued_b and "attempt 1 of 1" in str(lost.error)
    assert proto.is_pending(other)


def test_a_request_handed_back_unwritten_twice_is_lost_like_any_other() -> None:
    """A remote that keeps hanging up before a frame goes out must not keep the
    request cycling until its deadline: the second time, the policy decides."""
    proto = TransportProtocol(RequestResponseEnvelope, retry=RetryPolicy(max_attempts=2))
    cid = proto.start_request(SERVER, b"x", now=0.0, timeout=5.0)
    drain_transmits(proto)
    proto.connection_lost(SERVER, now=0.1, unsent=[cid])
    assert [t.correlation_id for t in drain_transmits(proto)] == [cid]
    proto.connection_lost(SERVER, now=0.2, unsent=[cid])
    assert drain_transmits(proto) == []  # not put back again: a retry after a backoff
    assert proto.stats.retries == 0
    proto.handle_timeout(proto.poll_timeout() or 0.0)
    assert [t.correlation_id for t in drain_transmits(proto)] == [cid]
    assert proto.stats.retries == 1


def test_connection_lost_discards_partial_frame() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    cid = proto.start_request(SERVER, b"", now=0.0, timeout=5.0)
    proto.handle_received(SERVER, reply_bytes(999, b"partial")[:7])
    proto.connection_lost(SERVER, now=0.5)  # request not yet handed out: stays pending
    assert proto.is_pending(cid)
    drain_transmits(proto)
    # The new connection starts at a frame boundary: the old 7 bytes must be gone.
    proto.handle_received(SERVER, reply_bytes(cid, b"ok"))
    assert drain_completions(proto) == [Completion(cid, b"ok", None)]


def test_protocol_retries_on_failure() -> None:
    """A lost connection resends the same request after backoff; a later reply completes it."""
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.1, backoff_max=1.0, jitter=0.0)
    proto = TransportProtocol(RequestResponseEnvelope, retry=policy, rng=random.Random(1))
    cid = proto.start_request(SERVER, b"PING", now=0.0, timeout=10.0)
    [first] = drain_transmits(proto)

    proto.connection_lost(SERVER, now=1.0)
    assert proto.poll_completion() is None
    assert proto.poll_transmit() is None  # not before the backoff
    assert proto.poll_timeout() == pytest.approx(1.1)
    proto.handle_timeout(1.05)
    assert proto.poll_transmit() is None
    proto.handle_timeout(1.1)
    [second] = drain_transmits(proto)
    assert second == first  # same bytes, so the same correlation id
    assert proto.stats.retries == 1

    proto.connection_lost(SERVER, now=2.0)
    assert proto.poll_timeout() == pytest.approx(2.2)  # exponential: 0.1 then 0.2
    proto.handle_timeout(2.2)
    assert drain_transmits(proto) == [first]

    proto.handle_received(SERVER, reply_bytes(cid, b"PONG"))
    assert drain_completions(proto) == [Completion(cid, b"PONG", None)]
    assert proto.stats.retries == 2


def test_retries_exhausted_gives_connection_failed() -> None:
    policy = RetryPolicy(max_attempts=2, backoff_initial=0.1, jitter=0.0)
    proto = TransportProtocol(RequestResponseEnvelope, retry=policy)
    cid = proto.start_request(SERVER, b"", now=0.0, timeout=10.0)
    drain_transmits(proto)
    proto.connection_lost(SERVER, now=0.0)
    proto.handle_timeout(0.1)
    assert len(drain_transmits(proto)) == 1
    proto.connection_lost(SERVER, now=0.5)
    [completion] = drain_completions(proto)
    assert completion.correlation_id == cid
    assert isinstance(completion.error, ConnectionFailed)
    assert "attempt 2 of 2" in str(completion.error)


def test_no_retry_when_backoff_would_pass_the_deadline() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_initial=1.0, jitter=0.0)
    proto = TransportProtocol(RequestResponseEnvelope, retry=policy)
    proto.start_request(SERVER, b"", now=0.0, timeout=1.5)
    drain_transmits(proto)
    proto.connection_lost(SERVER, now=0.9, reason="reset")  # a retry at 1.9 > deadline 1.5
    assert drain_completions(proto) == []  # no retry: it waits out its deadline
    assert proto.poll_timeout() == 1.5
    proto.handle_timeout(1.5)
    assert drain_transmits(proto) == []
    [completion] = drain_completions(proto)
    assert isinstance(completion.error, TransportTimeout)
    assert "after 1 attempt; last failure: reset" in str(completion.error)


def test_second_loss_while_waiting_for_retry_does_not_burn_an_attempt() -> None:
    policy = RetryPolicy(max_attempts=2, backoff_initial=0.5, jitter=0.0)
    proto = TransportProtocol(RequestResponseEnvelope, retry=policy)
    cid = proto.start_request(SERVER, b"", now=0.0, timeout=10.0)
    drain_transmits(proto)
    proto.connection_lost(SERVER, now=0.0)
    proto.connection_lost(SERVER, now=0.1)  # e.g. the reconnect failed: nothing was in flight
    assert proto.poll_completion() is None
    proto.handle_timeout(0.5)
    assert len(drain_transmits(proto)) == 1
    assert proto.is_pending(cid)


def test_timeout_still_applies_while_retrying() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_initial=0.4, jitter=0.0)
    proto = TransportProtocol(RequestResponseEnvelope, retry=policy)
    cid = proto.start_request(SERVER, b"", now=0.0, timeout=1.0)
    drain_transmits(proto)
    proto.connection_lost(SERVER, now=0.0)
    proto.handle_timeout(0.4)
    drain_transmits(proto)
    proto.handle_timeout(1.0)
    [completion] = drain_completions(proto)
    assert completion.correlation_id == cid
    assert isinstance(completion.error, TransportTimeout)
    assert "after 2 attempts" in str(completion.error)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(backoff_initial=0.05, backoff_max=2.0, jitter=0.0)
    rng = random.Random(0)
    assert [policy.backoff(n, rng) for n in (1, 2, 3, 4, 10, 5000)] == [
        0.05,
        0.1,
        0.2,
        0.4,
        2.0,
        2.0,
    ]
    jittered = RetryPolicy(backoff_initial=1.0, backoff_max=8.0, jitter=0.5)
    delays = [jittered.backoff(3, rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 100  # actually random
    # Deterministic given the same RNG state.
    assert [jittered.backoff(2, random.Random(5)) for _ in range(3)] == [
        jittered.backoff(2, random.Random(5))
    ] * 3


@given(
    attempt=st.integers(1, 100),
    initial=st.floats(0, 10),
    extra=st.floats(0, 100),
    jitter=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_backoff_bounds(
    attempt: int, initial: float, extra: float, jitter: float, seed: int
) -> None:
    policy = RetryPolicy(backoff_initial=initial, backoff_max=initial + extra, jitter=jitter)
    delay = policy.backoff(attempt, random.Random(seed))
    base = min(initial + extra, initial * 2.0 ** (attempt - 1))
    assert base * (1 - jitter) - 1e-9 <= delay <= base + 1e-9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1, got 0"),
        ({"backoff_initial": -1.0}, "need 0 <= backoff_initial <= backoff_max"),
        ({"backoff_initial": 3.0, "backoff_max": 2.0}, "backoff_initial=3.0, backoff_max=2.0"),
        ({"jitter": 1.5}, r"jitter must be within \[0, 1\], got 1.5"),
    ],
)
def test_retry_policy_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


# --------------------------------------------------------------------------- server mode


def test_serves_requests_mode_queues_every_envelope_and_replies_untracked() -> None:
    server = TransportProtocol(RequestResponseEnvelope, serves_requests=True)
    client = TransportProtocol(RequestResponseEnvelope)
    c1 = client.start_request(SERVER, b"PING1", now=0.0, timeout=5.0)
    c2 = client.start_request(SERVER, b"PING2", now=0.0, timeout=5.0)
    wire = b"".join(t.data for t in drain_transmits(client))
    server.handle_received("client-0:1", wire)
    received = []
    while (item := server.poll_receive()) is not None:
        received.append(item)
    assert [(src, env.payload) for src, env in received] == [
        ("client-0:1", b"PING1"),
        ("client-0:1", b"PING2"),
    ]
    assert server.poll_completion() is None
    back = [
        server.send(request.create_reply(request.payload.replace(b"PING", b"PONG")))
        for _, request in reversed(received)
    ]
    assert server.poll_transmit() is None  # replies are returned, never queued
    assert server.pending_count == 0
    assert server.stats.envelopes_sent == 2
    assert server.stats.bytes_sent == sum(map(len, back))
    client.handle_received(SERVER, b"".join(back))
    assert drain_completions(client) == [
        Completion(c2, b"PONG2", None),
        Completion(c1, b"PONG1", None),
    ]


def test_sources_have_independent_decoders() -> None:
    server = TransportProtocol(RequestResponseEnvelope, serves_requests=True)
    a = RR.serialize(RequestResponseEnvelope(correlation_id=1, payload=b"from-a"))
    b = RR.serialize(RequestResponseEnvelope(correlation_id=1, payload=b"from-b"))
    server.handle_received("a:1", a[:10])
    server.handle_received("b:1", b[:3])
    server.handle_received("a:1", a[10:])
    server.handle_received("b:1", b[3:])
    assert server.poll_receive() == (
        "a:1",
        RequestResponseEnvelope(correlation_id=1, payload=b"from-a"),
    )
    assert server.poll_receive() == (
        "b:1",
        RequestResponseEnvelope(correlation_id=1, payload=b"from-b"),
    )


# --------------------------------------------------------------------------- bad input


def test_bad_bytes_raise_after_good_envelopes_are_processed() -> None:
    proto = TransportProtocol(CheckedEnvelope)
    cid = proto.start_request(SERVER, b"", now=0.0, timeout=5.0)
    good = CK.serialize(CheckedEnvelope(kind=EnvelopeKind.REPLY, correlation_id=cid, payload=b"ok"))
    bad = bytearray(CK.serialize(CheckedEnvelope.create_request(9, b"x")))
    bad[-1] ^= 0xFF
    with pytest.raises(SerializationError, match="checksum"):
        proto.handle_received(SERVER, good + bytes(bad))
    assert drain_completions(proto) == [Completion(cid, b"ok", None)]
    assert proto.stats.protocol_errors == 1
    with pytest.raises(SerializationError, match="unusable"):
        proto.handle_received(SERVER, good)
    proto.connection_lost(SERVER, now=1.0)  # the driver closes the connection...
    cid2 = proto.start_request(SERVER, b"", now=1.0, timeout=5.0)
    good2 = CK.serialize(
        CheckedEnvelope(kind=EnvelopeKind.REPLY, correlation_id=cid2, payload=b"2")
    )
    proto.handle_received(SERVER, good2)  # ...and a new connection decodes from scratch
    assert drain_completions(proto) == [Completion(cid2, b"2", None)]


def test_oversize_frame_is_rejected_by_the_protocol() -> None:
    proto = TransportProtocol(RequestResponseEnvelope, max_frame_size=64)
    with pytest.raises(SerializationError, match="above the maximum frame size of 64"):
        proto.handle_received(SERVER, reply_bytes(1, b"x" * 100)[:12])


def test_unencodable_request_is_not_tracked() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    with pytest.raises(SerializationError):
        proto.start_request(SERVER, "text", now=0.0, timeout=1.0)  # type: ignore[arg-type]
    assert proto.pending_count == 0
    assert proto.poll_transmit() is None
    assert proto.poll_timeout() is None


# --------------------------------------------------------------------------- other envelope types


def test_checked_envelope_error_reply_becomes_remote_error() -> None:
    proto = TransportProtocol(CheckedEnvelope)
    cid = proto.start_request(SERVER, b"q", now=0.0, timeout=5.0)
    [transmit] = drain_transmits(proto)
    request = CK.deserialize(transmit.data)
    assert request.correlation_id == cid
    assert request.kind is EnvelopeKind.REQUEST
    proto.handle_received(SERVER, CK.serialize(request.create_error("no such key: q")))
    [completion] = drain_completions(proto)
    assert completion.payload is None
    assert isinstance(completion.error, RemoteError)
    assert "no such key: q" in str(completion.error)
    assert SERVER in str(completion.error)
    assert proto.stats.remote_errors == 1


def test_checked_envelope_request_with_pending_id_is_not_a_reply() -> None:
    proto = TransportProtocol(CheckedEnvelope)
    cid = proto.start_request(SERVER, b"q", now=0.0, timeout=5.0)
    proto.handle_received(SERVER, CK.serialize(CheckedEnvelope.create_request(cid, b"echo")))
    assert proto.poll_completion() is None
    assert proto.stats.dropped_replies == 1
    proto.handle_received(
        SERVER, CK.serialize(CheckedEnvelope.create_request(cid, b"").create_reply(b"r"))
    )
    assert drain_completions(proto) == [Completion(cid, b"r", None)]


# --------------------------------------------------------------------------- close


def test_close_fails_pending_and_rejects_new_work() -> None:
    proto = TransportProtocol(RequestResponseEnvelope)
    a = proto.start_request(SERVER, b"", now=0.0, timeout=5.0)
    b = proto.start_request(OTHER, b"", now=0.0, timeout=5.0)
    proto.close()
    proto.close()
    completions = drain_completions(proto)
    assert [c.correlation_id for c in completions] == [a, b]
    assert all(isinstance(c.error, TransportClosed) for c in completions)
    assert proto.poll_transmit() is None
    assert proto.poll_timeout() is None
    with pytest.raises(TransportClosed):
        proto.start_request(SERVER, b"", now=0.0, timeout=1.0)
    with pytest.raises(TransportClosed):
        proto.send(RequestResponseEnvelope(correlation_id=1, payload=b""))
    proto.handle_received(SERVER, reply_bytes(a, b""))  # ignored
    assert proto.poll_completion() is None


# --------------------------------------------------------------------------- model-based property


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["start", "reply", "lose", "tick", "cancel", "flush"]),
            st.integers(0, 30),
        ),
        max_size=80,
    )
)
def test_every_request_ends_exactly_once(ops: list[tuple[str, int]]) -> None:
    """Whatever happens, a request completes at most once, and only requests that
    were never cancelled complete; after the final deadline nothing is pending."""
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.1, jitter=0.5)
    proto = TransportProtocol(RequestResponseEnvelope, retry=policy, rng=random.Random(3))
    started: list[int] = []
    cancelled: set[int] = set()
    completed: list[int] = []
    now = 0.0
    for op, arg in ops:
        if op == "start":
            started.append(proto.start_request(SERVER, b"", now=now, timeout=1.0 + arg / 10))
        elif op == "reply" and started:
            proto.handle_received(SERVER, reply_bytes(started[arg % len(started)], b""))
        elif op == "lose":
            proto.connection_lost(SERVER, now=now)
        elif op == "tick":
            now += arg / 20
            proto.handle_timeout(now)
        elif op == "cancel" and started:
            cid = started[arg % len(started)]
            if proto.is_pending(cid):
                cancelled.add(cid)
            proto.cancel_request(cid)
        elif op == "flush":
            drain_transmits(proto)
        while (c := proto.poll_completion()) is not None:
            assert (c.payload is None) != (c.error is None)
            completed.append(c.correlation_id)
        timeout_at = proto.poll_timeout()
        assert timeout_at is None or timeout_at >= 0
    proto.handle_timeout(now + 1000)
    completed.extend(c.correlation_id for c in drain_completions(proto))
    assert len(completed) == len(set(completed))
    assert set(completed) | cancelled == set(started)
    assert not set(completed) & cancelled
    assert proto.pending_count == 0
    assert proto.poll_timeout() is None


def test_error_hierarchy() -> None:
    assert issubclass(TransportTimeout, TransportError)
    assert issubclass(ConnectionFailed, TransportError)
    assert issubclass(RemoteError, TransportError)


def test_connection_lost_drops_requests_not_yet_taken_from_that_source() -> None:
    """Good requests that preceded a bad frame cannot be answered; they must not linger."""
    server = TransportProtocol(RequestResponseEnvelope, serves_requests=True)
    ser = RequestResponseEnvelope.serializer()
    good = ser.serialize(RequestResponseEnvelope.create_request(1, b"ok"))
    other = ser.serialize(RequestResponseEnvelope.create_request(2, b"other"))
    server.handle_received("conn-b", other)
    with pytest.raises(FrameTooLarge):
        server.handle_received("conn-a", good + b"\x00" * 8 + b"\xff\xff\xff\xff")
    server.connection_lost("conn-a", now=0.0)
    item = server.poll_receive()
    assert item is not None and item[0] == "conn-b"
    assert server.poll_receive() is None
