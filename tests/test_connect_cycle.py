"""A connect cycle's shortcuts (docs/benchmarks.md, "Eighth pass") answer as the long
way did: the CONNACK's bytes, a client that cannot take it, the end of a connection
told to the broker once, the memory store's lock handed to a waiter."""

from __future__ import annotations

from typing import Any

from mqtt_twisted.codec import encode
from mqtt_twisted.codec.packets import ConnAck
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.testing import FakeClient, make_broker


def test_a_connack_without_properties_is_the_encoded_one() -> None:
    """v3.1 and v3.1.1, new and resumed sessions (v5's here carries the broker's
    limits as properties: built and encoded as before)."""
    broker, _ = make_broker()
    for version in (3, 4):
        for present in (False, True):
            client = FakeClient(broker, version)
            client_id = f"v{version}"
            if present:  # (a stored session to resume)
                first = FakeClient(broker, version)
                first.connect(client_id, clean=False)
                first.drop()
            written = len(client.transport.written)
            client.connect(client_id, clean=not present)
            sent = bytes(client.transport.written[written:])
            assert sent == encode(ConnAck(present and version > 3, 0, {}), version), (
                version, present, sent)
            client.disconnect()


def test_a_client_that_cannot_take_the_connack_is_not_connected() -> None:
    """A v5 client with a maximum packet size of 4: the CONNACK is 5 bytes, so it is
    not sent and the client is not connected [MQTT-3.1.2-24]."""
    broker, _ = make_broker()
    client = FakeClient(broker, 5)
    assert client.connect("tiny", properties={P.MAXIMUM_PACKET_SIZE: 4}) == []
    assert client.transport.written == bytearray() or not client.transport.written
    assert "tiny" not in broker.sessions
    assert broker.stats.protocol_errors == 1


def test_a_disconnect_ends_the_connection_once(monkeypatch: Any) -> None:
    """DISCONNECT ends the connection (will, session) from ``_shut``; the transport's
    loss that follows does not tell the broker again."""
    broker, _ = make_broker()
    ended: list[Any] = []
    original = broker.connection_ended
    monkeypatch.setattr(broker, "connection_ended",
                        lambda conn, send_will: (ended.append(conn), original(conn, send_will)))
    client = FakeClient(broker)
    client.connect("once")
    client.disconnect()  # (DISCONNECT, then the transport's connectionLost)
    assert ended == [client.connection]
    assert len(broker.connections) == 0
    dropped = FakeClient(broker)  # (lost without DISCONNECT: told once, from the loss)
    dropped.connect("lost")
    dropped.drop()
    assert ended == [client.connection, dropped.connection]
    assert "lost" not in broker.sessions


def test_the_memory_lock_goes_to_a_waiter_then_away() -> None:
    store = MemoryStore()
    held = store.takeLockNow("c")
    assert held is not None and store.takeLockNow("c") is None
    waiting = store.acquireLock("c", 0)
    assert not waiting.called
    held.releaseNow()
    second = waiting.result  # (handed over at once)
    assert "c" in store._locks
    second.releaseNow()
    assert "c" not in store._locks
    third = store.takeLockNow("c")
    assert third is not None
    third.releaseNow()
    assert "c" not in store._locks
