"""Fairness per read (issue 14): one client's read is handled READ_BUDGET packets per
reactor turn, with its reads paused meanwhile, so a flood delays the others by one
share, not by a whole 64 KB read; nothing is reordered or lost.

These pin the shares of the general path (``inbound.on_publish`` bound, so no batch);
the batched shares of plain QoS 0 PUBLISHes (``core/qos0.read_share``, ``SHARE_WORK``)
are tested in tests/test_qos0_batch.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mqtt_twisted.codec import PubAck, Publish, encode
from mqtt_twisted.constants import PacketType
from mqtt_twisted.core import connection, inbound
from mqtt_twisted.core.connection import READ_BUDGET, WORK_BUDGET
from mqtt_twisted.testing import FakeClient, make_broker


@pytest.fixture(autouse=True)
def general_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(connection._HANDLERS, PacketType.PUBLISH, inbound.on_publish)
    yield


def setup():
    broker, clock = make_broker()
    sub = FakeClient(broker)
    sub.connect("sub")
    sub.subscribe("t", qos=1)
    pub = FakeClient(broker)
    pub.connect("pub")
    return broker, clock, sub, pub


def flood(count: int, qos: int = 0) -> bytes:
    return b"".join(encode(Publish("t", b"%d" % i, qos, False, False, i + 1 if qos else None))
                    for i in range(count))


def payloads(packets: list) -> list[bytes]:
    return [p.payload for p in packets if isinstance(p, Publish)]


def test_one_read_is_handled_a_budget_per_turn_in_order() -> None:
    """A share: as many packets as fit WORK_BUDGET at their fan-out (here one delivery
    each: two units a packet), at most READ_BUDGET."""
    _, clock, sub, pub = setup()
    count = READ_BUDGET * 3 + 10
    pub.send_bytes(flood(count))
    share = WORK_BUDGET // 2
    assert len(payloads(sub.received())) == share  # one share this turn
    assert pub.transport.reading is False  # the rest waits in the decoder, not the socket
    clock.advance(0)  # the next turns
    assert payloads(sub.received()) == [b"%d" % i for i in range(share, count)]
    assert pub.transport.reading is True


def test_qos1_acks_stay_in_order_across_turns() -> None:
    _, clock, sub, pub = setup()
    count = READ_BUDGET * 2 + 1
    pub.send_bytes(flood(count, qos=1))
    clock.advance(0)
    acks = [p.packet_id for p in pub.received() if isinstance(p, PubAck)]
    assert acks == list(range(1, count + 1))
    got = payloads(sub.received())  # as many as the subscriber's in-flight window takes
    assert got == [b"%d" % i for i in range(len(got))]


def test_data_arriving_between_shares_goes_after_the_rest() -> None:
    """A transport that cannot pause (or had bytes in flight) still keeps the order."""
    _, clock, sub, pub = setup()
    pub.send_bytes(flood(READ_BUDGET + 5))
    pub.send_bytes(encode(Publish("t", b"last")))
    clock.advance(0)
    got = payloads(sub.received())
    assert len(got) == READ_BUDGET + 6
    assert got[-1] == b"last"
    assert got[:-1] == [b"%d" % i for i in range(READ_BUDGET + 5)]


def test_flow_control_hold_back_outlives_the_shares() -> None:
    """Both pause reading through one counter: the last share does not resume a
    publisher that a full subscriber still holds back."""
    _, clock, sub, pub = setup()
    sub.connection.pauseWriting()
    pub.send_bytes(flood(READ_BUDGET * 2))
    clock.advance(0)
    assert pub.transport.reading is False  # held back by the full subscriber
    sub.connection.resumeWriting()
    assert pub.transport.reading is True


def test_bad_packet_after_the_budget_closes_after_the_good_ones() -> None:
    _, clock, sub, pub = setup()
    pub.send_bytes(flood(READ_BUDGET + 3) + bytes((0x36, 2, 0, 0)))  # QoS 3: malformed
    assert not pub.transport.closed
    clock.advance(0)
    assert len(payloads(sub.received())) == READ_BUDGET + 3
    assert pub.transport.closed


def test_lost_connection_handles_its_last_read_then_ends() -> None:
    """A client gone with a read's shares still to handle (a reset right after a burst)
    sent them before it went: they are handled, a share a turn, then the connection
    ends (its will, its session detached), and nothing is left behind (trial's clean
    reactor).  Before, the transport's loss dropped them with the pending share."""
    broker, clock, sub, pub = setup()
    count = READ_BUDGET * 2
    pub.send_bytes(flood(count))
    first = len(payloads(sub.received()))
    assert 0 < first < count
    pub.drop()
    assert pub.connection in broker.connections  # not ended yet: input left
    for _ in range(10):
        clock.advance(0)
    assert first + len(payloads(sub.received())) == count
    assert pub.connection not in broker.connections
    assert not clock.getDelayedCalls()


def test_closed_connection_cancels_its_next_share() -> None:
    """A connection the broker closes (here a protocol error after the flood) drops what
    it had not handled: no later share is handled, none is left scheduled."""
    _, clock, sub, pub = setup()
    pub.send_bytes(flood(READ_BUDGET * 2))
    first = len(payloads(sub.received()))
    pub.connection.close()
    clock.advance(0)
    assert not payloads(sub.received())
    assert first < READ_BUDGET * 2
    assert pub.connection._resume_call is None  # (its close grace is the one call left)


def test_budget_bounds_the_decoding_too(monkeypatch) -> None:
    """A budget of 1: one packet decoded per turn (decoding is half a flood's cost)."""
    monkeypatch.setattr(connection, "READ_BUDGET", 1)
    _, clock, sub, pub = setup()
    pub.send_bytes(flood(3))
    assert pub.connection.decoder.buffered == len(flood(3)) - len(flood(1))
    clock.advance(0)
    assert payloads(sub.received()) == [b"0", b"1", b"2"]


def test_fan_out_sizes_the_share() -> None:
    """A PUBLISH that reaches ten subscribers is eleven units of WORK_BUDGET: the first
    packet's fan-out sizes the rest of its share (before, the first share of a read was
    READ_BUDGET packets whatever their fan-out: with 500 SSE streams subscribed,
    128,000 deliveries and 1.6 s of CPU in one turn), the next shares hold as many,
    and all arrive in order."""
    broker, clock = make_broker()
    subs = []
    for i in range(10):
        sub = FakeClient(broker)
        sub.connect(f"sub{i}")
        sub.subscribe("t")
        subs.append(sub)
    pub = FakeClient(broker)
    pub.connect("pub")
    count = READ_BUDGET + 100
    pub.send_bytes(flood(count))
    share = 1 + (WORK_BUDGET - 11) // 11  # the first packet, then what fits
    assert len(payloads(subs[0].received())) == share
    assert broker.stats.deliveries <= WORK_BUDGET + 10  # (+ the SUBSCRIBEs' nothing)
    assert pub.connection._budget == WORK_BUDGET // 11
    clock.advance(0)
    assert payloads(subs[0].received()) == [b"%d" % i for i in range(share, count)]
    assert pub.transport.reading is True


def test_budget_grows_back_without_fan_out() -> None:
    _, clock, sub, pub = setup()
    sub.disconnect()  # nobody subscribes any more: one unit a packet
    pub.connection._budget = 1
    pub.send_bytes(flood(3))
    clock.advance(0)
    assert pub.connection._budget == READ_BUDGET


def test_backlog_held_by_connect_is_handled_a_share_per_turn() -> None:
    """PUBLISHes sent behind a CONNECT that completes later (held meanwhile) are handled
    WORK_BUDGET a turn too, in order (before: all at once, 256 packets x their fan-out:
    1.3 s of one turn with 500 SSE streams subscribed)."""
    broker, clock = make_broker()
    subs = []
    for i in range(10):
        sub = FakeClient(broker)
        sub.connect(f"sub{i}")
        sub.subscribe("t")
        subs.append(sub)
    pub = FakeClient(broker)
    pub.connect("pub")
    conn = pub.connection
    conn.block()  # as while a CONNECT waits for its authenticator or store
    pub.send_bytes(flood(100))
    assert payloads(subs[0].received()) == []
    before = broker.stats.deliveries
    conn.unblock()
    first = payloads(subs[0].received())
    assert 0 < len(first) < 100
    assert broker.stats.deliveries - before <= WORK_BUDGET + 10
    assert pub.transport.reading is False
    clock.advance(0)
    assert first + payloads(subs[0].received()) == [b"%d" % i for i in range(100)]
    assert pub.transport.reading is True and not clock.getDelayedCalls()


def test_a_share_stops_at_the_work_budget_whatever_its_size() -> None:
    """A share sized from a first packet that fanned out to nothing (a PINGREQ, as a
    CONNECT would) stops once its deliveries pass WORK_BUDGET; the rest follows, in
    order, next turn."""
    broker, clock = make_broker()
    pub = FakeClient(broker)
    pub.connect("pub")
    pub.send_bytes(flood(10))  # nobody subscribes: the next share may be READ_BUDGET
    subs = []
    for i in range(50):
        sub = FakeClient(broker)
        sub.connect(f"sub{i}")
        sub.subscribe("t")
        subs.append(sub)
    assert pub.connection._budget == READ_BUDGET
    before = broker.stats.deliveries
    pub.send_bytes(b"\xc0\x00" + flood(100))  # PINGREQ first
    first = payloads(subs[0].received())
    assert 0 < len(first) < 100
    assert broker.stats.deliveries - before <= WORK_BUDGET + 50
    clock.advance(0)
    assert first + payloads(subs[0].received()) == [b"%d" % i for i in range(100)]
    assert pub.transport.reading is True and not clock.getDelayedCalls()
