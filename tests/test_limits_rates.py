"""Message and byte rates per client (--max-client-rate, --max-client-bytes-rate):
token buckets charged once per read; an over-rate client is paused by not reading from
it, a v5 client 10 s past its rate gets DISCONNECT 0x96 (docs/limits.md)."""

from __future__ import annotations

from mqtt_twisted.codec import Disconnect, Publish, encode
from mqtt_twisted.core.rates import HARD_DEBT, ClientRate
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker


def setup(version: int = 4, **limits):
    broker, clock = make_broker(BrokerSettings(**limits))
    sub = FakeClient(broker)
    sub.connect("sub")
    sub.subscribe("t")
    pub = FakeClient(broker, version)
    pub.connect("pub")
    return broker, clock, sub, pub


def burst(count: int, version: int = 4, payload: bytes = b"x") -> bytes:
    return encode(Publish("t", payload), version) * count


def delivered(sub: FakeClient) -> int:
    return sum(isinstance(p, Publish) for p in sub.received())


def test_over_the_message_rate_pauses_reads_until_the_debt_is_paid() -> None:
    broker, clock, sub, pub = setup(max_client_rate=100)
    pub.send_bytes(burst(150))  # a second's burst (100) and 50 more: 0.5 s of debt
    clock.advance(0)  # the read's next share (fairness per read: WORK_BUDGET)
    assert pub.transport.reading is False
    assert delivered(sub) == 150  # what was read is handled: nothing lost
    clock.advance(0.49)
    assert pub.transport.reading is False
    clock.advance(0.02)
    assert pub.transport.reading is True
    assert broker.stats.rate_pauses == 1


def test_within_the_rate_never_pauses() -> None:
    broker, clock, sub, pub = setup(max_client_rate=100)
    for _ in range(20):
        pub.send_bytes(burst(90))
        assert pub.transport.reading is True
        clock.advance(1.0)
    assert delivered(sub) == 1800
    assert broker.stats.rate_pauses == 0


def test_off_by_default() -> None:
    _broker, clock, _sub, pub = setup()
    assert pub.connection._rate is None
    pub.send_bytes(burst(200))
    clock.advance(0)
    assert pub.transport.reading is True


def test_byte_rate_counts_what_is_read() -> None:
    _, clock, sub, pub = setup(max_client_bytes_rate=1000)
    pub.send_bytes(burst(1, payload=b"x" * 3000))  # ~3 KB at 1 KB/s: ~2 s of debt
    assert pub.transport.reading is False
    clock.advance(1.9)
    assert pub.transport.reading is False
    clock.advance(0.2)
    assert pub.transport.reading is True
    assert delivered(sub) == 1


def test_v5_client_far_past_its_rate_gets_0x96() -> None:
    broker, clock, _sub, pub = setup(5, max_client_rate=100)
    pub.send_bytes(burst(int(100 * (HARD_DEBT + 2)), version=5))
    clock.advance(0)  # the rest of the read, a budget a turn
    answers = pub.received()
    assert isinstance(answers[-1], Disconnect)
    assert answers[-1].reason_code == 0x96
    assert pub.transport.closed
    assert broker.stats.rate_disconnects == 1


def test_v3_client_far_past_its_rate_is_only_paused() -> None:
    """A v3 client cannot be told why: it is paused for its whole debt, then read again."""
    _, clock, sub, pub = setup(4, max_client_rate=100)
    pub.send_bytes(burst(1200))  # 11 s of debt
    clock.advance(0)
    assert not pub.transport.closed
    assert pub.transport.reading is False
    clock.advance(10.9)
    assert pub.transport.reading is False
    clock.advance(0.2)
    assert pub.transport.reading is True
    assert delivered(sub) == 1200


def test_rate_pause_and_flow_control_share_one_counter() -> None:
    """A full subscriber still holds the publisher back when its rate pause ends."""
    _, clock, sub, pub = setup(max_client_rate=100)
    sub.connection.pauseWriting()
    pub.send_bytes(burst(150))
    clock.advance(1.0)
    assert pub.transport.reading is False  # flow control: the subscriber is full
    sub.connection.resumeWriting()
    assert pub.transport.reading is True


def test_closing_cancels_the_pause() -> None:
    _, clock, _sub, pub = setup(max_client_rate=100)
    pub.send_bytes(burst(150))
    pub.drop()
    assert not clock.getDelayedCalls()


def test_bucket_refills_at_most_a_second_worth() -> None:
    bucket = ClientRate(10, 0, now=0.0)
    assert bucket.charge(10, 0, 0.0) == 0
    assert bucket.charge(0, 0, 100.0) == 0  # idle for 100 s: still a 10-message burst
    assert bucket.charge(15, 0, 100.0) == 0.5
