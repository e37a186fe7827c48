"""Stream listeners queue 1024 connections for accept() unless told otherwise: Twisted's
50 dropped most SYNs of a reconnect storm (tests/test_cluster_storm.py)."""

from __future__ import annotations

from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.adapters.tls import LISTEN_BACKLOG, stream_listener, with_backlog


class BacklogTests(SynchronousTestCase):
    def test_default_backlog(self) -> None:
        """tcp:, tcp6: and unix: get backlog=1024; an explicit backlog= is kept; other
        endpoint kinds are left alone."""
        self.assertEqual(LISTEN_BACKLOG, 1024)
        self.assertEqual(with_backlog("tcp:1883"), "tcp:1883:backlog=1024")
        self.assertEqual(with_backlog("tcp6:1883:interface=\\:\\:1"),
                         "tcp6:1883:interface=\\:\\:1:backlog=1024")
        self.assertEqual(with_backlog("unix:/run/mqtt.sock"), "unix:/run/mqtt.sock:backlog=1024")
        self.assertEqual(with_backlog("tcp:1883:backlog=5"), "tcp:1883:backlog=5")
        self.assertEqual(with_backlog("systemd:domain=INET:index=0"),
                         "systemd:domain=INET:index=0")

    def test_listener_listens_with_it(self) -> None:
        """The listener's port is opened with that backlog."""
        reactor = MemoryReactor()
        service = stream_listener(reactor, "tcp:1883:interface=127.0.0.1", Factory(), {})
        service.privilegedStartService()
        port, _, backlog, interface = reactor.tcpServers[0]
        self.assertEqual((port, backlog, interface), (1883, 1024, "127.0.0.1"))
