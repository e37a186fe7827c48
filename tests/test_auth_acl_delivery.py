"""Deliveries under an ACL: a wildcard subscription that only overlaps a deny rule is
granted, and each message it would bring is checked against the rules (as Mosquitto
does), cached per session: the overlap test, the authorizers' read answers, the sans-IO
broker (live, offline queue, retained, shared, reload, identity change) and paho over a
real socket."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mqtt_twisted.auth import AllowAnonymous
from mqtt_twisted.auth.acl import AclAuthorizer, AllAuthorizers, filters_overlap, parse_acl
from mqtt_twisted.codec import Publish, SubAck
from mqtt_twisted.core import readcheck
from mqtt_twisted.interfaces import IReadAuthorizer
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.testing import FakeClient, make_broker
from tests.certs import temp_dir
from tests.securebroker import SecureBrokerTestCase

ACL = """\
topic write #

user alice
topic read a/#
topic deny a/secret/#
topic read b/#

user bob
topic read a/#
"""


def topics(packets: list[Any]) -> list[str]:
    return [p.topic for p in packets if isinstance(p, Publish)]


class OverlapTests(SynchronousTestCase):
    def test_overlap(self) -> None:
        """Exact: some topic matches both, or none does."""
        cases = [("a/#", "a", True), ("a/#", "b", False), ("a/+", "a/b", True),
                 ("a/+", "a/b/c", False), ("+/+", "a/b", True), ("a/+/c", "a/b/+", True),
                 ("a/b", "a/c", False), ("#", "a/b", True), ("a/b/#", "a/+", True),
                 ("a", "a/b", False), ("+", "$SYS", False), ("#", "$SYS/x", False),
                 ("$SYS/#", "$SYS/x", True), ("a/b/c", "a/b", False)]
        for first, second, expected in cases:
            self.assertEqual(filters_overlap(first, second), expected, (first, second))
            self.assertEqual(filters_overlap(second, first), expected, (second, first))

    def test_acl_needs_check(self) -> None:
        """Only a filter that a deny rule overlaps (without covering it) is checked per
        topic; a $share filter is its inner filter."""
        acl = AclAuthorizer(parse_acl(ACL, "f"))
        self.assertTrue(verifyObject(IReadAuthorizer, acl))
        self.assertTrue(acl.filterNeedsReadCheck("alice", "c", "a/#"))
        self.assertTrue(acl.filterNeedsReadCheck("alice", "c", "a/+/x"))
        self.assertTrue(acl.filterNeedsReadCheck("alice", "c", "$share/g/a/#"))
        self.assertFalse(acl.filterNeedsReadCheck("alice", "c", "a/open/#"))
        self.assertFalse(acl.filterNeedsReadCheck("alice", "c", "b/#"))
        self.assertFalse(acl.filterNeedsReadCheck("bob", "c", "a/#"))
        self.assertFalse(acl.mayRead("alice", "c", "a/secret/x"))
        self.assertTrue(acl.mayRead("alice", "c", "a/x"))
        self.assertTrue(acl.mayRead("bob", "c", "a/secret/x"))

    def test_all_authorizers(self) -> None:
        """Combined: checked when one member needs it; members that do not check reads
        (they decided at SUBSCRIBE) do not refuse."""
        acl = AclAuthorizer(parse_acl(ACL, "f"))
        both = AllAuthorizers([acl, AllowAnonymous()])
        self.assertTrue(verifyObject(IReadAuthorizer, both))
        self.assertTrue(both.filterNeedsReadCheck("alice", "c", "a/#"))
        self.assertFalse(both.filterNeedsReadCheck("alice", "c", "b/#"))
        self.assertFalse(both.mayRead("alice", "c", "a/secret"))
        self.assertTrue(both.mayRead("alice", "c", "a/open"))


class BrokerTests(SynchronousTestCase):
    """The sans-IO broker with the ACL as its authorizer."""

    def setUp(self) -> None:
        self.acl = AclAuthorizer(parse_acl(ACL, "f"))
        self.broker, self.clock = make_broker(authorizer=self.acl)
        self.publisher = FakeClient(self.broker)
        self.publisher.connect("pub")

    def client(self, client_id: str, username: str, clean: bool = True) -> FakeClient:
        client = FakeClient(self.broker)
        client.connect(client_id, clean=clean, username=username)
        return client

    def publish_all(self, *names: str, qos: int = 0, retain: bool = False) -> None:
        for name in names:
            self.publisher.publish(name, b"x", qos, retain)

    def test_live(self) -> None:
        """alice's a/# gets everything under a/ but a/secret/...; bob's gets all; a
        session without such a filter has no read check at all."""
        alice = self.client("alice-1", "alice")
        bob = self.client("bob-1", "bob")
        (ack,) = alice.subscribe("a/#", "b/#")
        self.assertEqual(ack.reason_codes, [0, 0])
        bob.subscribe("a/#")
        self.assertIsNotNone(self.broker.sessions["alice-1"].read_check)
        self.assertIsNone(self.broker.sessions["bob-1"].read_check)
        self.publish_all("a/x", "a/secret", "a/secret/deep", "b/y", "a/z")
        self.assertEqual(topics(alice.received()), ["a/x", "b/y", "a/z"])
        self.assertEqual(topics(bob.received()), ["a/x", "a/secret", "a/secret/deep", "a/z"])

    def test_offline_queue_and_qos1(self) -> None:
        """Nothing denied is queued for an offline persistent session."""
        alice = self.client("alice-q", "alice", clean=False)
        alice.subscribe("a/#", qos=1)
        alice.drop()
        self.publish_all("a/1", "a/secret/1", "a/2", qos=1)
        session = self.broker.sessions["alice-q"]
        self.assertEqual([o.message.topic for o in session.outbound], ["a/1", "a/2"])
        again = FakeClient(self.broker)
        received = again.connect("alice-q", clean=False, username="alice")
        self.assertEqual(topics(received), ["a/1", "a/2"])

    def test_retained(self) -> None:
        """A new a/# subscriber gets the retained messages it may read, no others."""
        self.publish_all("a/r1", "a/secret/r", "a/r2", retain=True)
        alice = self.client("alice-r", "alice")
        received = alice.subscribe("a/#")
        self.assertIsInstance(received[0], SubAck)
        self.assertEqual(sorted(topics(received)), ["a/r1", "a/r2"])

    def test_shared(self) -> None:
        """A share group member is checked like any subscriber."""
        alice = self.client("alice-s", "alice")
        alice.subscribe("$share/g/a/#")
        self.publish_all("a/secret/s", "a/open")
        self.assertEqual(topics(alice.received()), ["a/open"])

    def test_identity_change(self) -> None:
        """The session's check follows who resumes it: bob (allowed a/secret) taking
        over alice's persistent session gets no check; alice again gets it back."""
        alice = self.client("shared-id", "alice", clean=False)
        alice.subscribe("a/#")
        self.assertIsNotNone(self.broker.sessions["shared-id"].read_check)
        bob = self.client("shared-id", "bob", clean=False)
        self.assertIsNone(self.broker.sessions["shared-id"].read_check)
        self.publish_all("a/secret/b")
        self.assertEqual(topics(bob.received()), ["a/secret/b"])
        alice = self.client("shared-id", "alice", clean=False)
        self.publish_all("a/secret/c", "a/d")
        self.assertEqual(topics(alice.received()), ["a/d"])

    def test_cache_bounded(self) -> None:
        """The per-session answer cache stays within its size."""
        alice = self.client("alice-c", "alice")
        alice.subscribe("a/#")
        check = self.broker.sessions["alice-c"].read_check
        for n in range(readcheck.CACHE_SIZE + 10):
            self.assertTrue(check(f"a/{n}"))
        self.assertLessEqual(len(check.__self__.answers), readcheck.CACHE_SIZE)

    def test_reload(self) -> None:
        """BrokerService.reload (SIGHUP) re-decides every session's check: a deny rule
        added to the file stops the deliveries of an existing subscription."""
        path = os.path.join(temp_dir(self), "acl")
        with open(path, "w") as f:
            f.write("topic write #\nuser carol\ntopic read c/#\n")
        acl = AclAuthorizer.from_file(path)
        reactor = MemoryReactorClock()
        service = BrokerService(reactor, MemoryStore(reactor), None, None, acl)
        # As make_broker: this clock ends no turn, so a CONNECT past the turn's gate budget
        # (time-based: a slow moment on a loaded machine) would wait forever.
        service.broker.gate.budget = 0
        carol = FakeClient(service.broker)
        carol.connect("carol-1", username="carol")
        carol.subscribe("c/#")
        publisher = FakeClient(service.broker)
        publisher.connect("p")
        publisher.publish("c/hidden", b"1")
        self.assertEqual(topics(carol.received()), ["c/hidden"])
        with open(path, "w") as f:
            f.write("topic write #\nuser carol\ntopic read c/#\ntopic deny c/hidden\n")
        service.reload()
        publisher.publish("c/hidden", b"2")
        publisher.publish("c/open", b"3")
        self.assertEqual(topics(carol.received()), ["c/open"])


class EndToEndTests(SecureBrokerTestCase):
    """paho over a real socket (anonymous authentication: the identity is the user name)."""

    @inlineCallbacks
    def test_paho_wildcard_filtered(self) -> Any:
        """A paho a/# subscriber of alice gets only what she may read, at QoS 0 and 1;
        bob's gets everything."""
        acl = AclAuthorizer(parse_acl(ACL, "f"))
        (port,) = yield self.start("tcp:0:interface=127.0.0.1", authorizer=acl)
        alice = yield self.paho(port, "alice", username="alice")
        bob = yield self.paho(port, "bob", username="bob")
        self.assertEqual((yield alice.subscribe(("a/#", 1))), [1])
        self.assertEqual((yield bob.subscribe(("a/#", 1))), [1])
        pub = yield self.paho(port, "pub")
        for topic, qos in [("a/1", 0), ("a/secret/1", 1), ("a/secret", 0), ("a/2", 1)]:
            yield pub.publish(topic, b"m", qos)
        yield pub.publish("a/end", b"", 1)
        got = yield alice.collect_until("a/end")
        self.assertEqual([m.topic for m in got], ["a/1", "a/2"])
        got = yield bob.collect_until("a/end")
        self.assertEqual([m.topic for m in got], ["a/1", "a/secret/1", "a/secret", "a/2"])


class PublishGrantTests(SynchronousTestCase):
    """The ACL's answers to one connection's PUBLISH topics are kept on the connection
    (``stableAnswers``), and forgotten when the file is reloaded."""

    def test_cached_then_reloaded(self) -> None:
        path = os.path.join(temp_dir(self), "acl")
        with open(path, "w") as f:
            f.write("topic readwrite t/#\n")
        acl = AclAuthorizer.from_file(path)
        reactor = MemoryReactorClock()
        service = BrokerService(reactor, MemoryStore(reactor), None, None, acl)
        # As make_broker: this clock ends no turn, so a CONNECT past the turn's gate budget
        # (time-based: a slow moment on a loaded machine) would wait forever.
        service.broker.gate.budget = 0
        sub = FakeClient(service.broker)
        sub.connect("sub")
        sub.subscribe("t/#")
        pub = FakeClient(service.broker)
        pub.connect("pub")
        pub.publish("t/a", b"1")
        self.assertEqual(pub.connection.publish_grants, {"t/a": True})
        self.assertEqual(topics(sub.received()), ["t/a"])
        with open(path, "w") as f:
            f.write("topic read t/#\ntopic write t/b\n")
        service.reload()
        self.assertEqual(pub.connection.publish_grants, {})
        pub.publish("t/a", b"2")
        pub.publish("t/b", b"3")
        self.assertEqual(topics(sub.received()), ["t/b"])

    def test_not_cached_for_other_authorizers(self) -> None:
        """An authorizer without stableAnswers is asked for every PUBLISH."""
        asked: list[str] = []

        class Counting:
            def mayPublish(self, identity: Any, clientId: Any, topic: str) -> bool:
                asked.append(topic)
                return True

            def maySubscribe(self, identity: Any, clientId: Any, topicFilter: str) -> bool:
                return True

        broker, _ = make_broker(authorizer=Counting())
        pub = FakeClient(broker)
        pub.connect("pub")
        pub.publish("t/a")
        pub.publish("t/a")
        self.assertIsNone(pub.connection.publish_grants)
        self.assertEqual(asked, ["t/a", "t/a"])
