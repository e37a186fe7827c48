"""Share groups cluster-wide, sans-IO: the weighted choice of a node per group, the
route table's share entries, and the cluster router on a sans-IO broker with
FakeClients and a recording link instead of Redis (issue 16, part 2)."""

from __future__ import annotations

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.cluster.router import ClusterRouter
from mqtt_twisted.cluster.routes import (
    ADD,
    REMOVE,
    RESET,
    SHARE,
    RouteTable,
    decode_change,
    encode_change,
)
from mqtt_twisted.cluster.shared import OWN, SharedRoutes
from mqtt_twisted.codec.packets import Publish
from mqtt_twisted.message import Message
from mqtt_twisted.testing import FakeClient, make_broker
from tests.test_cluster_router import RecordingLink

KEY = "$share/g/s/#"


def topics(client: FakeClient) -> list[str]:
    return [p.topic for p in client.received() if isinstance(p, Publish)]


class SharedRoutesTests(SynchronousTestCase):
    """The choice of a node for a group's next message."""

    def test_split_follows_the_weights_exactly(self) -> None:
        """Smooth weighted round robin: 600 messages over weights 1, 2 and 3 are 100,
        200 and 300, interleaved (no node gets a long run)."""
        routes = SharedRoutes("A")
        picks = [routes.choose(KEY, {"A": 1, "B": 2, "C": 3}) for _ in range(600)]
        self.assertEqual(Counter(picks), {"A": 100, "B": 200, "C": 300})
        self.assertLessEqual(max(len(run) for run in "".join(picks).split("A")), 5)  # type: ignore[arg-type]

    def test_nodes_without_online_members_only_when_nobody_is_online(self) -> None:
        """Weight 0 (members, none online) is not picked while another node has an
        online member; with nobody online anywhere, every node in turn."""
        routes = SharedRoutes("A")
        self.assertEqual({routes.choose(KEY, {"A": 0, "B": 3, "C": 0}) for _ in range(20)},
                         {"B"})
        self.assertEqual(Counter(routes.choose(KEY, {"A": 0, "B": 0}) for _ in range(20)),
                         {"A": 10, "B": 10})
        self.assertEqual(routes.choose(KEY, {"A": 5, "B": 1}, exclude="A"), "B")
        self.assertIsNone(routes.choose(KEY, {"A": 5}, exclude="A"))
        self.assertIsNone(routes.choose(KEY, {}))

    def test_table_keeps_share_changes_apart_from_filters(self) -> None:
        """SHARE changes set a node's weight for a group key, REMOVE of a key drops
        it, RESET drops everything of a node; a snapshot carries the weights."""
        table = RouteTable("A")
        table.apply(SHARE, "B", KEY, 2)
        table.apply(SHARE, "C", KEY, 1)
        table.apply(SHARE, "A", KEY, 7)  # this node's own: the local router has it
        table.apply(SHARE, "B", "$share/bad+/x", 1)  # malformed: ignored
        self.assertEqual(table.nodes_for("s/1"), set())  # not a plain route
        self.assertEqual([(k, dict(n)) for k, n in table.shared.match("s/1")],
                         [(KEY, {"B": 2, "C": 1})])
        table.apply(REMOVE, "C", KEY)
        self.assertEqual(table.shared.groups, {KEY: {"B": 2}})
        table.apply(ADD, "B", "p")
        table.apply(RESET, "B")
        self.assertEqual((table.shared.groups, table.by_node), ({}, {}))
        table.begin_sync()
        table.apply(SHARE, "C", KEY, 4)  # heard while the snapshot is read
        table.end_sync({"B": ["p"]}, {"B": {KEY: 1}, "A": {KEY: 9}})
        self.assertEqual(table.shared.groups, {KEY: {"B": 1, "C": 4}})
        self.assertEqual(table.nodes_for("p"), {"B"})

    def test_stream_field_encoding(self) -> None:
        """The stream entry's ``g`` field round-trips the group keys and the sent-on mark."""
        from mqtt_twisted.cluster.shared import decode_groups, encode_groups

        for groups, resent in (([KEY], False), ([KEY, "$share/h/é/+"], True)):
            self.assertEqual(decode_groups(encode_groups(groups, resent)), (groups, resent))

    def test_share_change_encoding(self) -> None:
        """A SHARE change carries its weight; one without a weight is refused."""
        self.assertEqual(decode_change(encode_change(SHARE, "n", KEY, 3)), (SHARE, "n", KEY, 3))
        for bad in (encode_change(SHARE, "n", KEY), encode_change(ADD, "n", "f", 1),
                    encode_change(SHARE, "n", KEY, "3")):  # type: ignore[arg-type]
            self.assertRaises(ValueError, decode_change, bad)


class ClusterShareTests(SynchronousTestCase):
    """The cluster router with share groups: one member cluster-wide per message."""

    def setUp(self) -> None:
        self.broker, self.clock = make_broker()
        self.link = RecordingLink()
        self.router = ClusterRouter(self.broker.router, "A", self.link,
                                    self.broker.journal.persist)
        self.broker.router = self.router
        self.member = FakeClient(self.broker)
        self.member.connect("member")
        self.member.subscribe(KEY, qos=1)  # weight 1 here
        self.pub = FakeClient(self.broker)
        self.pub.connect("pub")

    def sent(self, kind: str = "publish") -> Counter[tuple[object, ...]]:
        return Counter(self.link.of(kind))

    def test_one_node_per_message_by_weight(self) -> None:
        """40 messages, weights A 1, B 2, C 1: 10 delivered here, 20 sent to B and 10
        to C naming the group; none to two places."""
        self.router.routes.apply(SHARE, "B", KEY, 2)
        self.router.routes.apply(SHARE, "C", KEY, 1)
        for i in range(40):
            self.pub.publish("s/t", b"%d" % i)
        self.assertEqual(len(topics(self.member)), 10)
        self.assertEqual(self.sent(), {("publish", "B", "s/t", (KEY,), False): 20,
                                       ("publish", "C", "s/t", (KEY,), False): 10})

    def test_plain_and_group_on_different_nodes(self) -> None:
        """B has a plain subscription and C the group: B's copy names no group, C's
        names it; QoS 1 copies are stream entries."""
        self.member.unsubscribe(KEY)
        self.router.routes.apply(ADD, "B", "s/#")
        self.router.routes.apply(SHARE, "C", KEY, 1)
        self.pub.publish("s/t", b"x", qos=1)
        self.assertEqual(sorted(self.link.of("append")), [
            ("append", "B", "s/t"), ("append", "C", "s/t", (KEY,), False)])

    def test_peer_copy_reaches_the_groups_it_names_only(self) -> None:
        """A copy from a peer goes to the plain subscriptions here, and to the group
        only when the copy names it (another node served the group otherwise)."""
        plain = FakeClient(self.broker)
        plain.connect("plain")
        plain.subscribe("s/#")
        self.router.receive(Message("s/1", b"p", 0, False), "B")
        self.router.receive(Message("s/2", b"p", 0, False), "B", [KEY])
        self.assertEqual(topics(plain), ["s/1", "s/2"])
        self.assertEqual(topics(self.member), ["s/2"])

    def test_copy_for_a_group_gone_from_here_is_sent_on_once(self) -> None:
        """The group's last member here left while a copy for it was on its way: it
        goes to a node that has a member, marked so that it is not sent on again."""
        self.member.unsubscribe(KEY)
        self.router.routes.apply(SHARE, "C", KEY, 1)
        self.assertEqual(self.router.receive(Message("s/1", b"p", 1, False), "B", [KEY]), 1)
        self.assertEqual(self.link.of("append"), [("append", "C", "s/1", (KEY,), True)])
        self.assertEqual(self.router.receive(Message("s/2", b"p", 1, False), "B", [KEY],
                                             resent=True), 0)
        self.assertEqual(len(self.link.of("append")), 1)

    def test_departing_member_messages_go_to_another_node(self) -> None:
        """A clean member leaves with an unacknowledged QoS 1 shared message and no
        other member here: the message goes to a node with a member."""
        self.router.routes.apply(SHARE, "B", KEY, 1)
        self.router.routes.apply(SHARE, "B", KEY, 0)  # B's member offline: A gets it
        self.pub.publish("s/t", b"x", qos=1)
        # Through A's own stream (a clean member: shared.has_clean_member), read back.
        self.assertEqual(self.link.of("append"), [("append", "A", "s/t", (KEY,), OWN)])
        self.router.receive(Message("s/t", b"x", 1, False), "A", [KEY], OWN)
        self.assertEqual(topics(self.member), ["s/t"])
        self.member.drop()
        self.assertEqual(self.link.of("append")[1:], [("append", "B", "s/t", (KEY,), True)])

    def test_weight_follows_online_members(self) -> None:
        """A persistent member whose client goes away counts 0 from the next refresh;
        back online, 1 again."""
        durable = FakeClient(self.broker)
        durable.connect("durable", clean=False)
        durable.subscribe(KEY)
        self.assertEqual(self.router.shared_weights, {KEY: 2})
        self.member.unsubscribe(KEY)
        durable.drop()
        self.router.refresh_weights()
        self.assertEqual(self.link.of("share")[-1], ("share", KEY, 0))
        again = FakeClient(self.broker)
        again.connect("durable", clean=False)
        self.router.refresh_weights()
        self.assertEqual(self.link.of("share")[-1], ("share", KEY, 1))

    def test_copy_for_offline_members_goes_to_an_online_one(self) -> None:
        """Only an offline persistent member here (a dead node's, restored by its
        adopter) while C has an online one: the group's copy goes to C; with nobody
        online anywhere it queues here."""
        durable = FakeClient(self.broker)
        durable.connect("durable", clean=False)
        durable.subscribe(KEY, qos=1)
        self.member.unsubscribe(KEY)
        durable.drop()
        self.router.refresh_weights()  # the tick: weight 0 here
        self.router.routes.apply(SHARE, "C", KEY, 1)
        self.router.receive(Message("s/1", b"p", 1, False), "B", [KEY])
        self.assertEqual(self.link.of("append"), [("append", "C", "s/1", (KEY,), True)])
        self.router.routes.apply(SHARE, "C", KEY, 0)
        self.router.receive(Message("s/2", b"p", 1, False), "B", [KEY])
        self.assertEqual(len(self.link.of("append")), 1)
        queued = [o.message.topic for o in self.broker.sessions["durable"].outbound]
        self.assertEqual(queued, ["s/2"])

    def test_many_members_restored_register_once(self) -> None:
        """2,000 offline members restored (an adoption): the group is registered once,
        weight 0, without counting the members again for each one."""
        from mqtt_twisted.core.session import SubscriptionOptions
        from mqtt_twisted.store.memory import StoredSession

        key = "$share/many/m/#"
        for i in range(2000):
            state = StoredSession(f"m{i}")
            state.expiryInterval = None
            state.disconnectedAt = 0.0
            state.subscriptions[key] = SubscriptionOptions(1)
            self.broker.restore_session(state)
        self.assertEqual([c for c in self.link.of("share") if c[1] == key], [("share", key, 0)])
        self.assertEqual(len(self.broker.router.local.shared_groups[key].members), 2000)
