"""Many datagrams a system call (``adapters/udpbatch.py``): the compiled batch
(``adapters/_mmsg.pyx``, recvmmsg/sendmmsg) and its pure twin read and send alike on
real loopback sockets, and the datagram listeners' port sends a read's answers after
it, in order."""

from __future__ import annotations

import select
import socket
import sys
from types import SimpleNamespace
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mqtt_twisted.adapters import udpbatch
from mqtt_twisted.adapters.kit import DatagramListener

reactor: Any = _reactor


def _udp(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def _waiting(sock: socket.socket) -> None:
    """Until ``sock`` has a datagram (loopback delivers within the send; a bound)."""
    assert select.select([sock], [], [], 5)[0], "nothing arrived"


class BatchTests(unittest.SynchronousTestCase):
    """One implementation (the pure one here; the compiled one below)."""

    compiled = False

    def setUp(self) -> None:
        if self.compiled and udpbatch.compiled is None:
            raise unittest.SkipTest("adapters/_mmsg.pyx was not built")
        self.server = _udp()
        self.addCleanup(self.server.close)
        self.batch = udpbatch.batch_for(self.server, 64, use_compiled=self.compiled)
        self.assertEqual(type(self.batch).__name__, "Batch" if self.compiled else "PureBatch")
        self.got: list[tuple[bytes, Any]] = []

    def client(self) -> socket.socket:
        sock = _udp()
        self.addCleanup(sock.close)
        return sock

    def test_reads_each_with_its_sender(self) -> None:
        a, b = self.client(), self.client()
        for i in range(3):
            a.sendto(b"a%d" % i, self.server.getsockname())
            b.sendto(b"b%d" % i, self.server.getsockname())
        _waiting(self.server)
        self.assertEqual(self.batch.read(64, lambda d, p: self.got.append((d, p)), None),
                         (6, 12))
        self.assertEqual(sorted(self.got), sorted(
            [(b"a%d" % i, a.getsockname()) for i in range(3)]
            + [(b"b%d" % i, b.getsockname()) for i in range(3)]))
        self.assertEqual(self.batch.read(64, self.got.append, None), (0, 0))

    def test_count_bounds_a_read(self) -> None:
        a = self.client()
        for i in range(5):
            a.sendto(b"%d" % i, self.server.getsockname())
        _waiting(self.server)
        self.assertEqual(self.batch.read(3, lambda d, p: self.got.append(d), None), (3, 3))
        self.assertEqual(self.batch.read(3, lambda d, p: self.got.append(d), None), (2, 2))
        self.assertEqual(self.got, [b"0", b"1", b"2", b"3", b"4"])

    def test_longer_datagram_reported_not_handled(self) -> None:
        """A datagram longer than the size is not handed over cut short as if whole: its
        first ``size`` bytes go to ``too_long`` (without one, it is dropped); all are counted."""
        a = self.client()
        for data in (b"x" * 100, b"ok", b"y" * 64, b"z" * 65):
            a.sendto(data, self.server.getsockname())
        _waiting(self.server)
        long: list[tuple[bytes, Any]] = []
        self.assertEqual(self.batch.read(8, lambda d, p: self.got.append(d), None,
                                         lambda d, p: long.append((d, p))), (4, 64 * 3 + 2))
        self.assertEqual(self.got, [b"ok", b"y" * 64])
        self.assertEqual(long, [(b"x" * 64, a.getsockname()), (b"z" * 64, a.getsockname())])
        a.sendto(b"w" * 70, self.server.getsockname())
        _waiting(self.server)
        self.assertEqual(self.batch.read(8, lambda d, p: self.got.append(d), None), (1, 64))
        self.assertEqual((self.got[-1], self.batch.truncated), (b"y" * 64, 3))

    def test_a_raising_handler_costs_the_others_nothing(self) -> None:
        a = self.client()
        for data in (b"ok1", b"boom", b"ok2"):
            a.sendto(data, self.server.getsockname())
        _waiting(self.server)
        errors: list[Any] = []

        def handler(data: bytes, peer: Any) -> None:
            if data == b"boom":
                raise ValueError("boom")
            self.got.append((data, peer))

        self.assertEqual(self.batch.read(64, handler, lambda: errors.append(sys.exc_info()[1])),
                         (3, 10))
        self.assertEqual([d for d, _ in self.got], [b"ok1", b"ok2"])
        self.assertEqual([str(e) for e in errors], ["boom"])

    def test_sends_in_order_and_drops_what_cannot_go(self) -> None:
        a, b = self.client(), self.client()
        pending = [(b"1", a.getsockname()), (b"2", b.getsockname()), ("text", a.getsockname()),
                   (b"3", ("::1", 5)), (b"4", a.getsockname()), (b"5", ("127.0.0.1",))]
        self.batch.send(pending)
        self.assertEqual(self.batch.dropped, 3)
        got = []
        for sock in (a, a, b):
            _waiting(sock)
            got.append(sock.recvfrom(64))
        here = self.server.getsockname()
        self.assertEqual(got, [(b"1", here), (b"4", here), (b"2", here)])

    def test_more_than_a_batch(self) -> None:
        a = self.client()
        self.batch.send([(b"%d" % i, a.getsockname()) for i in range(150)])
        got = []
        while len(got) < 150:
            _waiting(a)
            got.append(a.recv(64))
        self.assertEqual(got, [b"%d" % i for i in range(150)])
        for i in range(150):
            a.sendto(b"%d" % i, self.server.getsockname())
        _waiting(self.server)
        seen: list[bytes] = []
        while True:
            n, _ = self.batch.read(64, lambda d, p: seen.append(d), None)
            self.assertLessEqual(n, 64)
            if not n:
                break
        self.assertEqual(seen, [b"%d" % i for i in range(150)])


class CompiledBatchTests(BatchTests):
    compiled = True


class Echo(DatagramProtocol):
    """Answers each datagram twice through the port's send_datagram, noting whether
    the read was still under way (the answers held for after it)."""

    def __init__(self) -> None:
        self.held: list[bool] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.held.append(self.transport.pending is not None)
        self.transport.send_datagram(data + b"/1", addr)
        self.transport.send_datagram(data + b"/2", addr)


class BatchedPortTests(unittest.TestCase):
    """The datagram listeners' port (``kit.DatagramListener``) in the real reactor."""

    @inlineCallbacks
    def listen(self, host: str) -> Any:
        self.echo = Echo()
        listener = DatagramListener(reactor, "udp:0:interface=" + host.replace(":", "\\:"),
                                    self.echo)
        listener.startService()
        self.addCleanup(listener.stopService)
        port = yield listener.whenListening()
        self.assertIsInstance(port, udpbatch.BatchedPort)
        return port

    @inlineCallbacks
    def echo_round(self, family: int, host: str) -> Any:
        port = yield self.listen(host)
        client = socket.socket(family, socket.SOCK_DGRAM)
        self.addCleanup(client.close)
        client.bind((host, 0))
        for i in range(20):
            client.sendto(b"%d" % i, (host, port.getHost().port))
        client.setblocking(False)
        got: list[bytes] = []

        def collect(done: Deferred[None]) -> None:
            try:
                while True:
                    got.append(client.recv(64))
            except BlockingIOError:
                pass
            if len(got) >= 40:
                done.callback(None)
            else:
                reactor.callLater(0.01, collect, done)

        done: Deferred[None] = Deferred()
        collect(done)
        yield done
        self.assertEqual(got, [b"%d/%d" % (i, k) for i in range(20) for k in (1, 2)])
        self.assertEqual(self.echo.held, [True] * 20)
        self.assertEqual(port.batch.dropped, 0)
        port.send_datagram(b"later", client.getsockname()[:2])  # no read under way: now
        return port

    @inlineCallbacks
    def test_drops_counted_in_the_brokers_stats(self) -> Any:
        """What the port drops reaches the broker's counters (``mqtt_datagrams_dropped``):
        a datagram longer than it reads, and one the kernel would not send."""
        stats = SimpleNamespace(datagrams_dropped={"too_long": 0, "unsent": 0})
        self.echo = Echo()
        listener = DatagramListener(reactor, "udp:0:interface=127.0.0.1", self.echo, stats)
        listener.startService()
        self.addCleanup(listener.stopService)
        port = yield listener.whenListening()
        port.send_datagram(b"x", ("::1", 5))  # (not an address this IPv4 port can send to)
        self.assertEqual(stats.datagrams_dropped, {"too_long": 0, "unsent": 1})
        client = _udp()
        self.addCleanup(client.close)
        client.sendto(b"x" * (port.maxPacketSize + 1), ("127.0.0.1", port.getHost().port))
        client.sendto(b"ok", ("127.0.0.1", port.getHost().port))
        for _ in range(500):
            if self.echo.held:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(stats.datagrams_dropped, {"too_long": 1, "unsent": 1})
        self.assertEqual(len(self.echo.held), 1)  # the long one never reached the protocol

    @inlineCallbacks
    def test_ipv4(self) -> Any:
        port = yield self.echo_round(socket.AF_INET, "127.0.0.1")
        expected = "Batch" if udpbatch.compiled is not None else "PureBatch"
        if udpbatch._flag("MQTT_TWISTED_PURE"):
            expected = "PureBatch"
        self.assertEqual(type(port.batch).__name__, expected)

    @inlineCallbacks
    def test_ipv6_reads_with_the_pure_batch(self) -> Any:
        if not socket.has_ipv6:
            raise unittest.SkipTest("no IPv6")
        try:
            _udp(socket.AF_INET6, "::1").close()
        except OSError:
            raise unittest.SkipTest("no ::1 here") from None
        port = yield self.echo_round(socket.AF_INET6, "::1")
        self.assertEqual(type(port.batch).__name__, "PureBatch")
