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
