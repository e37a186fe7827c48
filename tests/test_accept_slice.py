"""A listening port accepts at most ``ACCEPT_SLICE`` connections a reactor turn
(``adapters/_accepts.py``): Twisted's accept loop took 100 and more in one turn under a
flood of new connections (the live fuzzer), 20-75 ms of CPU each time."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from mqtt_twisted.adapters._accepts import ACCEPT_SLICE, accept_behind, cap_accepts


class Counting(Factory):
    def __init__(self) -> None:
        self.built = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        self.built += 1
        return Protocol()


class AcceptSliceTests(TestCase):
    def flood(self, port: Any, count: int) -> list[socket.socket]:
        """``count`` connections completed by the kernel, not yet accepted."""
        address = port.getHost()
        socks = []
        for _ in range(count):
            s = socket.socket()
            s.connect((address.host, address.port))
            socks.append(s)
        self.addCleanup(lambda: [s.close() for s in socks])
        return socks

    def listen(self, factory: Factory) -> Any:
        port = reactor.listenTCP(0, factory, backlog=512, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port

    def test_a_slice_per_readable_event(self) -> None:
        factory = Counting()
        port = self.listen(factory)
        cap_accepts(port)
        self.flood(port, ACCEPT_SLICE * 3 + 5)
        counts = []
        for _ in range(5):
            before = factory.built
            port.doRead()  # what the reactor calls once per turn the socket is readable
            counts.append(factory.built - before)
        self.assertEqual(counts, [ACCEPT_SLICE] * 3 + [5, 0])
        self.addCleanup(self.close_accepted, port)

    def test_fewer_while_connections_wait_to_be_served(self) -> None:
        """Tied to a count of accepted connections not yet served (the MQTT listeners:
        CONNECTs waiting at the broker's gate), a port accepts only what brings them
        to a slice, and none while a slice or more wait: the rest stay in the kernel's
        backlog, where they cost nothing and are not yet under a CONNECT deadline."""
        factory = Counting()
        port = self.listen(factory)
        cap_accepts(port)
        waiting = [ACCEPT_SLICE - 5]
        self.assertIs(accept_behind(port, lambda: waiting[0]), port)
        self.flood(port, ACCEPT_SLICE * 2)
        port.doRead()
        self.assertEqual(factory.built, 5)
        waiting[0] = ACCEPT_SLICE + 3
        port.doRead()
        self.assertEqual(factory.built, 5)
        waiting[0] = 0
        port.doRead()  # (Twisted's own count grows back by 20 a turn, within the slice)
        self.assertEqual(factory.built, 5 + 5 + 20)
        port.doRead()
        self.assertEqual(factory.built, 30 + ACCEPT_SLICE)
        self.addCleanup(self.close_accepted, port)

    def test_twisted_alone_takes_a_hundred(self) -> None:
        """(Why: the same without the cap.)"""
        factory = Counting()
        port = self.listen(factory)
        self.flood(port, 150)
        port.doRead()
        self.assertEqual(factory.built, 100)
        self.addCleanup(self.close_accepted, port)

    def test_capped_once_per_class(self) -> None:
        first, second = self.listen(Counting()), self.listen(Counting())
        cap_accepts(first)
        cap_accepts(second)
        cap_accepts(first)  # again: nothing changes
        self.assertIs(type(first), type(second))
        self.assertEqual(first.accept_slice, ACCEPT_SLICE)

    def close_accepted(self, port: Any) -> None:
        for reader in list(reactor.getReaders()):  # the accepted server-side sockets
            if getattr(reader, "server", None) is port:
                reader.abortConnection()
