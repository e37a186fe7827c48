"""What a CONNECT and a DISCONNECT write to a store that persists messages.

The broker writes each subscription, queued or in-flight message and QoS 2 id as it
changes; at CONNECT and DISCONNECT only the session's own fields change, so a store
providing ``ISessionInfoStore`` gets ``saveSessionInfo`` there, and the whole session
only when it has never had it from this process or a write failed since
(``Journal.save_session``).  Every copy the broker stops holding is removed from the
store, since no whole save comes along to do it.  Sans-IO, on a recording memory store;
``tests/test_store_redis_link.py`` runs the Redis side for real.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import StorageError
from mqtt_twisted.interfaces import ISessionInfoStore
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.store.overlay import SysRetainedOverlay
from mqtt_twisted.testing import FakeClient, make_broker


class DurableStore(MemoryStore):
    """The memory store made to look like a network store: the broker writes every
    message to it; each write is recorded by name."""

    persistsMessages = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []
        self.fail_next: str | None = None

    def _record(self, name: str, arg: Any, result: Deferred[None]) -> Deferred[None]:
        self.calls.append((name, arg))
        if self.fail_next == name:
            self.fail_next = None
            return fail(StorageError("down"))
        return result

    def saveSession(self, state: Any) -> Deferred[None]:
        return self._record("saveSession", state.clientId, super().saveSession(state))

    def storeOutbound(self, clientId: str, outbound: Any) -> Deferred[None]:
        return self._record("storeOutbound", outbound.seq,
                            super().storeOutbound(clientId, outbound))

    def removeOutbound(self, clientId: str, seq: int) -> Deferred[None]:
        return self._record("removeOutbound", seq, super().removeOutbound(clientId, seq))

    def names(self, *wanted: str) -> list[str]:
        return [name for name, _ in self.calls if not wanted or name in wanted]

    def stored_seqs(self, client_id: str) -> list[int]:
        return sorted(self._outbound.get(client_id, {}))


@implementer(ISessionInfoStore)
class InfoStore(DurableStore):
    """A durable store that can save a session's own fields alone."""

    def saveSessionInfo(self, state: Any) -> Deferred[None]:
        stored = self._sessions.get(state.clientId)
        if stored is not None:
            stored.expiryInterval = state.expiryInterval
            stored.disconnectedAt = state.disconnectedAt
        return self._record("saveSessionInfo", state.clientId, succeed(None))


SAVES = ("saveSession", "saveSessionInfo")


class SessionSaveTests(SynchronousTestCase):

    def broker(self, store: DurableStore, **settings: Any) -> Any:
        broker, self.clock = make_broker(BrokerSettings(**settings), store=store)
        return broker

    def reconnect(self, broker: Any, times: int) -> FakeClient:
        sub = FakeClient(broker)
        sub.connect("sub", clean=False)
        sub.subscribe("t/#", qos=1)
        for _ in range(times):
            sub.disconnect()
            sub = FakeClient(broker)
            sub.connect("sub", clean=False)
        return sub

    def test_reconnects_save_the_fields_only(self) -> None:
        """The first CONNECT saves the session whole; DISCONNECT and CONNECT after it
        save its own fields (the subscription went in by its own write)."""
        store = InfoStore()
        self.reconnect(self.broker(store), 2)
        self.assertEqual(store.names(*SAVES), ["saveSession"] + ["saveSessionInfo"] * 4)

    def test_a_failed_write_makes_the_next_save_whole(self) -> None:
        """A write that failed may have left the store behind: the next CONNECT or
        DISCONNECT saves the session whole, then the fields alone again."""
        store = InfoStore()
        broker = self.broker(store)
        sub = self.reconnect(broker, 0)
        sub.disconnect()
        store.fail_next = "storeOutbound"
        pub = FakeClient(broker)
        pub.connect("pub")
        pub.publish("t/1", b"x", qos=1)  # queued for "sub"; its write fails
        del store.calls[:]
        sub = FakeClient(broker)
        sub.connect("sub", clean=False)
        sub.disconnect()
        self.assertEqual(store.names(*SAVES), ["saveSession", "saveSessionInfo"])

    def test_through_the_sys_overlay(self) -> None:
        """The service wraps every store in the $SYS retained overlay: it passes the
        interface on (without it every save was whole again)."""
        store = InfoStore()
        overlay = SysRetainedOverlay(store)
        self.assertTrue(ISessionInfoStore.providedBy(overlay))
        self.assertFalse(ISessionInfoStore.providedBy(SysRetainedOverlay(DurableStore())))
        self.reconnect(self.broker(overlay), 1)
        self.assertEqual(store.names(*SAVES), ["saveSession"] + ["saveSessionInfo"] * 2)

    def test_a_store_without_the_interface_gets_whole_saves(self) -> None:
        store = DurableStore()
        self.reconnect(self.broker(store), 2)
        self.assertEqual(store.names(*SAVES), ["saveSession"] * 5)

    def test_dropped_copies_are_removed_from_the_store(self) -> None:
        """A full queue drops its oldest messages: their stored copies go too, so the
        store holds what the broker holds."""
        store = InfoStore()
        broker = self.broker(store, max_queued=3)
        self.reconnect(broker, 0).disconnect()
        pub = FakeClient(broker)
        pub.connect("pub")
        for i in range(8):
            pub.publish("t/1", b"%d" % i, qos=1, packet_id=i + 1)
        session = broker.sessions["sub"]
        held = sorted(out.seq for out in session.outbound)
        self.assertEqual(len(held), 3)
        self.assertEqual(store.stored_seqs("sub"), held)
        self.assertEqual(len(store.names("removeOutbound")), 5)

    def test_a_message_larger_than_the_queue_is_not_stored(self) -> None:
        """A message over the whole queue's byte limit is dropped, never held, and so
        never written."""
        store = InfoStore()
        broker = self.broker(store, max_queued_bytes=100)
        self.reconnect(broker, 0).disconnect()
        pub = FakeClient(broker)
        pub.connect("pub")
        pub.publish("t/1", b"x" * 500, qos=1, packet_id=1)
        self.assertEqual(broker.sessions["sub"].outbound, [])
        self.assertEqual(store.names("storeOutbound"), [])
        self.assertEqual(store.stored_seqs("sub"), [])
