"""One broker-wide timer for connection deadlines (core/deadlines.py).

A connection's CONNECT deadline, keep alive check and close grace used to be a
Twisted DelayedCall each (about 670 bytes per connection with a keep alive); they
are now entries in a timing wheel behind a single ``callLater``.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.codec import Disconnect, PingResp
from mqtt_twisted.core.deadlines import RESOLUTION, Deadlines
from mqtt_twisted.testing import FakeClient, make_broker


class Item:
    def __init__(self, deadlines: Deadlines, log: list, rearm: float | None = None) -> None:
        self.due = None
        self.deadlines = deadlines
        self.log = log
        self.rearm = rearm

    def deadline_passed(self) -> None:
        self.log.append((self, self.deadlines.clock.seconds()))
        if self.rearm is not None:
            when, self.rearm = self.rearm, None
            self.deadlines.arm(self, when)


class WheelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.wheel = Deadlines(self.clock)
        self.fired: list = []

    def item(self, rearm: float | None = None) -> Item:
        return Item(self.wheel, self.fired, rearm)

    def test_never_early_at_most_one_slice_late(self) -> None:
        """A deadline fires once its slice has come: not before, within RESOLUTION."""
        a = self.item()
        self.assertTrue(self.wheel.arm(a, 1.23))
        self.clock.advance(1.22)
        self.assertEqual(self.fired, [])
        self.clock.advance(RESOLUTION)
        self.assertEqual([i for i, _ in self.fired], [a])
        self.assertLessEqual(self.fired[0][1], 1.23 + RESOLUTION + 1e-9)
        self.assertIsNone(a.due)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_timer_for_many_deadlines(self) -> None:
        """A thousand deadlines are one DelayedCall, and each fires once, in order of slice."""
        items = [self.item() for _ in range(1000)]
        for i, item in enumerate(items):
            self.wheel.arm(item, 5 + (i % 10))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.wheel), 1000)
        self.clock.advance(5)
        self.assertEqual(len(self.fired), 100)
        self.clock.pump([1] * 10)
        self.assertEqual(len(self.fired), 1000)
        self.assertEqual(sorted(self.fired, key=lambda f: f[1]), self.fired)
        self.assertEqual(len(self.wheel), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_and_rearm(self) -> None:
        """Cancelling the last deadline leaves no timer behind, cancelling one of
        several leaves the timer as it is; arming again replaces the earlier deadline,
        earlier or later; a deadline already passed is not armed; stop() ends the timer."""
        a, b = self.item(), self.item()
        self.wheel.arm(a, 10)
        self.wheel.cancel(a)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.wheel.arm(a, 10)
        self.wheel.arm(b, 12)
        [call] = self.clock.getDelayedCalls()
        self.wheel.cancel(a)
        self.wheel.arm(a, 11)
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.wheel.cancel(a)
        self.wheel.cancel(b)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.fired, [])
        self.wheel.arm(a, 30)
        self.wheel.arm(b, 30)
        self.wheel.arm(a, 13)  # earlier: the timer moves
        self.clock.advance(3)
        self.assertEqual([i for i, _ in self.fired], [a])
        self.wheel.arm(b, 40)  # later
        self.clock.advance(17)
        self.assertEqual(len(self.fired), 1)
        self.assertFalse(self.wheel.arm(a, 13))  # (the slice fired last: 13 s)
        self.assertIsNone(a.due)
        self.clock.advance(10)
        self.assertEqual([i for i, _ in self.fired], [a, b])
        self.wheel.arm(a, 50)
        self.wheel.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_handler_arms_again(self) -> None:
        """A handler may arm its item (or another) again while the wheel fires; an
        earlier slice still waiting is not delayed by it."""
        a, b = self.item(rearm=50), self.item()
        self.wheel.arm(a, 1)
        self.wheel.arm(b, 2)
        self.clock.advance(1)
        self.assertIsNotNone(a.due)
        self.clock.advance(1)
        self.assertEqual([i for i, _ in self.fired], [a, b])
        self.clock.advance(48)
        self.assertEqual([i for i, _ in self.fired], [a, b, a])

    def test_float_noise_on_a_slice_edge(self) -> None:
        """0.1 + 0.2 + 10 is on the 10.3 s slice, not the next one."""
        a = self.item()
        self.clock.advance(0.1)
        self.clock.advance(0.2)
        self.wheel.arm(a, self.clock.seconds() + 10)
        self.clock.advance(10)
        self.assertEqual(len(self.fired), 1)


class ConnectionDeadlineTests(SynchronousTestCase):
    def test_idle_keepalive_connections_share_one_timer(self) -> None:
        """500 connected clients with a keep alive: one DelayedCall on the clock, not
        one each; all are still closed at 1.5 x keep alive [MQTT-3.1.2-24]."""
        broker, clock = make_broker()
        clients = [FakeClient(broker) for _ in range(500)]
        for i, c in enumerate(clients):
            c.connect(f"c{i}", keep_alive=60)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(len(broker.deadlines), 500)
        clock.advance(60)
        self.assertEqual(clients[0].ping(), [PingResp()])
        clock.advance(30)  # 90 s: all but the one that pinged
        closed = [c.transport.closed for c in clients]
        self.assertEqual(closed.count(False), 1)
        self.assertFalse(clients[0].transport.closed)
        self.assertEqual(broker.stats.keepalive_timeouts, 499)
        clock.advance(60)
        self.assertTrue(clients[0].transport.closed)

    def test_connections_without_connect_share_one_timer(self) -> None:
        """CONNECT deadlines of sockets that sent nothing: one timer, all aborted."""
        broker, clock = make_broker(connect_timeout=5.0)
        clients = [FakeClient(broker) for _ in range(100)]
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(5)
        self.assertTrue(all(c.transport.aborted for c in clients))
        self.assertEqual(broker.stats.connect_timeouts, 100)

    def test_close_grace_aborts_a_peer_that_does_not_let_go(self) -> None:
        """A closed connection whose transport does not report the loss is aborted after
        the close grace; one whose transport went away leaves no deadline behind."""
        broker, clock = make_broker()
        stuck, gone = FakeClient(broker), FakeClient(broker)
        stuck.connect("stuck", keep_alive=10)
        gone.connect("gone", keep_alive=10)
        stuck.send(Disconnect(0))  # (FakeClient.disconnect would also drop it)
        gone.disconnect()
        self.assertFalse(stuck.transport.aborted)
        self.assertIsNone(gone.connection.due)
        clock.advance(2.0)
        self.assertTrue(stuck.transport.aborted)
        self.assertFalse(gone.transport.aborted)
        stuck.drop()
        self.assertEqual(len(broker.deadlines), 0)
        self.assertEqual(clock.getDelayedCalls(), [])
