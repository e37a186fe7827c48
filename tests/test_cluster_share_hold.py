"""A share copy from a peer's stream given to a clean member is in its node's memory
only, so its stream entry is acknowledged (XACK) only once the copy is done with: the
member acknowledged it, it went to another member, or it was given up as on one node
(issue 16, "Share groups, at the edges").  A dead node's adopter then finds the entry
pending and gives it to a live member; its own subscribers, who had the message from
its own stream, do not get it twice.  Sans-IO: a sans-IO broker with FakeClients, the
cluster router, a recording link, and the inbox and the drain on fake Redis
connections."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.cluster.drain import Drain
from mqtt_twisted.cluster.inbox import InboxReader
from mqtt_twisted.cluster.link import NodeLink
from mqtt_twisted.cluster.router import ClusterRouter
from mqtt_twisted.cluster.routes import SHARE
from mqtt_twisted.cluster.shared import OWN
from mqtt_twisted.codec.packets import Publish, PubRec
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import StorageError
from mqtt_twisted.message import Message
from mqtt_twisted.testing import FakeClient, make_broker
from tests.test_cluster_batch import blob, fake_node
from tests.test_cluster_router import RecordingLink

KEY = "$share/g/s/#"


def publishes(client: FakeClient) -> list[Publish]:
    return [p for p in client.received() if isinstance(p, Publish)]


class HoldTests(SynchronousTestCase):
    """The write a share copy from the stream holds its entry's XACK with."""

    def setUp(self) -> None:
        self.broker, self.clock = make_broker(BrokerSettings(max_inflight=2))
        self.link = RecordingLink()
        self.router = ClusterRouter(self.broker.router, "A", self.link,
                                    self.broker.journal.persist)
        self.broker.router = self.router
        self.broker.delivery.hold = self.router.hold_copy  # as ClusterNode.install does
        self.member = self.join("member")

    def join(self, client_id: str, clean: bool = True, qos: int = 1) -> FakeClient:
        client = FakeClient(self.broker)
        client.connect(client_id, clean=clean)
        client.subscribe(KEY, qos=qos)
        return client

    def receive(self, topic: str = "s/1", qos: int = 1) -> list[Any]:
        """A peer's copy naming the group, as the inbox delivers it: the writes its
        XACK waits for."""
        return self.broker.journal.writes_of(
            self.router.receive, Message(topic, b"p", qos, False), "B", [KEY])[1]

    def test_acknowledged_by_the_member(self) -> None:
        """QoS 1: the entry waits until the member's PUBACK; a copy queued behind a
        full window waits too, until it is sent and acknowledged in turn."""
        writes = [self.receive(f"s/{i}") for i in range(3)]
        self.assertEqual([len(w) for w in writes], [1, 1, 1])
        sent = publishes(self.member)
        self.assertEqual([p.topic for p in sent], ["s/0", "s/1"])  # the third is queued
        self.assertEqual([w[0].called for w in writes], [False] * 3)
        [third] = [p for p in self.member.ack(sent[0]) if isinstance(p, Publish)]
        self.assertEqual([w[0].called for w in writes], [True, False, False])
        self.member.ack(sent[1])
        self.member.ack(third)
        self.assertEqual([w[0].called for w in writes], [True] * 3)

    def test_one_write_for_the_copies_of_one_entry(self) -> None:
        """The copies one delivery from the stream makes share one write, which fires
        once the last of them is acknowledged."""

        def entry() -> None:
            for i in range(2):
                self.router.receive(Message(f"s/{i}", b"p", 1, False), "B", [KEY])

        [write] = self.broker.journal.writes_of(entry)[1]
        sent = publishes(self.member)
        self.member.ack(sent[1])
        self.assertFalse(write.called)
        self.member.ack(sent[0])
        self.assertTrue(write.called)

    def test_qos2_done_at_pubrec(self) -> None:
        """QoS 2: the client has the message once it sends PUBREC; another member
        given it after that would have it twice."""
        self.member.unsubscribe(KEY)
        member = self.join("two", qos=2)
        [write] = self.receive(qos=2)
        [packet] = publishes(member)
        self.assertFalse(write.called)
        member.send(PubRec(packet.packet_id))  # type: ignore[arg-type]
        self.assertTrue(write.called)

    def test_nothing_held_for_a_persistent_member_a_local_message_or_qos0(self) -> None:
        """A persistent member's copy is stored (the store's write is what waits; the
        memory store's is done at once); a message published here was acknowledged to
        its publisher already; QoS 0 is at most once."""
        self.member.unsubscribe(KEY)
        durable = self.join("durable", clean=False)
        self.assertEqual(self.receive(), [])
        self.assertEqual(self.receive(qos=0), [])
        publisher = FakeClient(self.broker)
        publisher.connect("pub")
        self.assertEqual(self.broker.journal.writes_of(publisher.publish, "s/2", b"x", 1)[1],
                         [])
        self.assertEqual(len(publishes(durable)), 3)

    def test_handed_to_another_member_here(self) -> None:
        """The member leaves before acknowledging: the copy goes to the other member
        here and the entry waits for that one's PUBACK instead."""
        other = self.join("other")
        writes = self.receive() + self.receive()  # one each, round robin
        sent = publishes(other)
        self.assertEqual(len(sent), 1)
        self.member.drop()
        self.assertEqual([w.called for w in writes], [False, False])
        sent += publishes(other)
        self.assertEqual(len(sent), 2)  # its own and the member's
        for packet in sent:
            other.ack(packet)
        self.assertEqual([w.called for w in writes], [True, True])

    def test_handed_to_a_qos0_member(self) -> None:
        """The other member subscribed at QoS 0: its copy is at most once, so the
        entry does not wait for it (a queued QoS 0 copy is never acknowledged)."""
        other = self.join("other", qos=0)
        other.connection.paused = True  # (its copy queues)
        writes = self.receive() + self.receive()
        [mine] = [w for w in writes if not w.called]
        self.member.drop()
        self.assertTrue(mine.called)

    def test_sent_on_to_another_node(self) -> None:
        """No other member here, one on C: the copy goes to C's stream and the entry
        waits until Redis has it there (a failed XADD leaves it pending)."""
        self.router.routes.apply(SHARE, "C", KEY, 1)
        self.router.shared_weights[KEY] = 1
        [first] = self.receive()
        [second] = self.receive()
        self.member.drop()
        self.assertEqual([c[:2] for c in self.link.of("append")], [("append", "C")] * 2)
        failed: list[Any] = []
        second.addErrback(failed.append)
        self.link.appends[0].callback(b"9-0")
        self.link.appends[1].errback(StorageError("Redis connection lost"))
        self.assertTrue(first.called)
        self.assertEqual(len(failed), 1)

    def test_given_up_when_nobody_can_take_it(self) -> None:
        """No other member anywhere: lost as on one node, and the entry goes on; a
        clean start that replaces the session likewise."""
        [write] = self.receive()
        self.member.drop()
        self.assertTrue(write.called)
        member = self.join("member")
        [write] = self.receive()
        again = FakeClient(self.broker)
        again.connect("member")  # the same client id, clean: the old session goes
        self.assertTrue(write.called)
        self.assertEqual(len(publishes(member)), 1)


    def test_a_copy_sent_on_is_for_the_group_only(self) -> None:
        """A copy another node sent on for a group (``resent``) does not reach the
        plain subscribers here: they had the message's own copy (a dead node's adopter
        sends its share copies on, and they came twice)."""
        plain = FakeClient(self.broker)
        plain.connect("plain")
        plain.subscribe("s/#", qos=1)
        self.broker.journal.writes_of(self.router.receive, Message("s/1", b"p", 1, False),
                                      "B", [KEY], True)
        self.assertEqual(len(publishes(self.member)), 1)
        self.assertEqual(publishes(plain), [])


class InboxHoldTests(SynchronousTestCase):
    """The inbox acknowledges an entry held by a share copy once the copy is done, and
    a read from the start meanwhile does not deliver it again."""

    def setUp(self) -> None:
        self.broker, self.clock = make_broker()
        self.node = fake_node(self.broker, self.clock)
        self.held: Deferred[Any] = Deferred()
        self.got: list[str] = []

        def receive(message: Message, *rest: Any) -> None:
            self.got.append(message.topic)
            self.broker.journal.persist(self.held)

        self.node.router = SimpleNamespace(plain_receiver=lambda: None, receive=receive)
        self.reader = InboxReader(self.node)  # type: ignore[arg-type]
        self.reader.start()

    def test_not_again_after_a_lost_connection(self) -> None:
        read = self.node.reader
        entry = (b"1-0", [b"o", b"B", b"m", blob("s/1"), b"d", b"A", b"g", b"0" + KEY.encode()])
        read.replies[0].callback([[b"s:A", [entry]]])
        self.assertEqual(self.got, ["s/1"])
        lost = StorageError("Redis connection lost")
        read.replies[1].errback(lost)  # the next read: its connection is gone
        self.clock.advance(0.5)  # read again from the first pending entry: it comes back
        self.assertEqual(read.sent[2][-1], b"0")
        read.replies[2].callback([[b"s:A", [entry]]])
        self.assertEqual(self.got, ["s/1"])  # not delivered twice
        self.assertEqual(self.node.commands.sent, [])  # nor acknowledged yet
        self.held.callback(None)  # the member acknowledged it
        self.assertEqual(self.node.commands.sent, [(b"XACK", b"s:A", b"A", b"1-0")])
        self.node.commands.replies[0].callback(1)
        self.assertEqual(self.reader._waiting, set())


class DrainOwnTests(SynchronousTestCase):
    """The adopter's own sessions had a message from its own stream when the adopter
    was among its destinations: the dead node's copy goes to the adopted sessions and
    the groups it names only."""

    def test_own_sessions_skipped_when_they_had_it(self) -> None:
        broker, clock = make_broker()
        node = fake_node(broker, clock)
        node.keys.shared = lambda n: b"sh:" + n.encode()
        node.router = ClusterRouter(broker.router, "A", NodeLink(node),  # type: ignore[arg-type]
                                    broker.journal.persist)
        broker.router = node.router
        own, adopted, member = FakeClient(broker), FakeClient(broker), FakeClient(broker)
        own.connect("own")
        adopted.connect("adopted")
        member.connect("member")
        own.subscribe("s/#")
        adopted.subscribe("s/#")
        member.subscribe(KEY)
        drain = Drain(node, "Z", None, {"adopted"})  # type: ignore[arg-type]
        g = b"0" + KEY.encode()
        items = [[blob("s/0", qos=0), b"A,Z", g], [blob("s/1", qos=0), b"Z", g]]
        for index in range(2):
            drain._deliver_one(b"5-0", "B", items, index)
        drain._deliver_one(b"5-1", "A", items, 1)  # published here: delivered here then
        self.assertEqual([p.topic for p in publishes(own)], ["s/1"])
        self.assertEqual([p.topic for p in publishes(adopted)], ["s/0", "s/1", "s/1"])
        self.assertEqual([p.topic for p in publishes(member)], ["s/0", "s/1", "s/1"])
        self.assertEqual(drain.skipped, 2)


class ShareHandoverTests(SynchronousTestCase):
    """The only member of a group leaves for node B: A keeps the group registered
    (weight 0) and forwards the group's copies to B as directed entries naming it; B
    delivers them into the session's ``$share`` subscription."""

    def setUp(self) -> None:
        from mqtt_twisted.cluster.handover import release_session
        from mqtt_twisted.cluster.moved import Moved

        self.broker, self.clock = make_broker()
        node = self.node = fake_node(self.broker, self.clock)
        node.keys.shared = lambda n: b"sh:" + n.encode()
        node.link = NodeLink(node)  # type: ignore[arg-type]
        node.router = ClusterRouter(self.broker.router, "A", node.link,
                                    self.broker.journal.persist)
        self.broker.router = node.router
        node.moved = node.router.moved = Moved(node)  # type: ignore[arg-type]
        node.router.leaving = node.moved.leaving
        mover = FakeClient(self.broker)
        mover.connect("mover", clean=False)
        mover.subscribe(KEY, qos=1)
        session = self.broker.sessions["mover"]
        node.moved.left("mover", "B", session.subscriptions)
        node.commands.sent.clear()
        release_session(self.broker, "mover")

    def directed(self) -> list[tuple[Any, ...]]:
        return [c for c in self.node.commands.sent if c[0] == b"XADD" and b"c" in c]

    def test_registration_held_and_copies_forwarded(self) -> None:
        """Held at weight 0 while the member is away; a peer's copy naming the group
        and a copy of a message published here both go to B for the session."""
        router = self.node.router
        self.assertEqual(router.shared_weights, {KEY: 0})  # held, not removed
        router.receive(Message("s/1", b"p", 1, False), "C", [KEY])  # picked by C
        publisher = FakeClient(self.broker)
        publisher.connect("pub")
        publisher.publish("s/2", b"p", qos=1)  # published here: A picks itself
        self.clock.advance(0)
        entries = self.directed()
        self.assertEqual(len(entries), 2)
        for entry in entries:
            self.assertEqual(entry[1], b"s:B")
            fields = dict(zip(entry[6::2], entry[7::2]))
            self.assertEqual((fields[b"c"], fields[b"g"]), (b"mover", b"0" + KEY.encode()))
        self.node.moved.stop_forwarding("mover")  # the window is over: the group goes
        self.assertEqual(router.shared_weights, {})

    def test_delivered_into_the_share_subscription_on_the_new_node(self) -> None:
        """On the new node: into the session's $share subscription, as a group copy."""
        from mqtt_twisted.cluster.moved import Moved

        broker, clock = make_broker()
        node = fake_node(broker, clock)
        node.router = SimpleNamespace(receive=lambda *a: None)
        moved = Moved(node)  # type: ignore[arg-type]
        arrived = FakeClient(broker)
        arrived.connect("mover", clean=False)
        arrived.subscribe(KEY, qos=1)
        moved.directed("mover", Message("s/1", b"p", 1, False), None, [KEY])
        [packet] = publishes(arrived)
        self.assertEqual(packet.topic, "s/1")
        [out] = broker.sessions["mover"].outbound
        self.assertEqual(out.group, KEY)


class DrainHoldTests(SynchronousTestCase):
    """The adopter's drain does not wait for a held share copy before the next batch:
    a member slow to acknowledge holds back only its own entries' XACK."""

    def test_next_batch_before_the_held_xack(self) -> None:
        broker, clock = make_broker()
        node = fake_node(broker, clock)
        node.keys.shared = lambda n: b"sh:" + n.encode()
        node.turns = SimpleNamespace(longest=0.0)
        node.router = ClusterRouter(broker.router, "A", NodeLink(node),  # type: ignore[arg-type]
                                    broker.journal.persist)
        broker.router = node.router
        broker.delivery.hold = node.router.hold_copy
        member = FakeClient(broker)
        member.connect("member")
        member.subscribe(KEY, qos=1)
        node.commands.sent.clear()  # (the group's registration)
        node.commands.replies.clear()
        drain = Drain(node, "Z", None, set())  # type: ignore[arg-type]
        done = drain.run()
        sent, replies = node.commands.sent, node.commands.replies
        entry = (b"1-0", [b"o", b"B", b"m", blob("s/1"), b"d", b"Z", b"g",
                          b"0" + KEY.encode()])
        replies[0].callback([b"0-0", [entry]])  # XAUTOCLAIM: one pending entry
        [packet] = publishes(member)
        self.assertEqual(sent[1][0], b"XREADGROUP")  # on, without waiting for the member
        replies[1].callback(None)  # nothing unread
        self.assertEqual(len(sent), 2)  # no XACK yet
        self.assertNoResult(done)
        member.ack(packet)
        self.assertEqual(sent[2], (b"XACK", b"s:Z", b"Z", b"1-0"))
        replies[2].callback(1)
        self.assertEqual(self.successResultOf(done), 1)


class OwnStreamTests(SynchronousTestCase):
    """A QoS 1/2 message published here that this node serves a group with, whose
    members here include a clean one, goes through this node's own stream (issue 16:
    the copy, in this node's memory only, was lost with the node): the publisher waits
    for the entry, the group's copy comes when the entry is read back, and the entry
    is held until the copy is done with, as a peer's copy is."""

    def setUp(self) -> None:
        self.broker, self.clock = make_broker()
        self.link = RecordingLink()
        self.router = ClusterRouter(self.broker.router, "A", self.link,
                                    self.broker.journal.persist)
        self.broker.router = self.router
        self.broker.delivery.hold = self.router.hold_copy
        self.member = FakeClient(self.broker)
        self.member.connect("member")
        self.member.subscribe(KEY, qos=1)
        self.plain = FakeClient(self.broker)
        self.plain.connect("plain")
        self.plain.subscribe("s/#", qos=1)
        self.publisher = FakeClient(self.broker)
        self.publisher.connect("pub")

    def publish(self, qos: int = 1) -> list[Any]:
        """A publish here: the writes its acknowledgement waits for."""
        return self.broker.journal.writes_of(self.publisher.publish, "s/1", b"x", qos)[1]

    def read_back(self) -> list[Any]:
        """The entry as this node's inbox delivers it: the writes its XACK waits for."""
        return self.broker.journal.writes_of(
            self.router.receive, Message("s/1", b"x", 1, False), "A", [KEY], OWN)[1]

    def test_through_own_stream_and_held(self) -> None:
        """Into A's own stream naming the group (kind OWN); the PUBACK waits for it; the
        plain subscriber has its copy at once and not again when the entry is read back;
        the member has its copy from the entry, which waits for its PUBACK."""
        writes = self.publish()
        self.assertEqual(self.link.of("append"), [("append", "A", "s/1", (KEY,), OWN)])
        self.assertEqual(writes, self.link.appends)
        self.assertEqual(publishes(self.member), [])
        self.assertEqual(len(publishes(self.plain)), 1)
        [held] = self.read_back()
        [copy] = publishes(self.member)
        self.assertEqual(publishes(self.plain), [])  # (none since)
        self.assertFalse(held.called)
        self.member.ack(copy)
        self.assertTrue(held.called)

    def test_persistent_members_and_qos0_served_at_once(self) -> None:
        """Nothing goes through the stream for QoS 0 (at most once) nor for a group of
        persistent members only (their copies are stored)."""
        self.assertEqual(self.publish(qos=0), [])
        self.assertEqual(len(publishes(self.member)), 1)
        self.member.unsubscribe(KEY)
        durable = FakeClient(self.broker)
        durable.connect("durable", clean=False)
        durable.subscribe(KEY, qos=1)
        self.publish()
        self.assertEqual(len(publishes(durable)), 1)
        self.assertEqual(self.link.of("append"), [])

    def test_sent_on_once_when_the_member_is_gone(self) -> None:
        """The member left before the entry was read back (or the node died and its
        adopter has no member): the copy goes to a node with one, as a copy sent on
        (not sent on again), and reaches no plain subscriber."""
        self.publish()
        self.router.routes.apply(SHARE, "C", KEY, 1)
        self.member.drop()
        self.assertEqual(len(publishes(self.plain)), 1)
        self.read_back()
        self.assertEqual(self.link.of("append")[1:], [("append", "C", "s/1", (KEY,), True)])
        self.assertEqual(publishes(self.plain), [])
