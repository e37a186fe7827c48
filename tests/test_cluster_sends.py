"""A node's Redis commands leave at the end of the reactor turn, in one ``send`` straight
to the socket (``cluster/client.py``, ``send_out``), and a batch flush's commands in the
same end-of-turn pass as the flush (``mqtt_twisted/turns.py``): no ``epoll_ctl`` to
watch the socket, no poll for it to be writable, no reactor iteration between
(issue 16, "of linear"; docs/cluster.md, "Benchmarks")."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock
from twisted.trial import unittest

from mqtt_twisted.cluster.client import RedisClient
from mqtt_twisted.turns import after_turn

try:
    from tests.redisserver import RedisServer, temp_dir
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from redisserver import RedisServer, temp_dir  # type: ignore[no-redef]


class _CountingClock(Clock):
    scheduled = 0

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        self.scheduled += 1
        return super().callLater(delay, f, *args, **kwargs)


class EndOfTurnTests(unittest.SynchronousTestCase):
    def test_work_added_meanwhile_runs_in_the_same_pass(self) -> None:
        """Work that end-of-turn work adds (a flush's commands to send) runs in the same
        pass, after what was there: one ``callLater(0)``, one iteration."""
        clock = _CountingClock()
        done: list[str] = []

        def flush(_: Any) -> None:
            done.append("flush")
            after_turn(clock, done.append, "send")

        after_turn(clock, flush, None)
        after_turn(clock, done.append, "acks")
        self.assertEqual(len(clock.calls), 1)
        clock.advance(0)
        self.assertEqual(done, ["flush", "acks", "send"])
        self.assertEqual(clock.scheduled, 1)  # (before: a second one, for "send")
        after_turn(clock, done.append, "next turn")  # a new turn: scheduled again
        clock.advance(0)
        self.assertEqual(done[-1], "next turn")


class SendTests(unittest.TestCase):
    """Against a real redis-server, on the real reactor."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.server = RedisServer(reactor, temp_dir(self))
        yield self.server.start()
        self.addCleanup(self.server.stop)
        self.client = RedisClient(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1",
                                                              self.server.port))
        self.client.start()
        self.addCleanup(self.client.stop)
        yield self.client.ready()

    @inlineCallbacks
    def test_a_turns_commands_without_watching_the_socket(self) -> Any:
        """A turn's commands go in one send at its end: the reactor is never asked to
        watch the socket for writing, and every command is answered, in order."""
        protocol = self.client.protocol
        assert protocol is not None and protocol.out is not None
        watched = []
        start_writing = protocol.transport.startWriting

        def noted() -> None:
            watched.append(True)
            start_writing()

        protocol.transport.startWriting = noted
        ds = [self.client.command(b"INCR", b"n") for _ in range(50)]
        self.assertEqual(len(protocol.out), 50)  # not sent yet: at the end of the turn
        self.assertEqual((yield gatherResults(ds)), list(range(1, 51)))
        self.assertEqual(watched, [])

    @inlineCallbacks
    def test_what_the_socket_does_not_take_goes_through_the_transport(self) -> Any:
        """A write bigger than the socket takes at once: the rest is the transport's to
        send, after it, in order; nothing is lost or reordered."""
        big = b"x" * (16 << 20)
        ds = [self.client.command(b"SET", b"big", big), self.client.command(b"STRLEN", b"big"),
              self.client.command(b"GET", b"big")]
        _, length, value = yield gatherResults(ds)
        self.assertEqual(length, len(big))
        self.assertEqual(value, big)
