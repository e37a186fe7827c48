"""The Redis store's group commit (``store/_redislink.py``, ``Link._send``): while a
connection's written commands are unanswered, the next ones are held, the open record
batch taking every write meanwhile, and they leave in one write at the end of the turn
that reads the last reply.  On a clock, with the connection's bytes captured and the
replies handed to the link as its protocol would.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.cluster.resp import Parser
from mqtt_twisted.store._redisscripts import SHAS
from mqtt_twisted.store.redis import RedisStore, parse_url
from mqtt_twisted.testing.store_contract import outbound


class _Transport:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def abortConnection(self) -> None:
        self.aborted = True


class _Connection:
    """A connection the link has taken over (what ``_Protocol`` is to it)."""

    connected = True

    def __init__(self) -> None:
        self.transport = _Transport()


class GroupCommitTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = RedisStore(self.clock, parse_url("redis://127.0.0.1:1/0?pool=1"))
        self.link = self.store._links[0]
        self.conn = _Connection()
        self.link.protocol = self.conn

    def written(self) -> list[Any]:
        """The commands written since the last look, parsed."""
        data = b"".join(self.conn.transport.data)
        self.conn.transport.data.clear()
        return Parser().feed(data)

    def test_writes_wait_for_the_reply_then_leave_as_one_batch(self) -> None:
        """A batch in flight: the next two turns' record writes share one held batch,
        written as one EVALSHA at the end of the turn that reads the reply; each
        shared write fires with its own reply."""
        first = self.store.putOutbound("c1", outbound(1))
        self.clock.advance(0)
        self.assertEqual([c[:2] for c in self.written()], [[b"EVALSHA", SHAS["batch"]]])
        second = self.store.putOutbound("c1", outbound(2))
        self.clock.advance(0)
        third = self.store.dropOutbound("c1", 1)
        self.clock.advance(0)
        self.assertEqual(self.written(), [])  # held behind the unanswered batch
        self.assertIs(second, third)
        self.assertIsNot(first, second)
        fired: list[Any] = []
        first.addBoth(lambda r: fired.append(("first", r)))
        second.addBoth(lambda r: fired.append(("second", r)))
        self.link.answered(self.conn, [1])
        self.assertEqual(fired, [("first", 1)])
        self.clock.advance(0)
        commands = self.written()
        self.assertEqual(len(commands), 1)
        self.assertEqual(commands[0][:3], [b"EVALSHA", SHAS["batch"], b"2"])
        self.link.answered(self.conn, [1])
        self.assertEqual(fired, [("first", 1), ("second", 1)])

    def test_other_commands_are_held_in_order(self) -> None:
        """A plain command made while a batch is unanswered is held too, and leaves
        after the batch it followed, in the same write."""
        self.store.putOutbound("c1", outbound(1))
        self.clock.advance(0)
        self.written()
        self.store.putOutbound("c1", outbound(2))
        self.store.countRetained()
        self.clock.advance(0)
        self.assertEqual(self.written(), [])
        self.link.answered(self.conn, [1])
        self.clock.advance(0)
        self.assertEqual([c[0] for c in self.written()], [b"EVALSHA", b"HLEN"])

    def test_more_replies_than_written_drop_the_connection(self) -> None:
        """A reply beyond the commands written (the held ones are not written yet) is
        not RESP the link asked for: it aborts the connection instead of answering a
        held call."""
        self.store.putOutbound("c1", outbound(1))
        self.clock.advance(0)
        held = self.store.countRetained()  # a turn later: held behind the batch
        self.link.answered(self.conn, [1, 7])
        self.assertTrue(self.conn.transport.aborted)
        self.assertFalse(held.called)
        held.addErrback(lambda _: None)
        held.cancel()
