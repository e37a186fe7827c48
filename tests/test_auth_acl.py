"""Mosquitto ACL files (``--acl FILE``): the parser and its errors with line numbers,
the rules (user sections, patterns with %u and %c, deny wins, the anonymous section,
readwrite by default, ``$share``), the combination with an auth backend's authorizer,
SIGHUP reload, refusals on the wire (paho 3.1.1 and 5, raw v5 PUBACK) and twistd's
one-line start-up error."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mqtt_twisted.auth import AllowAnonymous
from mqtt_twisted.auth.acl import (
    READ,
    WRITE,
    AclAuthorizer,
    AllAuthorizers,
    filter_covers,
    parse_acl,
    read_acl,
)
from mqtt_twisted.codec import Connect, PubAck, Publish
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.errors import ValidationError
from mqtt_twisted.interfaces import IAuthorizer
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore
from mqtt_twisted.tap import Options, makeService
from tests.certs import temp_dir
from tests.pahoclient import connect_raw
from tests.redisserver import free_port
from tests.securebroker import SecureBrokerTestCase
from tests.test_twistd_run import TwistdTestCase, _listen

ACL = """\
# anonymous clients
topic read public/#
topic anon/box

user alice
topic readwrite a/#
topic deny a/secret
topic write   w/only
topic read sensors/+/temp

user bob
topic read a/#

# every client
pattern read clients/%c/#
pattern readwrite users/%u/+
"""


class ParserTests(SynchronousTestCase):
    """Every line type is read; a malformed line is an error naming the file and line."""

    def test_line_types(self) -> None:
        """topic lines before any user are anonymous ones; user sections; patterns apply
        to all; no access word is readwrite; comments and blank lines are ignored."""
        acl = parse_acl(ACL, "f")
        self.assertEqual([(sorted(r.access), r.topic_filter) for r in acl.anonymous],
                         [([READ], "public/#"), ([READ, WRITE], "anon/box")])
        self.assertEqual(sorted(acl.users), ["alice", "bob"])
        self.assertEqual([(sorted(r.access), r.topic_filter, r.line)
                          for r in acl.users["alice"]],
                         [([READ, WRITE], "a/#", 6), (["deny"], "a/secret", 7),
                          ([WRITE], "w/only", 8), ([READ], "sensors/+/temp", 9)])
        self.assertEqual([r.topic_filter for r in acl.patterns],
                         ["clients/%c/#", "users/%u/+"])

    def test_user_twice_and_spaces(self) -> None:
        """A user named twice keeps both sections; a user name and a topic may hold
        spaces; tabs separate words too."""
        acl = parse_acl("user a b\ntopic x y\nuser c\ntopic z\nuser a b\ntopic\tread q\n", "f")
        self.assertEqual([r.topic_filter for r in acl.users["a b"]], ["x y", "q"])

    def test_errors(self) -> None:
        cases = [
            ("bogus a/b", "unknown line 'bogus'"),
            ("topic", "expected topic [read|write|readwrite|deny] FILTER"),
            ("topic read", "expected a topic filter"),
            ("pattern", "expected pattern"),
            ("user", "expected user USERNAME"),
            ("topic read a/#/b", "'#' must be the whole last level"),
            ("topic a/b+", "'+' must fill a whole level"),
            ("pattern read %u/x#", "'#' must be the whole last level"),
            ("topic $share/g/a", "a $share/ filter cannot be a rule"),
        ]
        for line, message in cases:
            e = self.assertRaises(ValidationError, parse_acl, f"# h\nuser x\n\n{line}\n",
                                  "/etc/mqtt/acl")
            self.assertTrue(str(e).startswith("/etc/mqtt/acl:4: "), (line, str(e)))
            self.assertIn(message, str(e), line)

    def test_not_utf8(self) -> None:
        path = os.path.join(temp_dir(self), "acl")
        with open(path, "wb") as f:
            f.write(b"topic a\ntopic \xff\n")
        self.assertEqual(str(self.assertRaises(ValidationError, read_acl, path)),
                         f"{path}:2: not UTF-8")


class RuleTests(SynchronousTestCase):
    """What an ACL allows and refuses."""

    def setUp(self) -> None:
        self.acl = AclAuthorizer(parse_acl(ACL, "f"))

    def test_verify(self) -> None:
        self.assertTrue(verifyObject(IAuthorizer, self.acl))
        self.assertTrue(verifyObject(IAuthorizer, AllAuthorizers([self.acl])))

    def test_user_section(self) -> None:
        """alice: readwrite a/#, write-only w/only, read-only sensors/+/temp."""
        pub, sub = self.acl.mayPublish, self.acl.maySubscribe
        self.assertTrue(pub("alice", "c", "a/b"))
        self.assertTrue(sub("alice", "c", "a/b/+"))
        self.assertTrue(sub("alice", "c", "a/#"))
        self.assertTrue(pub("alice", "c", "w/only"))
        self.assertFalse(sub("alice", "c", "w/only"))
        self.assertTrue(sub("alice", "c", "sensors/x/temp"))
        self.assertTrue(sub("alice", "c", "sensors/+/temp"))
        self.assertFalse(sub("alice", "c", "sensors/#"))
        self.assertFalse(pub("alice", "c", "sensors/x/temp"))
        self.assertFalse(pub("bob", "c", "a/b"))  # bob: read only
        self.assertTrue(sub("bob", "c", "a/b"))
        self.assertFalse(sub("alice", "c", "public/x"))  # anonymous rules are not hers
        self.assertFalse(pub("carol", "c", "a/b"))  # not in the file: patterns only

    def test_deny_wins(self) -> None:
        """a/# allows, deny a/secret refuses; a filter only overlapping it is allowed."""
        self.assertFalse(self.acl.mayPublish("alice", "c", "a/secret"))
        self.assertFalse(self.acl.maySubscribe("alice", "c", "a/secret"))
        self.assertTrue(self.acl.maySubscribe("alice", "c", "a/+"))
        acl = AclAuthorizer(parse_acl("topic readwrite #\ntopic deny a/#\n", "f"))
        self.assertFalse(acl.maySubscribe(None, "c", "a/b/+"))
        self.assertFalse(acl.mayPublish(None, "c", "a"))
        self.assertTrue(acl.mayPublish(None, "c", "b"))

    def test_anonymous_section(self) -> None:
        """Lines before the first user are for clients without a user name."""
        self.assertTrue(self.acl.maySubscribe(None, "c", "public/x/y"))
        self.assertFalse(self.acl.mayPublish(None, "c", "public/x"))
        self.assertTrue(self.acl.mayPublish(None, "c", "anon/box"))  # readwrite default
        self.assertTrue(self.acl.maySubscribe(None, "c", "anon/box"))
        self.assertFalse(self.acl.mayPublish(None, "c", "a/b"))

    def test_patterns(self) -> None:
        """%c and %u are the client id and the user name; %u lines skip anonymous
        clients; a wildcard in either refuses."""
        sub, pub = self.acl.maySubscribe, self.acl.mayPublish
        self.assertTrue(sub("carol", "dev1", "clients/dev1/#"))
        self.assertTrue(sub(None, "dev1", "clients/dev1/x"))
        self.assertFalse(sub("carol", "dev1", "clients/dev2/x"))
        self.assertFalse(pub("carol", "dev1", "clients/dev1/x"))
        self.assertTrue(pub("carol", "dev1", "users/carol/x"))
        self.assertFalse(pub("carol", "dev1", "users/alice/x"))
        self.assertFalse(pub(None, "dev1", "users/None/x"))
        self.assertFalse(sub("carol", "dev+", "clients/dev+/x"))
        self.assertFalse(sub("ca#", "dev1", "users/ca#"))

    def test_share(self) -> None:
        """$share/GROUP/F is checked as F."""
        self.assertTrue(self.acl.maySubscribe("alice", "c", "$share/g/a/x"))
        self.assertFalse(self.acl.maySubscribe("alice", "c", "$share/g/a/secret"))
        self.assertFalse(self.acl.maySubscribe("alice", "c", "$share/g/w/only"))

    def test_identity_object(self) -> None:
        """An identity that is not a string gives its ``username`` (a JWT identity)."""

        class Who:
            username = "alice"

        self.assertTrue(self.acl.mayPublish(Who(), "c", "a/b"))

    def test_jwt_identity_section(self) -> None:
        """A JWT identity picks a user section by the name the token proves: its user
        name only when usernameClaim checked it, else its subject.  bob's token sent
        with the user name alice gets bob's rules, not alice's."""
        from mqtt_twisted.auth.jwt import JWTIdentity

        unchecked = JWTIdentity("bob", "alice", {})
        self.assertFalse(self.acl.mayPublish(unchecked, "c", "a/b"))
        self.assertFalse(self.acl.maySubscribe(unchecked, "c", "sensors/+/temp"))
        checked = JWTIdentity("alice-sub", "alice", {}, username_verified=True)
        self.assertTrue(self.acl.mayPublish(checked, "c", "a/b"))
        self.assertTrue(self.acl.maySubscribe(checked, "c", "sensors/+/temp"))
        by_subject = JWTIdentity("bob", None, {})
        self.assertTrue(self.acl.maySubscribe(by_subject, "c", "a/#"))

    def test_covers(self) -> None:
        """The covering test: sound, level by level."""
        yes = [("a/#", "a/b/+"), ("a/#", "a"), ("a/#", "a/#"), ("#", "#"), ("+/b", "+/b"),
               ("+/b", "x/b"), ("a/b", "a/b"), ("+/#", "x/+/#")]
        no = [("a/+", "a/#"), ("a/b", "a/+"), ("a/+", "a/b/c"), ("a/+", "a"),
              ("#", "$SYS/x"), ("+/x", "$SYS/x"), ("a/b/c", "a/b"), ("a", "a/#")]
        for rule, f in yes:
            self.assertTrue(filter_covers(rule, f), (rule, f))
        for rule, f in no:
            self.assertFalse(filter_covers(rule, f), (rule, f))

    def test_cache(self) -> None:
        """Answers are cached, at most cache_size of them, and emptied on reload."""
        acl = AclAuthorizer(parse_acl(ACL, "f"), cache_size=3)
        for i in range(10):
            acl.mayPublish("alice", f"c{i}", "a/b")
            self.assertLessEqual(len(acl._cache), 3)


class CombinedTests(SynchronousTestCase):
    """The ACL and a backend's own authorizer must both allow."""

    def test_both_must_allow(self) -> None:
        acl = AclAuthorizer(parse_acl("topic readwrite a/#\n", "f"))

        class No(AllowAnonymous):
            def mayPublish(self, identity: Any, clientId: Any, topic: str) -> Any:
                return succeed(topic != "a/no")

        both = AllAuthorizers([acl, No()])
        self.assertTrue(self.successResultOf(both.mayPublish(None, "c", "a/yes")))
        self.assertFalse(self.successResultOf(both.mayPublish(None, "c", "a/no")))
        self.assertIs(both.mayPublish(None, "c", "b"), False)  # the ACL said no first
        self.assertIs(both.maySubscribe(None, "c", "a/+"), True)

    def test_tap(self) -> None:
        """--acl FILE makes the ACL the broker's authorizer, with --auth anonymous too."""
        path = os.path.join(temp_dir(self), "acl")
        with open(path, "w") as f:
            f.write(ACL)
        options = Options()
        options.parseOptions(["--acl", path])
        service = makeService(options, MemoryReactorClock())
        self.assertIsInstance(service.broker.authorizer, AclAuthorizer)
        self.assertIsNone(service.broker.authenticator)

    def test_reload_on_sighup(self) -> None:
        """BrokerService.reload re-reads the ACL; a broken file keeps the old rules."""
        path = os.path.join(temp_dir(self), "acl")
        with open(path, "w") as f:
            f.write("topic a\n")
        acl = AclAuthorizer.from_file(path)
        reactor = MemoryReactorClock()
        service = BrokerService(reactor, MemoryStore(reactor), None, None, acl)
        self.assertTrue(acl.mayPublish(None, "c", "a"))
        with open(path, "w") as f:
            f.write("topic b\n")
        service.reload()
        self.assertFalse(acl.mayPublish(None, "c", "a"))
        self.assertTrue(acl.mayPublish(None, "c", "b"))
        with open(path, "w") as f:
            f.write("broken\n")
        self.assertFalse(acl.reload())
        self.assertTrue(acl.mayPublish(None, "c", "b"))
        self.flushLoggedErrors()
        combined = AllAuthorizers([acl, AllowAnonymous()], reloadable=[acl])
        with open(path, "w") as f:
            f.write("topic c\n")
        BrokerService(reactor, MemoryStore(reactor), None, None, combined).reload()
        self.assertTrue(acl.mayPublish(None, "c", "c"))

    def test_paho_interop_acl(self) -> None:
        """The Paho interop suite's test_subscribe_failure: readwrite # and deny
        test/nosubscribe refuses that subscription, allows the others."""
        acl = AclAuthorizer(parse_acl("topic readwrite #\ntopic deny test/nosubscribe\n",
                                      "f"))
        self.assertFalse(acl.maySubscribe(None, "c", "test/nosubscribe"))
        self.assertTrue(acl.maySubscribe(None, "c", "test/+"))
        self.assertTrue(acl.maySubscribe(None, "c", "TopicA/#"))
        self.assertFalse(acl.mayPublish(None, "c", "test/nosubscribe"))


class EndToEndTests(SecureBrokerTestCase):
    """An in-process broker with an ACL (anonymous authentication: the identity is the
    CONNECT's user name)."""

    @inlineCallbacks
    def start_with_acl(self) -> Any:
        acl = AclAuthorizer(parse_acl(ACL, "f"))
        (port,) = yield self.start("tcp:0:interface=127.0.0.1", authorizer=acl)
        return port

    @inlineCallbacks
    def test_subscribe_refused(self) -> Any:
        """paho 3.1.1 gets 0x80 for a refused filter, v5 gets 0x87; allowed ones get
        their QoS."""
        import paho.mqtt.client as mqtt

        port = yield self.start_with_acl()
        c311 = yield self.paho(port, "s311", username="alice", password="x")
        codes = yield c311.subscribe(("a/secret", 1), ("a/+", 1), ("public/#", 0))
        self.assertEqual(codes, [0x80, 1, 0x80])
        c5 = yield self.paho(port, "s5", protocol=mqtt.MQTTv5, username="bob")
        codes = yield c5.subscribe(("w/only", 0), ("$share/g/a/b", 1))
        self.assertEqual(codes, [ReasonCode.NOT_AUTHORIZED, 1])

    @inlineCallbacks
    def test_publish_refused(self) -> Any:
        """A PUBLISH the ACL refuses reaches no subscriber; MQTT 5 QoS 1 gets PUBACK 0x87."""
        port = yield self.start_with_acl()
        sub = yield self.paho(port, "sub", username="bob")
        self.assertEqual((yield sub.subscribe(("a/#", 1))), [1])
        anon = yield self.paho(port, "anon")
        yield anon.publish("a/x", b"refused", 1)
        raw = yield connect_raw(self.reactor, port, version=5)
        self.addCleanup(raw.abort)
        raw.send(Connect("raw5", 5, True, 0, None, "carol", None))
        yield raw.next_packet()
        raw.send(Publish("a/x", b"refused too", 1, packet_id=7))
        ack = yield raw.expect(PubAck)
        self.assertEqual((ack.packet_id, ack.reason_code), (7, ReasonCode.NOT_AUTHORIZED))
        alice = yield self.paho(port, "alice", username="alice")
        yield alice.publish("a/secret", b"denied", 1)
        yield alice.publish("a/end", b"allowed", 1)
        self.assertEqual((yield sub.collect_until("a/end")), [])


class TwistdTests(TwistdTestCase):
    """``twistd -n mqttbroker --acl ...`` with a file that cannot be used."""

    @inlineCallbacks
    def test_one_line_errors(self) -> Any:
        """A missing file and a malformed line end twistd with one line and status 2."""
        bad = self.directory() / "acl"
        bad.write_text("topic a\ntopic read a/#/b\n")
        cases = [("/missing", "cannot read ACL file /missing: No such file or directory"),
                 (str(bad), f"{bad}:2: '#' must be the whole last level")]
        procs = [self.twistd("-n", "mqttbroker", "--listen", _listen(free_port()),
                             "--acl", arg) for arg, _ in cases]
        for (arg, message), proc in zip(cases, procs):
            code = yield self.ended(proc)
            self.assertEqual(code, 2, proc.text)
            line = self.assertOneLine(proc.text, "error", f"--acl '{arg}'", message)
            self.assertTrue(line.startswith("twistd mqttbroker: error: "), proc.text)
