"""The cluster's RESP codec (sans-IO) and its Twisted client against a real redis-server.

The codec: hypothesis round trips of every reply kind fed in arbitrary chunks, commands
as Redis parses them, and fuzzing (random and mutated bytes) that may only end in
:class:`RespProtocolError`.  The client: pipelining, errors, pub/sub pushes, Streams
(XADD, XREADGROUP, XACK, XAUTOCLAIM), timeouts and reconnection.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from mqtt_twisted.cluster.client import RedisClient
from mqtt_twisted.cluster.resp import (
    MAX_DEPTH,
    Parser,
    ReplyError,
    RespProtocolError,
    Status,
    encode_command,
    encode_reply,
)
from mqtt_twisted.errors import StorageError

try:
    from tests.redisserver import RedisServer, temp_dir
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from redisserver import RedisServer, temp_dir  # type: ignore[no-redef]

_line = st.binary(max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b)
_scalars = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    _line.map(Status),
    st.text(max_size=30).filter(lambda s: "\r" not in s and "\n" not in s).map(ReplyError),
)
replies = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=40)


def feed_in_chunks(data: bytes, cuts: list[int]) -> list[Any]:
    parser = Parser()
    out: list[Any] = []
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        out += parser.feed(data[last:cut])
        last = cut
    out += parser.feed(data[last:])
    return out


class CodecTests(unittest.SynchronousTestCase):
    """Bytes in, replies out."""

    @given(st.lists(replies, min_size=1, max_size=5), st.lists(st.integers(0, 10_000)))
    @settings(max_examples=300, deadline=None)
    def test_round_trip_in_any_chunks(self, values: list[Any], cuts: list[int]) -> None:
        """Every reply kind comes back equal and of the same type, however the bytes
        are split."""
        data = b"".join(encode_reply(v) for v in values)
        got = feed_in_chunks(data, cuts)
        self.assertEqual(got, values)
        self.assertEqual([type(g) for g in got], [type(v) for v in values])

    @given(st.lists(st.one_of(st.binary(max_size=50), st.text(max_size=20),
                              st.integers(-10**12, 10**12)), min_size=1, max_size=8))
    @settings(max_examples=200, deadline=None)
    def test_command_is_an_array_of_bulk_strings(self, args: list[Any]) -> None:
        """A command is what Redis reads: an array of the arguments as bulk strings."""
        expected = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.assertEqual(Parser().feed(encode_command(*args)), [expected])

    def test_simple_values(self) -> None:
        """The five reply types of RESP2, nulls included."""
        parser = Parser()
        self.assertEqual(parser.feed(b"+OK\r\n:-12\r\n$3\r\na\r\n\r\n$-1\r\n*-1\r\n-ERR no\r\n"),
                         [Status(b"OK"), -12, b"a\r\n", None, None, ReplyError("ERR no")])

    def test_bad_command_arguments(self) -> None:
        """An argument Redis cannot take is a TypeError before anything is sent."""
        self.assertRaises(TypeError, encode_command, b"SET", None)
        self.assertRaises(ValueError, encode_command)

    def test_protocol_errors(self) -> None:
        """Bytes that are not RESP raise RespProtocolError, each named."""
        for bad in (b"?x\r\n", b"$abc\r\n", b"$-2\r\n", b"*x\r\n", b":1x\r\n",
                    b"$1\r\nab\r\n", b":99999999999999999999999\r\n",
                    b"*1\r\n" * (MAX_DEPTH + 2), b"+" + b"x" * 70_000):
            self.assertRaises(RespProtocolError, Parser().feed, bad)

    def test_huge_length_is_refused_not_awaited(self) -> None:
        """A bulk length beyond Redis' maximum is an error at once, not a wait for 2 GB."""
        self.assertRaises(RespProtocolError, Parser().feed, b"$9999999999\r\n")

    def test_fuzz_only_typed_errors(self) -> None:
        """Random and mutated byte streams: replies, more bytes awaited, or
        RespProtocolError; nothing else, and no hang."""
        rng = random.Random(16)
        samples = [encode_reply(v) for v in (
            [b"a", 1, None, [Status(b"OK"), ReplyError("E x")]], b"x" * 300, -5,
            [[b"stream", [[b"1-0", [b"o", b"A", b"m", b"\x93\x01"]]]]])]
        for i in range(20_000):
            if i % 3 == 0:
                data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 60)))
            else:
                data = bytearray(rng.choice(samples))
                for _ in range(rng.randint(1, 4)):
                    pos = rng.randrange(len(data))
                    data[pos] = rng.choice((rng.getrandbits(8), 0x0D, 0x0A, 0x2A, 0x24, 0x2D))
                data = bytes(data)
            parser = Parser()
            try:
                for start in range(0, len(data), 7):
                    parser.feed(data[start:start + 7])
            except RespProtocolError:
                pass

    @given(st.binary(max_size=300))
    @settings(max_examples=500, deadline=None)
    def test_hypothesis_bytes_only_typed_errors(self, data: bytes) -> None:
        """Bytes chosen by hypothesis (so it can shrink them) fail only cleanly."""
        try:
            Parser().feed(data)
        except RespProtocolError:
            pass


class ClientOnClockTests(unittest.SynchronousTestCase):
    """Deadlines, without a server."""

    def test_waiting_command_times_out(self) -> None:
        """A command made while Redis cannot be reached fails after the timeout with
        StorageError."""
        clock = Clock()

        class Never:
            def connect(self, factory: Any) -> Deferred[Any]:
                return Deferred()

        client = RedisClient(clock, Never(), timeout=2.0)
        client.start()
        d = client.command(b"PING")
        clock.advance(1.0)
        self.assertNoResult(d)
        clock.advance(1.5)
        self.failureResultOf(d, StorageError)
        client.stop()


    def test_overdue_but_reading_is_not_hung(self) -> None:
        """A command overdue while replies keep arriving (this node too busy to read them
        in time, as in a reconnect storm) does not drop the connection; overdue with
        nothing read between two sweeps does (a hung server)."""
        from twisted.internet.testing import StringTransport

        clock = Clock()
        transport = StringTransport()

        class Connected:
            def connect(self, factory: Any) -> Deferred[Any]:
                protocol = factory.buildProtocol(None)
                protocol.makeConnection(transport)
                d: Deferred[Any] = Deferred()
                d.callback(protocol)
                return d

        client = RedisClient(clock, Connected(), timeout=2.0)
        client.start()
        first, second = client.command(b"PING"), client.command(b"PING")
        protocol = client.protocol
        assert protocol is not None
        clock.advance(2.5)  # overdue; this sweep notes how much was read
        protocol.dataReceived(b"+PO")  # a reply is coming in, slowly
        clock.advance(1.0)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"NG\r\n")
        self.assertEqual(self.successResultOf(first), b"PONG")
        clock.advance(1.0)  # the second is overdue too; this sweep notes the read
        self.assertFalse(transport.disconnecting)
        clock.advance(1.0)  # nothing read since the last sweep: hung
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(second)  # fails when the aborted connection is lost
        client.stop()

    def test_pipeline_lost_with_its_connection(self) -> None:
        """A pipeline sent and unanswered fails when its connection is lost, and a reply
        to one of its commands, before that, answers nothing."""
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure

        transport = StringTransport()

        class Connected:
            def connect(self, factory: Any) -> Deferred[Any]:
                protocol = factory.buildProtocol(None)
                protocol.makeConnection(transport)
                return succeed(protocol)

        client = RedisClient(Clock(), Connected(), timeout=2.0)
        client.start()
        d = client.pipeline([(b"MULTI",), (b"EXEC",)])
        self.assertEqual(transport.value(), b"*1\r\n$5\r\nMULTI\r\n*1\r\n$4\r\nEXEC\r\n")
        protocol = client.protocol
        assert protocol is not None
        protocol.dataReceived(b"+OK\r\n")
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, StorageError)
        client.stop()


class ClientTests(unittest.TestCase):
    """The client against a real redis-server."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.reactor = reactor
        self.server = RedisServer(reactor, temp_dir(self))
        yield self.server.start()
        self.addCleanup(self.server.stop)
        self.pushes: list[Any] = []
        self.client = self.make_client()

    def make_client(self, **kwargs: Any) -> RedisClient:
        client = RedisClient(self.reactor, TCP4ClientEndpoint(self.reactor, "127.0.0.1",
                                                               self.server.port), **kwargs)
        client.start()
        self.addCleanup(client.stop)
        return client

    @inlineCallbacks
    def test_pipelined_replies_in_order(self) -> Any:
        """A thousand commands of one turn are answered in order, each its own reply."""
        yield self.client.ready()
        ds = [self.client.command(b"INCR", b"n") for _ in range(1000)]
        results = yield gatherResults(ds)
        self.assertEqual(results, list(range(1, 1001)))

    @inlineCallbacks
    def test_error_reply_fails_only_its_command(self) -> Any:
        """An error reply fails its command with ReplyError (a StorageError); the next
        command is answered."""
        bad = self.client.command(b"NOSUCHCOMMAND")
        good = self.client.command(b"PING")
        error = yield self.assertFailure(bad, ReplyError)
        self.assertIsInstance(error, StorageError)
        self.assertEqual((yield good), Status(b"PONG"))

    @inlineCallbacks
    def test_commands_wait_for_the_connection(self) -> Any:
        """Commands made before the connection is up are sent, in order, once it is."""
        client = self.make_client()
        first = client.command(b"SET", b"k", b"1")
        second = client.command(b"GET", b"k")
        self.assertEqual((yield gatherResults([first, second])), [Status(b"OK"), b"1"])

    @inlineCallbacks
    def test_pipeline_answers_with_its_last_reply(self) -> Any:
        """A pipeline (MULTI, two XADDs, EXEC) fires once, with EXEC's reply; a command
        after it still gets its own reply, and one made before the connection is up
        waits with it, in order."""
        client = self.make_client()  # not connected yet: both wait
        d = client.pipeline([(b"MULTI",), (b"XADD", b"p", b"*", b"m", b"1"),
                             (b"XADD", b"q", b"*", b"m", b"2"), (b"EXEC",)])
        after = client.command(b"XLEN", b"p")
        ids = yield d
        self.assertEqual(len(ids), 2)
        self.assertTrue(all(type(i) is bytes and b"-" in i for i in ids))
        self.assertEqual((yield after), 1)
        self.assertEqual((yield client.pipeline([(b"PING",)])), Status(b"PONG"))

    @inlineCallbacks
    def test_pipeline_fails_when_a_command_cannot_be_queued(self) -> Any:
        """A command of a MULTI that Redis refuses to queue makes EXEC fail, and so the
        pipeline: nothing of it was written; the connection goes on."""
        yield self.client.ready()
        d = self.client.pipeline([(b"MULTI",), (b"XADD", b"r", b"*", b"m", b"1"),
                                  (b"XADD", b"r"), (b"EXEC",)])
        error = yield self.assertFailure(d, ReplyError)
        self.assertIn("EXECABORT", str(error))
        self.assertEqual((yield self.client.command(b"XLEN", b"r")), 0)

    @inlineCallbacks
    def test_pubsub_pushes(self) -> Any:
        """A subscriber gets messages through on_push and its SUBSCRIBE replies in order."""
        got: Deferred[Any] = Deferred()
        sub = self.make_client(on_push=got.callback)
        reply = yield sub.command(b"SUBSCRIBE", b"ch")
        self.assertEqual(reply, [b"subscribe", b"ch", 1])
        yield self.client.command(b"PUBLISH", b"ch", b"hello")
        push = yield got
        self.assertEqual(push, [b"message", b"ch", b"hello"])

    @inlineCallbacks
    def test_streams(self) -> Any:
        """XADD, XREADGROUP, XACK and XAUTOCLAIM: an unacknowledged entry can be claimed
        by another consumer."""
        c = self.client
        yield c.command(b"XGROUP", b"CREATE", b"s", b"g", b"0", b"MKSTREAM")
        ids = yield gatherResults([c.command(b"XADD", b"s", b"MAXLEN", b"~", 1000, b"*",
                                             b"m", b"%d" % i) for i in range(3)])
        reply = yield c.command(b"XREADGROUP", b"GROUP", b"g", b"one", b"COUNT", 10,
                                b"STREAMS", b"s", b">")
        self.assertEqual([e[0] for e in reply[0][1]], ids)
        self.assertEqual(reply[0][1][0][1], [b"m", b"0"])
        self.assertEqual((yield c.command(b"XACK", b"s", b"g", ids[0])), 1)
        claimed = yield c.command(b"XAUTOCLAIM", b"s", b"g", b"two", 0, b"0")
        self.assertEqual([e[0] for e in claimed[1]], ids[1:])

    @inlineCallbacks
    def test_blocking_read_outlives_the_timeout(self) -> Any:
        """A blocking XREADGROUP is not taken for a hung server."""
        client = self.make_client(timeout=0.5)
        yield client.command(b"XGROUP", b"CREATE", b"b", b"g", b"$", b"MKSTREAM")
        reply = yield client.command_blocking(1.5, b"XREADGROUP", b"GROUP", b"g", b"c",
                                              b"BLOCK", 1000, b"STREAMS", b"b", b">")
        self.assertIsNone(reply)

    @inlineCallbacks
    def test_hung_server_fails_calls_and_reconnects(self) -> Any:
        """A stopped (SIGSTOP) server: the call fails after the timeout; after SIGCONT the
        client reconnects by itself."""
        import signal

        client = self.make_client(timeout=0.5)
        yield client.ready()
        self.server.signal(signal.SIGSTOP)
        try:
            yield self.assertFailure(client.command(b"PING"), StorageError)
        finally:
            self.server.signal(signal.SIGCONT)
        for _ in range(100):
            if client.protocol is not None:
                break
            yield deferLater(self.reactor, 0.05, lambda: None)
        self.assertEqual((yield client.command(b"PING")), Status(b"PONG"))

    @inlineCallbacks
    def test_reconnects_after_restart(self) -> Any:
        """Redis restarted: a command made while it is down waits and is answered on
        the new connection, after on_connect ran again."""
        connects: list[int] = []
        client = self.make_client(on_connect=lambda c: connects.append(1))
        yield client.ready()
        yield self.server.stop()
        for _ in range(100):
            if client.protocol is None:
                break
            yield deferLater(self.reactor, 0.05, lambda: None)
        waiting = client.command(b"PING")
        yield self.server.restart()
        self.assertEqual((yield waiting), Status(b"PONG"))
        self.assertEqual(len(connects), 2)
