"""The memory store's synchronous twins of ``acquireLock`` and ``deleteSession``
(``takeLockNow``, ``deleteSessionNow``), which a CONNECT and a clean session's end
call without a Deferred: the same lock and the same deletion as the Deferred calls,
and no twin where a subclass or a wrapper changes the call."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.cluster.node import _HomeKeeper
from mqtt_twisted.store.memory import MemoryStore, StoredSession
from mqtt_twisted.store.overlay import SysRetainedOverlay
from mqtt_twisted.testing import FakeClient, make_broker


class TwinTests(SynchronousTestCase):
    """takeLockNow and deleteSessionNow against acquireLock and deleteSession."""

    def test_take_lock_now_is_the_lock_acquire_lock_waits_for(self) -> None:
        """Taken at once when free; None while held; a waiting acquireLock gets it once
        the held one is released, and the lock is free again after that."""
        store = MemoryStore(Clock())
        held = store.takeLockNow("c1")
        self.assertIsNotNone(held)
        self.assertIsNone(store.takeLockNow("c1"))
        waiting = store.acquireLock("c1", 5)
        self.assertNoResult(waiting)
        held.release()
        second = self.successResultOf(waiting)
        self.assertIsNone(store.takeLockNow("c1"))
        second.release()
        third = store.takeLockNow("c1")
        self.assertIsNotNone(third)
        third.releaseNow()  # (release without its Deferred: free at once)
        third.releaseNow()  # (once only)
        self.assertIsNotNone(store.takeLockNow("c1"))
        self.assertIsNotNone(store.takeLockNow("c2"))  # (one lock per client id)

    def test_delete_session_now_forgets_the_session(self) -> None:
        """As deleteSession: the stored session and its records are gone."""
        store = MemoryStore()
        store.saveSession(StoredSession("c1"))
        store.deleteSessionNow("c1")
        self.assertIsNone(self.successResultOf(store.loadSession("c1")))
        store.deleteSessionNow("never-saved")  # (no error)

    def test_no_twin_where_the_call_is_changed(self) -> None:
        """A subclass that overrides the Deferred call has no twin; the $SYS overlay
        passes the twins on; the cluster's wrapper has no deleteSessionNow (its
        deleteSession tells the node)."""

        class Slow(MemoryStore):
            def acquireLock(self, clientId: str, timeout: float) -> Deferred[Any]:
                return super().acquireLock(clientId, timeout)

            def deleteSession(self, clientId: str) -> Deferred[None]:
                return super().deleteSession(clientId)

        slow = Slow()
        self.assertEqual((slow.takeLockNow, slow.deleteSessionNow), (None, None))
        self.assertIsNone(getattr(SysRetainedOverlay(slow), "takeLockNow", None))
        overlay = SysRetainedOverlay(MemoryStore())
        self.assertIsNotNone(overlay.takeLockNow("c"))
        self.assertIsNone(_HomeKeeper(overlay, None).deleteSessionNow)

    def test_a_clean_session_ends_without_the_deferred_call(self) -> None:
        """CONNECT and a clean session's end on a memory store call the twins, not
        acquireLock and deleteSession; the lock is free again after the CONNECT."""
        broker, _ = make_broker()
        calls: list[str] = []
        store = broker.store

        def counted(name: str) -> Any:
            real = getattr(store, name)

            def deferred(*args: Any) -> Any:
                calls.append(name)
                return real(*args)
            return deferred

        for name in ("acquireLock", "deleteSession"):
            setattr(store, name, counted(name))
        client = FakeClient(broker)
        client.connect("clean")
        client.disconnect()
        self.assertEqual(calls, [])
        self.assertNotIn("clean", broker.sessions)
        self.assertIsNotNone(store.takeLockNow("clean"))
