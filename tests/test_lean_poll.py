"""The epoll loop of the lean MQTT listeners (``adapters/_leanpoll.py``) and the end of
a reactor turn it runs itself (``turns.py``)."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mqtt_twisted import turns
from mqtt_twisted.adapters import _leanpoll
from mqtt_twisted.codec import Disconnect, Publish
from mqtt_twisted.core.settings import BrokerSettings
from tests.pahoclient import BrokerTestCase, connect_raw


class EndOfTurnTests(SynchronousTestCase):
    """``turns.after_turn`` with and without a loop that runs the work itself."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.done: list[Any] = []

    def test_outside_the_loop_the_work_gets_one_call_later(self) -> None:
        turns.after_turn(self.clock, self.done.append, 1)
        turns.after_turn(self.clock, self.done.append, 2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.done, [1, 2])

    def test_inside_the_loop_nothing_is_scheduled(self) -> None:
        """While the loop handles events, the work waits for it, not for a
        ``callLater(0)``; what the work leaves (a close's log line) runs in the
        same pass."""
        turns.handling_events(self.clock)
        turns.after_turn(self.clock, lambda _: turns.after_turn(
            self.clock, self.done.append, "left by the work"), None)
        turns.after_turn(self.clock, self.done.append, "work")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.done, [])
        turns.run_due(self.clock)
        self.assertEqual(self.done, ["work", "left by the work"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        turns.after_turn(self.clock, self.done.append, "after the loop")  # (scheduled)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_work_that_keeps_leaving_work_goes_on_at_the_next_turn(self) -> None:
        """A few rounds in the pass at most; the rest is given a ``callLater(0)``."""
        def again(n: int) -> None:
            self.done.append(n)
            if n < 4:
                turns.after_turn(self.clock, again, n + 1)

        turns.handling_events(self.clock)
        turns.after_turn(self.clock, again, 0)
        turns.run_due(self.clock)
        self.assertEqual(self.done, [0, 1, 2, 3])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.done, [0, 1, 2, 3, 4])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LeanMainLoopTests(SynchronousTestCase):
    """The loop of a reactor the lean loop was installed in before it ran (as twistd's
    listeners start before ``run``): ``_leanpoll._main_loop``."""

    def setUp(self) -> None:
        if _leanpoll.EPollReactor is None:
            raise SkipTest("no epoll")
        self.reactor = _leanpoll.EPollReactor()  # (its own, not the tests' reactor)
        self.addCleanup(self._close)
        self.assertTrue(_leanpoll.install(self.reactor))

    def _close(self) -> None:
        reactor = self.reactor
        for reader in list(getattr(reactor, "_internalReaders", ())):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        for call in reactor.getDelayedCalls():
            call.cancel()
        reactor._poller.close()

    def test_timed_and_thread_calls_run_and_an_error_is_logged(self) -> None:
        """Timed calls (one moved later), a thread's call and a stop all run; what a
        pass raises is logged and the loop goes on, as ``with _topHandler`` did."""
        reactor = self.reactor
        self.assertIs(reactor.mainLoop.__func__, _leanpoll._main_loop)
        ran: list[str] = []
        iteration = reactor.doIteration

        def failing_once(timeout: Any) -> None:
            reactor.doIteration = iteration
            raise ZeroDivisionError("a bug in a pass")

        def note(what: str) -> None:
            ran.append(what)
            if len(ran) == 3:
                reactor.stop()

        reactor.callLater(0, setattr, reactor, "doIteration", failing_once)
        reactor.callLater(0.01, note, "timed")
        reactor.callLater(0.01, note, "later").delay(0.02)
        reactor.callLater(0.01, lambda: threading.Thread(
            target=reactor.callFromThread, args=(note, "thread")).start())
        stuck = reactor.callLater(10, reactor.stop)
        reactor.run(installSignalHandlers=False)
        self.assertTrue(stuck.active())
        self.assertEqual(sorted(ran), ["later", "thread", "timed"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_replaced_steps_are_still_called(self) -> None:
        """A ``runUntilCurrent`` or ``timeout`` replaced after the install and before
        ``run`` (a probe, a test) is called each pass rather than tested inline."""
        reactor = self.reactor
        passes: list[str] = []
        run, timeout = reactor.runUntilCurrent, reactor.timeout
        reactor.runUntilCurrent = lambda: (passes.append("run"), run())[1]
        reactor.timeout = lambda: (passes.append("timeout"), timeout())[1]
        reactor.callLater(0.01, reactor.stop)
        reactor.run(installSignalHandlers=False)
        self.assertIn("run", passes)
        self.assertIn("timeout", passes)


class LeanPollTests(BrokerTestCase):
    settings = BrokerSettings()

    @inlineCallbacks
    def test_lean_events_are_handled_without_a_log_context(self) -> Any:
        """The reactor runs the lean loop once a plain TCP MQTT listener serves: a
        connection's events reach it without ``callWithLogger`` (which asks the
        transport for its ``logPrefix`` on every event), and packets still flow."""
        if not _leanpoll.install(self.reactor):
            self.skipTest("not Twisted's epoll reactor")
        self.assertIs(self.reactor.doIteration.__func__, _leanpoll._poll)
        client = yield connect_raw(self.reactor, self.port)
        yield client.connect("poll-1")
        [conn] = [c for c in self.broker.connections if c.client_id == "poll-1"]
        asked = []
        self.patch(type(conn.transport), "logPrefix", lambda t: asked.append(t) or "x")
        client.send(Publish("poll/t", b"1", 0))
        yield self.wait_until(lambda: self.broker.stats.messages_received >= 1)
        self.assertEqual(asked, [])
        yield client.abort()

    @inlineCallbacks
    def test_a_disconnect_unregisters_the_descriptor_once(self) -> Any:
        """After DISCONNECT the descriptor leaves epoll once, by what the reactor's
        removeReader does, inline (no removeReader call); its close asks the reactor
        for nothing more (no removeReader, no removeWriter), and no close grace is
        armed for a socket closed at the end of that turn."""
        client = yield connect_raw(self.reactor, self.port)
        yield client.connect("poll-2")
        [conn] = [c for c in self.broker.connections if c.client_id == "poll-2"]
        server = conn.transport
        fd, poller = server.fileno(), self.reactor._poller
        removed: list[Any] = []
        for name in ("removeReader", "removeWriter"):
            original = getattr(self.reactor, name)
            self.patch(self.reactor, name, lambda s, n=name, o=original: (
                s is server and removed.append(n), o(s))[1])

        class Watched:  # (epoll's own object: its methods cannot be patched)
            def __getattr__(self, name: str) -> Any:
                return getattr(poller, name)

            def unregister(self, n: int) -> None:
                if n == fd:  # (not the client's, in this process too)
                    removed.append(("unregister", n))
                poller.unregister(n)

        self.patch(self.reactor, "_poller", Watched())
        deadlines = self.broker.deadlines
        armed = deadlines.arm
        self.patch(deadlines, "arm", lambda item, when: (
            item is conn and removed.append("close grace"), armed(item, when))[1])
        client.send(Disconnect())
        yield client.wait_closed()
        yield self.wait_until(lambda: server.fileno() == -1)
        # (closed at the end of that turn: no close grace armed for it either)
        self.assertEqual(removed, [("unregister", fd)])
        self.assertNotIn(server, self.reactor.getReaders())
        self.assertEqual(self.service.test_factory.active, 0)

    @inlineCallbacks
    def test_a_read_that_raises_is_logged_and_ends_its_connection(self) -> Any:
        """A plain read event is handled inline as ``_doReadOrWrite`` handles it: what
        the read raises is logged, that connection is lost, and the others go on."""
        if not _leanpoll.install(self.reactor):
            self.skipTest("not Twisted's epoll reactor")
        bad = yield connect_raw(self.reactor, self.port)
        yield bad.connect("poll-3")
        good = yield connect_raw(self.reactor, self.port)
        yield good.connect("poll-4")
        [conn] = [c for c in self.broker.connections if c.client_id == "poll-3"]
        received = type(conn).dataReceived

        def failing(self: Any, data: bytes) -> None:
            if self is conn:
                raise ZeroDivisionError("a bug in a handler")
            received(self, data)

        self.patch(type(conn), "dataReceived", failing)
        bad.send(Publish("poll/t", b"1", 0))
        yield bad.wait_closed()
        good.send(Publish("poll/t", b"2", 0))
        yield self.wait_until(lambda: self.broker.stats.messages_received >= 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        yield good.abort()

    @inlineCallbacks
    def test_timed_and_thread_calls_still_run_between_passes(self) -> Any:
        """The lean loop skips ``runUntilCurrent`` only when nothing is due: a timed
        call, one moved later, and a call from a thread all still run."""
        if not _leanpoll.install(self.reactor):
            self.skipTest("not Twisted's epoll reactor")
        self.assertIs(self.reactor.runUntilCurrent.__func__, _leanpoll._run_until_current)
        timed, later, threaded = Deferred(), Deferred(), Deferred()
        self.reactor.callLater(0.01, timed.callback, "timed")
        self.reactor.callLater(0.01, later.callback, "later").delay(0.02)
        threading.Thread(target=self.reactor.callFromThread,
                         args=(threaded.callback, "thread")).start()
        results = yield gatherResults([timed, later, threaded])
        self.assertEqual(results, ["timed", "later", "thread"])
