"""Sessions left behind: how long a session outlives its client, and how many the
broker holds (issue 14: a fuzzer left thousands of persistent sessions, which v3.1.1
kept forever).  Sans-IO, on a clock; docs/limits.md."""

from __future__ import annotations

from mqtt_twisted.codec import ConnAck
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core import inspection
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.store.memory import StoredSession
from mqtt_twisted.tap import Options, broker_settings
from mqtt_twisted.testing import FakeClient, make_broker

TWO_HOURS = 7200


def connack(packets: list) -> ConnAck:
    return next(p for p in packets if isinstance(p, ConnAck))


def left_behind(broker, client_id: str, version: int = 4, **kwargs) -> list:
    c = FakeClient(broker, version)
    got = c.connect(client_id, clean=False, **kwargs)
    c.drop()
    return got


def test_defaults() -> None:
    """Sessions outlive their clients by at most 2 h (EMQX's default), and the broker
    holds at most 100,000 before it refuses new persistent ones."""
    settings = BrokerSettings()
    assert (settings.max_session_expiry, settings.max_sessions) == (TWO_HOURS, 100_000)
    options = Options()
    options.parseOptions([])
    assert broker_settings(options).max_session_expiry == TWO_HOURS
    options = Options()
    options.parseOptions(["--max-session-expiry", "4294967295", "--max-sessions", "0"])
    settings = broker_settings(options)
    assert (settings.max_session_expiry, settings.max_sessions) == (None, 0)


def test_v311_persistent_session_expires_after_the_maximum() -> None:
    """A clean-session-0 v3.1.1 session, which nothing told to expire, is gone 2 h
    after its client (it was kept forever)."""
    broker, clock = make_broker()
    left_behind(broker, "v3")
    clock.advance(TWO_HOURS - 1)
    assert "v3" in inspection.session_ids(broker)
    clock.advance(1)
    assert "v3" not in inspection.session_ids(broker)


def test_persistent_session_expiry_is_capped_too() -> None:
    """--persistent-session-expiry above the maximum gets the maximum; below it, its own."""
    broker, clock = make_broker(BrokerSettings(persistent_session_expiry=10**6,
                                               max_session_expiry=60))
    left_behind(broker, "long")
    clock.advance(60)
    assert "long" not in inspection.session_ids(broker)
    broker, clock = make_broker(BrokerSettings(persistent_session_expiry=5))
    left_behind(broker, "short")
    clock.advance(5)
    assert "short" not in inspection.session_ids(broker)


def test_v5_client_asking_for_more_is_told_the_maximum() -> None:
    """A v5 client asking for 'never' gets 7200 in CONNACK's Session Expiry Interval
    [MQTT-3.2.2.3.2], and its session ends then; one asking for less is not told."""
    broker, clock = make_broker()
    got = connack(left_behind(broker, "never", 5,
                              properties={P.SESSION_EXPIRY_INTERVAL: 0xFFFFFFFF}))
    assert got.properties[P.SESSION_EXPIRY_INTERVAL] == TWO_HOURS
    got = connack(left_behind(broker, "hour", 5, properties={P.SESSION_EXPIRY_INTERVAL: 3600}))
    assert P.SESSION_EXPIRY_INTERVAL not in got.properties
    clock.advance(TWO_HOURS)
    assert not inspection.session_ids(broker) & {"never", "hour"}


def test_restored_sessions_get_the_maximum() -> None:
    """A session stored without an expiry (before the maximum existed) is restored
    with the maximum."""
    broker, clock = make_broker()
    state = StoredSession("old")
    state.expiryInterval, state.disconnectedAt = None, 0.0
    broker.restore_session(state)
    clock.advance(TWO_HOURS)
    assert "old" not in inspection.session_ids(broker)


def test_new_persistent_sessions_beyond_max_sessions_are_refused() -> None:
    """At max_sessions a new persistent session is refused, v5 with 0x97 Quota exceeded
    and v3.1.1 with 0x03 Server unavailable, and counted; clean sessions still connect,
    and a held session is resumed."""
    broker, _ = make_broker(BrokerSettings(max_sessions=2))
    left_behind(broker, "a")
    left_behind(broker, "b", 5, properties={P.SESSION_EXPIRY_INTERVAL: 60})
    v5 = connack(left_behind(broker, "c5", 5, properties={P.SESSION_EXPIRY_INTERVAL: 60}))
    assert v5.reason_code == ReasonCode.QUOTA_EXCEEDED
    assert "2 sessions held" in v5.properties[P.REASON_STRING]
    assert connack(left_behind(broker, "c3")).reason_code == 3
    assert broker.stats.limit_hits["sessions"] == 2
    assert inspection.session_ids(broker) == {"a", "b"}
    clean = FakeClient(broker, 4)
    assert connack(clean.connect("clean")).reason_code == 0
    clean5 = FakeClient(broker, 5)
    assert connack(clean5.connect("clean5", clean=False)).reason_code == 0  # expiry 0
    back = FakeClient(broker, 4)
    resumed = connack(back.connect("a", clean=False))
    assert (resumed.reason_code, resumed.session_present) == (0, True)


def test_session_quota_frees_as_sessions_expire() -> None:
    """A refused client gets in once a left-behind session has expired."""
    broker, clock = make_broker(BrokerSettings(max_sessions=1, max_session_expiry=30))
    left_behind(broker, "a")
    assert connack(left_behind(broker, "b")).reason_code == 3
    clock.advance(30)
    assert connack(left_behind(broker, "b")).reason_code == 0


def test_zero_means_no_session_limit() -> None:
    """max_sessions 0: no limit."""
    broker, _ = make_broker(BrokerSettings(max_sessions=0))
    for i in range(50):
        left_behind(broker, f"s{i}")
    assert len(inspection.session_ids(broker)) == 50
