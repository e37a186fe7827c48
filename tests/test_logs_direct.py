"""A client's connect and disconnect lines written straight to our observer when it is
the only one (``logs.write_direct``, ``core/clientlog.py``): the same text as the event
would have made, and the event's way whenever anything else could see the event."""

from __future__ import annotations

import io
from typing import Any

from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted import logs
from mqtt_twisted.core import clientlog
from mqtt_twisted.testing import FakeClient, make_broker


class _Conn:
    """What the two lines read of a connection."""

    virtual = False

    def __init__(self, version: int, user: str | None, ended: Any, adapter: Any) -> None:
        self.client_id, self.peer, self.version = "c-1", "127.0.0.1:40000", version
        self.username, self.ended = user, ended
        self.listener = type("Listener", (), {"adapter": adapter})()


def _cycle(client_id: str, user: str | None = "alice") -> None:
    """Connect (v5, persistent, a user name: the connect line's longest form), publish
    nothing, disconnect with a reason code (the disconnect line's code and detail)."""
    broker, _ = make_broker()
    client = FakeClient(broker, 5)
    client.connect(client_id, clean=False, username=user)
    client.connection.close(0x98)  # (administrative action: reason code and text)


class DirectLineTests(SynchronousTestCase):
    """The client lines' text, written with and without the event."""

    def setUp(self) -> None:
        self.addCleanup(setattr, clientlog.log, "observer", clientlog.log.observer)
        self.addCleanup(logs.set_log_format, "text")
        self.addCleanup(logs.set_log_level, "info")

    def lines(self, *extra: Any, fmt: str = "text") -> list[str]:
        """The client lines of one cycle, with our observer and ``extra`` observers on
        the clients' publisher; without their timestamps."""
        out = io.StringIO()
        clientlog.log.observer = LogPublisher(logs.observer(out, "info", fmt), *extra)
        _cycle("first")  # (the event's way learns the namespace's level and short name)
        start = len(out.getvalue())
        _cycle("direct")
        return [line.partition(" ")[2] for line in out.getvalue()[start:].splitlines()]

    def test_the_same_lines_with_and_without_the_event(self) -> None:
        """The only observer: lines written directly; beside another observer, through
        the event; the text is the same."""
        seen: list[dict] = []
        direct, evented = self.lines(), self.lines(seen.append)
        self.assertEqual(direct, evented)
        self.assertEqual(len(direct), 2)
        self.assertTrue(direct[0].startswith("info  [clients] direct connected from "), direct)
        self.assertIn("disconnected: kicked (0x98)", direct[1])
        self.assertEqual([e["action"] for e in seen[-2:]], ["connect", "disconnect"])

    def test_write_direct_declines_what_it_cannot_write(self) -> None:
        """Another observer, JSON lines, or a namespace not seen yet: the event's way
        (False); below the namespace's level: nothing written, nothing emitted (True)."""
        out = io.StringIO()
        ours = logs.observer(out, "info", "text")
        log = Logger(namespace="mqtt_twisted.clients", observer=LogPublisher(ours))
        fields = {"x": 1}
        self.assertFalse(logs.write_direct(Logger(namespace="mqtt_twisted.unseen",
                                                  observer=LogPublisher(ours)),
                                           LogLevel.info, "{x}", fields))
        log.info("primes the namespace")
        self.assertTrue(logs.write_direct(log, LogLevel.info, "x is {x}", fields))
        self.assertTrue(out.getvalue().endswith(" info  [clients] x is 1\n"), out.getvalue())
        size = len(out.getvalue())
        self.assertTrue(logs.write_direct(log, LogLevel.debug, "x is {x}", fields))
        self.assertEqual(len(out.getvalue()), size)
        two = Logger(namespace="mqtt_twisted.clients", observer=LogPublisher(ours, print))
        self.assertFalse(logs.write_direct(two, LogLevel.info, "{x}", fields))
        logs.set_log_format("json")
        self.assertFalse(logs.write_direct(log, LogLevel.info, "{x}", fields))

    def test_every_form_of_the_two_lines(self) -> None:
        """Each form of the connect line (protocol, session, resumed, user, adapter) and
        of the disconnect line (reason code, detail), written directly (an f-string) and
        through the event (its format): the same text."""
        forms = [(_Conn(version, user, ended, adapter), clean, present, keep_alive)
                 for version in (3, 4, 5, 6) for user in (None, "alice", "")
                 for ended in (None, ("normal", None, None), ("kicked", 0x98, None),
                               ("client DISCONNECT", 4, "disconnect with will message"),
                               ("connection lost", None, "Connection was closed cleanly."))
                 for adapter in (None, "ws") for clean, present, keep_alive in (
                     (True, False, 60), (False, True, 0), (False, False, 65535))]

        def lines(*extra: Any) -> list[str]:
            out = io.StringIO()
            clientlog.log.observer = LogPublisher(logs.observer(out, "info"), *extra)
            clientlog.log.info("primes the namespace")
            start = len(out.getvalue())
            for conn, clean, present, keep_alive in forms:
                clientlog.connected(conn, clean, present, keep_alive)
                clientlog.disconnected(conn)
            return [line.partition(" ")[2] for line in out.getvalue()[start:].splitlines()]

        direct, evented = lines(), lines(lambda event: None)
        self.assertEqual(len(direct), 2 * len(forms))
        self.assertEqual(direct, evented)
        self.assertIn("info  [clients] c-1 connected from 127.0.0.1:40000 (MQTT 5.0 over ws, "
                      "persistent session, resumed, keep alive 0 s, user alice)", direct)
        self.assertIn("info  [clients] c-1 from 127.0.0.1:40000 disconnected: client "
                      "DISCONNECT (0x04): disconnect with will message", direct)

    def test_timestamp_tail(self) -> None:
        """The milliseconds from the table, as the format made them; rounded up into
        the next second."""
        self.assertEqual(logs.timestamp(1.0005), "1970-01-01T00:00:01.000Z")
        self.assertEqual(logs.timestamp(1.0123456), "1970-01-01T00:00:01.012Z")
        self.assertEqual(logs.timestamp(1.9999996), "1970-01-01T00:00:02.000Z")
        self.assertEqual(logs.timestamp(1764728745.999), "2025-12-03T02:25:45.999Z")
