"""The cluster router and route table, sans-IO: a sans-IO broker with FakeClients, the
cluster router in front of its local router, and a recording link instead of Redis."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mqtt_twisted.cluster.router import ClusterRouter
from mqtt_twisted.cluster.routes import (
    ADD,
    REMOVE,
    RESET,
    RouteTable,
    decode_change,
    encode_change,
)
from mqtt_twisted.codec.packets import PubAck, Publish, PubRec
from mqtt_twisted.interfaces import IRouter
from mqtt_twisted.message import Message
from mqtt_twisted.testing import FakeClient, make_broker


class RecordingLink:
    """What the router asks of Redis, recorded; QoS 1/2 appends wait until fired."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.appends: list[Deferred[Any]] = []

    def register(self, f: str) -> None:
        self.calls.append(("register", f))

    def unregister(self, f: str) -> None:
        self.calls.append(("unregister", f))

    def share(self, key: str, weight: int) -> None:
        self.calls.append(("share", key, weight))

    def unshare(self, key: str) -> None:
        self.calls.append(("unshare", key))

    def publish(self, node: str, message: Message, groups: list[str] | None = None,
                resent: bool = False) -> None:
        extra = (tuple(groups), resent) if groups else ()
        self.calls.append(("publish", node, message.topic, *extra))

    def append(self, node: str, message: Message, destinations: bytes = b"",
               groups: list[str] | None = None, resent: bool = False,
               seq: int = 0) -> Deferred[Any]:
        extra = (tuple(groups), resent) if groups else ()
        self.calls.append(("append", node, message.topic, *extra))
        d: Deferred[Any] = Deferred()
        self.appends.append(d)
        return d

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]


class BatchLink(RecordingLink):
    """A link that registers several filters in one call, as ``NodeLink`` does."""

    def register_many(self, filters: list[str]) -> None:
        self.calls.append(("register_many", list(filters)))


class RouteTableTests(SynchronousTestCase):
    """Remote filters -> nodes, kept from a snapshot and change notifications."""

    def test_match_once_per_node(self) -> None:
        """Overlapping filters of one node give that node once; this node's own
        changes are ignored (the local router has them)."""
        table = RouteTable("A")
        table.apply(ADD, "B", "a/#")
        table.apply(ADD, "B", "a/+")
        table.apply(ADD, "C", "a/b")
        table.apply(ADD, "A", "a/b")
        self.assertEqual(table.nodes_for("a/b"), {"B", "C"})
        self.assertEqual(table.nodes_for("x"), set())
        table.apply(REMOVE, "B", "a/#")
        self.assertEqual(table.nodes_for("a/b/c"), set())
        table.apply(RESET, "C")
        self.assertEqual(table.nodes_for("a/b"), {"B"})

    def test_changes_heard_during_a_resync_apply_after_it(self) -> None:
        """A change published while the snapshot is read is applied after the
        snapshot, whichever side of it the change fell."""
        table = RouteTable("A")
        table.apply(ADD, "B", "old")
        table.begin_sync()
        table.apply(ADD, "C", "new")       # after the snapshot was taken
        table.apply(REMOVE, "B", "gone")   # before it: the snapshot still has it
        self.assertEqual(table.nodes_for("new"), set())  # held
        table.end_sync({"B": ["gone", "kept"], "A": ["mine"]})
        self.assertEqual(table.nodes_for("new"), {"C"})
        self.assertEqual(table.nodes_for("gone"), set())
        self.assertEqual(table.nodes_for("kept"), {"B"})
        self.assertEqual(table.nodes_for("old"), set())
        self.assertEqual(table.nodes_for("mine"), set())

    def test_change_encoding(self) -> None:
        """Notifications round-trip; anything else is a ValueError."""
        self.assertEqual(decode_change(encode_change(ADD, "n", "a/+")), (ADD, "n", "a/+"))
        for bad in (b"", b"\x93\x01\x02\x03", encode_change(b"?", "n", "f")):
            self.assertRaises(ValueError, decode_change, bad)


class ClusterRouterTests(SynchronousTestCase):
    """The router on a sans-IO broker."""

    def setUp(self) -> None:
        self.broker, self.clock = make_broker()
        self.link = RecordingLink()
        self.router = ClusterRouter(self.broker.router, "A", self.link,
                                    self.broker.journal.persist)
        self.broker.router = self.router
        self.router.routes.apply(ADD, "B", "t/#")
        self.router.routes.apply(ADD, "C", "t/c")

    def test_provides_irouter(self) -> None:
        """It is an IRouter."""
        self.assertTrue(verifyObject(IRouter, self.router))

    def test_filter_registered_on_first_and_removed_after_last(self) -> None:
        """A filter is registered once, for its first local subscriber, and removed
        after the last one."""
        one, two = FakeClient(self.broker), FakeClient(self.broker)
        one.connect("one")
        two.connect("two")
        one.subscribe("s/1", "s/2")
        two.subscribe("s/1")
        one.subscribe("s/1", qos=1)  # replaces: no new registration
        self.assertEqual(self.link.of("register"), [("register", "s/1"), ("register", "s/2")])
        one.unsubscribe("s/1")
        self.assertEqual(self.link.of("unregister"), [])
        two.disconnect()  # a clean session: its subscriptions go
        self.assertEqual(self.link.of("unregister"), [("unregister", "s/1")])
        self.assertEqual(self.router.filters(), ["s/2"])

    def test_one_registration_per_subscribe(self) -> None:
        """A link with ``register_many`` gets one SUBSCRIBE's new filters in one call
        (one Redis write a packet): a filter already routed here, a repeated one and a
        shared one are not in it; every filter is routed locally."""
        link = BatchLink()
        self.router.link = link
        one, two = FakeClient(self.broker), FakeClient(self.broker)
        one.connect("one")
        two.connect("two")
        one.subscribe("s/1")
        two.subscribe("s/1", "s/2", "s/+", "s/2", "$share/g/s/3")
        self.assertEqual(link.of("register_many"), [("register_many", ["s/1"]),
                                                    ("register_many", ["s/2", "s/+"])])
        self.assertEqual(link.of("register"), [])
        self.assertEqual(sorted(self.router.filters()), ["s/+", "s/1", "s/2"])
        self.assertEqual(sorted(c for c, _ in self.router.local.tree.match("s/2")),
                         ["two", "two"])
        two.disconnect()
        self.assertEqual(link.of("unregister"), [("unregister", "s/2"),
                                                 ("unregister", "s/+")])

    def test_share_group_registered_by_key_with_its_weight(self) -> None:
        """``$share/g/f`` registers the group's key (not ``f``: a group's message goes
        to one node, not to each) with its online members as weight; the group goes
        after its last member."""
        c, d = FakeClient(self.broker), FakeClient(self.broker)
        c.connect("c")
        d.connect("d")
        c.subscribe("$share/g/a/+", "a/+")
        d.subscribe("$share/g/a/+")
        self.assertEqual(self.link.of("register"), [("register", "a/+")])
        self.assertEqual(self.link.of("share"), [("share", "$share/g/a/+", 1),
                                                 ("share", "$share/g/a/+", 2)])
        c.unsubscribe("a/+")
        self.assertEqual(self.link.of("unregister"), [("unregister", "a/+")])
        c.unsubscribe("$share/g/a/+")
        d.unsubscribe("$share/g/a/+")
        self.assertEqual(self.link.of("share")[-1], ("share", "$share/g/a/+", 1))
        self.assertEqual(self.link.of("unshare"), [("unshare", "$share/g/a/+")])
        self.assertEqual(self.router.shared_weights, {})

    def test_forwarded_once_per_matching_node(self) -> None:
        """QoS 0 goes to each node with a match once, and is delivered locally too."""
        sub, pub = FakeClient(self.broker), FakeClient(self.broker)
        sub.connect("sub")
        sub.subscribe("t/#")
        pub.connect("pub")
        pub.publish("t/c", b"x")
        self.assertEqual(sorted(self.link.of("publish")),
                         [("publish", "B", "t/c"), ("publish", "C", "t/c")])
        pub.publish("t/b", b"x")
        pub.publish("nobody", b"x")
        self.assertEqual(len(self.link.of("publish")), 3)
        self.assertEqual([p.topic for p in sub.received() if isinstance(p, Publish)],
                         ["t/c", "t/b"])

    def test_peer_message_is_not_forwarded_nor_retained(self) -> None:
        """A peer's message is delivered here only: not sent on, not stored again."""
        sub = FakeClient(self.broker)
        sub.connect("sub")
        sub.subscribe("t/#")
        self.router.receive(Message("t/c", b"p", 0, True), "B")
        self.assertEqual(self.link.of("publish"), [])
        self.assertEqual([p.topic for p in sub.received() if isinstance(p, Publish)], ["t/c"])
        self.assertIsNone(self.broker.store.getRetained("t/c").result)
        self.assertEqual(self.router.received, 1)

    def test_sys_counts(self) -> None:
        """$SYS/broker/cluster/... says the node's name, the copies sent to peers (one per
        node), the messages from peers and the remote filters known; and the cluster
        totals: this node's counters plus those the alive peers wrote to Redis."""
        from types import SimpleNamespace

        from mqtt_twisted.cluster.sysstats import ClusterStats
        from mqtt_twisted.core.systopics import SysTopics

        node = SimpleNamespace(broker=self.broker, keys=SimpleNamespace(prefix=b"p:"),
                               group=b"A")
        stats = ClusterStats(node)  # type: ignore[arg-type]
        self.router.totals = stats.sys_values
        pub = FakeClient(self.broker)
        pub.connect("pub")
        pub.subscribe("s/1")
        pub.publish("t/c", b"x")  # to B and C
        self.router.receive(Message("t/c", b"p", 0, False), "B")
        stats._exchanged([b"B", b"3 10 20 4", b"C", b"1 1 1 1", b"D", b"not counters"])
        values = SysTopics(self.broker).values(self.clock.seconds())
        self.assertEqual({k: v for k, v in values.items() if k.startswith("cluster/")}, {
            "cluster/node": "A", "cluster/peers/messages/forwarded": "2",
            "cluster/peers/messages/received": "1", "cluster/routes": "2",
            "cluster/clients/connected": "5", "cluster/messages/received": "12",
            "cluster/messages/sent": "21", "cluster/subscriptions/count": "6",
            "cluster/nodes/alive": "3"})

    def test_no_matching_subscribers_only_when_no_node_has_one(self) -> None:
        """MQTT 5's PUBACK 0x10 and the gateway's count (the HTTP bridge's
        "subscribers") count the peer nodes a message went to: a topic only B has a
        filter for is answered 0 and counts 1; one nobody has, 0x10 and 0."""
        pub = FakeClient(self.broker, version=5)
        pub.connect("pub")
        pub.publish("t/b", b"1", qos=1)
        self.link.appends[-1].callback(b"1-0")
        [ack] = pub.received()
        self.assertEqual((type(ack), ack.reason_code), (PubAck, 0))
        [ack] = pub.publish("nobody", b"2", qos=1)
        self.assertEqual((type(ack), ack.reason_code), (PubAck, 0x10))
        from mqtt_twisted.gateway import Gateway

        gateway = Gateway(self.broker)
        counts: list[int] = []
        gateway.publish(Message("t/c", b"3", 0, False)).addCallback(counts.append)
        gateway.publish(Message("nobody", b"4", 0, False)).addCallback(counts.append)
        self.assertEqual(counts, [2, 0])  # B and C; nobody

    def test_sys_topics_stay_on_the_node(self) -> None:
        """$SYS messages are this node's: never forwarded."""
        self.router.routes.apply(ADD, "B", "$SYS/#")
        self.broker.route(Message("$SYS/broker/uptime", b"1", 0, False))
        self.assertEqual(self.link.calls, [])

    def test_qos1_puback_waits_for_redis(self) -> None:
        """The publisher's PUBACK (QoS 1) and PUBREC (QoS 2) wait until Redis has the
        stream entry for every destination node."""
        pub = FakeClient(self.broker)
        pub.connect("pub")
        self.assertEqual(pub.publish("t/c", b"1", qos=1), [])
        self.assertEqual(len(self.link.appends), 2)
        self.link.appends[0].callback(b"1-0")
        self.assertEqual(pub.received(), [])
        self.link.appends[1].callback(b"1-1")
        self.assertEqual([type(p) for p in pub.received()], [PubAck])
        self.assertEqual(pub.publish("t/b", b"2", qos=2), [])
        self.link.appends[2].callback(b"2-0")
        self.assertEqual([type(p) for p in pub.received()], [PubRec])


class HandoverTests(SynchronousTestCase):
    """Sessions moving between nodes: the Connector's locate_session seam, and the
    node that lets a session go (handover.release_session)."""

    def setUp(self) -> None:
        self.broker, self.clock = make_broker()

    def test_located_session_is_resumed(self) -> None:
        """A session found on another node is restored before the CONNECT claims it:
        CONNACK says session present, and its subscription works; the CONNACK waits
        for the answer."""
        from mqtt_twisted.codec.packets import ConnAck
        from mqtt_twisted.core.session import SubscriptionOptions
        from mqtt_twisted.store.memory import StoredSession

        asked: list[str] = []
        answer: Deferred[Any] = Deferred()

        def locate(client_id: str) -> Deferred[Any]:
            asked.append(client_id)
            return answer

        self.broker.locate_session = locate
        state = StoredSession("mover")
        state.expiryInterval = None
        state.disconnectedAt = 0.0
        state.subscriptions["m/#"] = SubscriptionOptions(1)
        client = FakeClient(self.broker)
        self.assertEqual(client.connect("mover", clean=False), [])
        self.assertEqual(asked, ["mover"])
        answer.callback(state)
        [connack] = client.received()
        self.assertIsInstance(connack, ConnAck)
        self.assertTrue(connack.session_present)
        self.broker.route(Message("m/x", b"p", 1, False))
        self.assertEqual([p.topic for p in client.received() if isinstance(p, Publish)],
                         ["m/x"])

    def _retried(self) -> tuple[Deferred[Any], Any, FakeClient]:
        """A client's CONNECT waits for its session from another node; the client gives
        up after 10 s and connects again 1.03 s later."""
        from mqtt_twisted.store.memory import StoredSession

        answer: Deferred[Any] = Deferred()
        asked: list[str] = []
        self.broker.locate_session = lambda client_id: asked.append(client_id) or answer
        first = FakeClient(self.broker)
        self.assertEqual(first.connect("mover", clean=False), [])
        self.clock.advance(10.0)
        first.drop()
        self.clock.advance(1.03)
        retry = FakeClient(self.broker)
        self.assertEqual(retry.connect("mover", clean=False), [])
        self.assertEqual(asked, ["mover"])  # the session is asked for once
        state = StoredSession("mover")
        state.expiryInterval = None
        state.disconnectedAt = 0.0
        return answer, state, retry

    def test_retry_waits_for_the_session_on_its_way(self) -> None:
        """The retry waits for the earlier CONNECT's session, not for the client id's
        lock: that wait ran out (connect_store_timeout, 10 s) and answered "server
        unavailable" (v3 0x03) to a client whose session was on its way (a reconnect
        storm, docs/cluster.md).  Once the session is here the retry gets it."""
        from mqtt_twisted.codec.packets import ConnAck

        answer, state, retry = self._retried()
        self.clock.pump([10.0, 10.0])  # past the lock's wait and the retry's deadline
        self.assertEqual(retry.received(), [])
        self.assertFalse(retry.transport.closed)
        answer.callback(state)
        [connack] = retry.received()
        self.assertIsInstance(connack, ConnAck)
        self.assertEqual(connack.reason_code, 0)
        self.assertTrue(connack.session_present)

    def test_a_connect_being_answered_is_not_cut_off(self) -> None:
        """The CONNECT deadline (10 s) is the client's: a CONNECT that has come waits
        for its answer up to ANSWER_WAIT more (core/admission.py), then is cut off."""
        from mqtt_twisted.codec.packets import ConnAck
        from mqtt_twisted.core.admission import ANSWER_WAIT

        answers: list[Deferred[Any]] = []
        self.broker.locate_session = lambda client_id: answers.append(Deferred()) or answers[-1]
        slow, stuck = FakeClient(self.broker), FakeClient(self.broker)
        slow.connect("slow", clean=False)
        stuck.connect("stuck", clean=False)
        self.clock.pump([10.0, 20.0])  # (a Clock runs what is due at the end of a step)
        self.assertFalse(slow.transport.closed or stuck.transport.closed)
        answers[0].callback(None)
        [connack] = slow.received()
        self.assertIsInstance(connack, ConnAck)
        self.clock.advance(10.0 + ANSWER_WAIT - 30.0 + 0.1)
        self.assertTrue(stuck.transport.closed)
        self.assertFalse(slow.transport.closed)
        self.assertEqual(self.broker.stats.connect_timeouts, 1)

    def test_nothing_located_starts_fresh(self) -> None:
        """None from locate_session: a fresh session, as on one node."""
        from mqtt_twisted.codec.packets import ConnAck

        self.broker.locate_session = lambda client_id: None
        [connack] = FakeClient(self.broker).connect("new", clean=False)
        self.assertIsInstance(connack, ConnAck)
        self.assertFalse(connack.session_present)

    def test_release_takes_over_saves_and_forgets(self) -> None:
        """The node that had the session: its v5 connection gets DISCONNECT 0x8E, the
        session is stored with its subscriptions and queue, and is gone from here."""
        from mqtt_twisted.cluster.handover import release_session
        from mqtt_twisted.codec.packets import Disconnect

        client = FakeClient(self.broker, version=5)
        client.connect("mover", clean=False, properties={0x11: 300})
        client.subscribe("m/#", qos=1)
        self.broker.route(Message("m/x", b"p", 1, False))
        client.received()
        release_session(self.broker, "mover")
        [disconnect] = client.received()
        self.assertIsInstance(disconnect, Disconnect)
        self.assertEqual(disconnect.reason_code, 0x8E)
        self.assertNotIn("mover", self.broker.sessions)
        self.assertEqual(self.broker.router.match("m/x"), [])
        stored = self.broker.store.loadSession("mover").result
        self.assertEqual(list(stored.subscriptions), ["m/#"])
        self.assertEqual([o.message.topic for o in stored.outbound], ["m/x"])
        self.assertIsNone(release_session(self.broker, "nobody"))
