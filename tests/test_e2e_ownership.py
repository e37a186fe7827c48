"""Sessions belong to their user (issue 13) on the wire: the takeover hole as regression
tests with real peers (paho 3.1.1 and 5, curl / Agent on the HTTP bridge), with JWT
(``--auth jwt``) and the password file (``--auth passwd:FILE`` with ``--acl``, through a
real twistd), in both ``--session-owner`` modes, and across a restart on Redis.

The hole, as measured before the fix: bob, whose token allows only ``B/``, connected
with alice's client id and received alice's queued and live ``A/`` messages, and the
two kicked each other off; ``GET /subscribe?client=dev-A`` with bob's token returned
alice's queued message.  The sans-IO tests of the rule are in tests/test_ownership.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import jwt
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest

from mqtt_twisted.auth.jwt import JWTAuthenticator, KeySource
from mqtt_twisted.codec import ConnAck, Connect
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core import inspection
from mqtt_twisted.core.ownership import foreign_key
from mqtt_twisted.core.settings import BrokerSettings
from tests.httpbroker import HTTPBrokerTestCase
from tests.pahoclient import PahoClient, connect_raw
from tests.pahov5 import PahoV5Client
from tests.redisserver import free_port
from tests.test_twistd_run import TwistdTestCase, _listen

SECRET = b"a shared secret of enough length!"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class _JWTBroker(HTTPBrokerTestCase):
    """A broker with --auth jwt:...:topicsClaim=acl (no usernameClaim: the token's
    subject is who the client is); alice may use A/, bob B/, ops both and is an admin."""

    settings = BrokerSettings(admin_users=frozenset({"ops"}))

    def setUp(self) -> Any:
        from twisted.internet import reactor

        self.authenticator = self.authorizer = JWTAuthenticator(
            KeySource.from_secret(SECRET), topics_claim="acl", clock=reactor.seconds)
        return super().setUp()

    def token(self, user: str) -> str:
        from twisted.internet import reactor

        acl = {"alice": ["A"], "bob": ["B"], "ops": ["A", "B"]}[user]
        return jwt.encode({"sub": user, "acl": acl, "exp": reactor.seconds() + 600},
                          SECRET, algorithm="HS256")

    @inlineCallbacks
    def client(self, user: str, client_id: str, *, v5: bool = False, clean: bool = True,
               username: str | None = None, expect: int = 0) -> Any:
        """A paho client of ``user`` (its token as password, the user name as given, by
        default its own), connected; the CONNACK code must be ``expect``."""
        name = user if username is None else username
        if v5:
            c: Any = PahoV5Client(self.reactor, self.mqtt_port, client_id, clean_start=clean,
                                  connect_properties={} if clean else
                                  {"SessionExpiryInterval": 3600},
                                  username=name, password=self.token(user))
        else:
            c = PahoClient(self.reactor, self.mqtt_port, client_id, clean_session=clean,
                           username=name, password=self.token(user))
        self.addCleanup(c.stop)
        result = yield c.connect()
        self.assertEqual(result.rc, expect)
        c.session_present = result.session_present
        return c

    @inlineCallbacks
    def alice_away_with_queue(self) -> Any:
        """alice (paho 3.1.1, dev-A, clean session 0) subscribes A/# and leaves; ops
        publishes A/1 and A/2 at QoS 1: both wait in her session."""
        alice = yield self.client("alice", "dev-A", clean=False)
        self.assertEqual((yield alice.subscribe(("A/#", 1))), [1])
        yield alice.disconnect()
        yield alice.stop()
        ops = yield self.client("ops", "ops")
        yield ops.publish("A/1", b"one", qos=1)
        yield ops.publish("A/2", b"two", qos=1)
        return ops


class JWTRefuseTests(_JWTBroker):
    """--session-owner refuse (the default)."""

    @inlineCallbacks
    def test_mqtt_takeover_hole_closed(self) -> Any:
        """bob with alice's client id: CONNACK 0x87 (paho 5) and 5 (paho 3.1.1, even
        with alice's user name beside bob's own token); alice then gets both queued
        messages, and bob's refused attempts while she is online do not kick her off."""
        ops = yield self.alice_away_with_queue()
        yield self.client("bob", "dev-A", v5=True, clean=False, expect=RC.NOT_AUTHORIZED)
        # paho 2 reports a 3.1.1 CONNACK's 5 as 0x87; the raw client sees the byte itself.
        yield self.client("bob", "dev-A", clean=False, username="alice",
                          expect=RC.NOT_AUTHORIZED)
        raw = yield connect_raw(self.reactor, self.mqtt_port)
        self.addCleanup(raw.abort)
        raw.send(Connect("dev-A", 4, False, 0, None, "alice", self.token("bob").encode()))
        self.assertEqual((yield raw.expect(ConnAck)).reason_code, 5)
        alice = yield self.client("alice", "dev-A", clean=False)
        self.assertTrue(alice.session_present)
        got = yield alice.collect(2)
        self.assertEqual([(m.topic, m.payload) for m in got], [("A/1", b"one"), ("A/2", b"two")])
        yield self.client("bob", "dev-A", v5=True, expect=RC.NOT_AUTHORIZED)
        yield self.client("bob", "dev-A", expect=RC.NOT_AUTHORIZED)
        yield ops.publish("A/live", b"live", qos=1)
        live = yield alice.next_message()
        self.assertEqual(live.payload, b"live")
        self.assertFalse(alice.is_disconnected)
        self.assertEqual(self.broker.stats.takeovers, 0)

    @inlineCallbacks
    def test_http_subscribe_with_foreign_client_is_403(self) -> Any:
        """GET /subscribe?client=dev-A with bob's token: 403 with a JSON body (0x87), and
        alice's queued messages stay for her; with alice's token the poll gets them."""
        yield self.alice_away_with_queue()
        answer = yield self.json("GET", "/subscribe?client=dev-A&topic=B/%23&timeout=0", 403,
                                 bearer(self.token("bob")))
        self.assertEqual(answer["reason_code"], 0x87)
        self.assertIn("another user", answer["error"])
        answer = yield self.json("POST", "/publish?client=dev-A&topic=B/x", 403,
                                 bearer(self.token("bob")), b"x")
        self.assertEqual(answer["reason_code"], 0x87)
        answer = yield self.json("GET", "/subscribe?client=dev-A&topic=A/%23&qos=1&timeout=0",
                                 200, bearer(self.token("alice")))
        self.assertEqual([m["payload"] for m in answer["messages"]], ["one", "two"])

    @inlineCallbacks
    def test_http_subscribe_does_not_kick_online_owner(self) -> Any:
        """With alice online over MQTT, bob's GET /subscribe?client=dev-A is 403 and
        alice's connection stays."""
        alice = yield self.client("alice", "dev-A")
        code, _, _ = yield self.curl("-H", f"Authorization: Bearer {self.token('bob')}",
                                     path="/subscribe?client=dev-A&topic=B/%23&timeout=0")
        self.assertEqual(code, 403)
        yield self.sleep(0.1)
        self.assertFalse(alice.is_disconnected)

    @inlineCallbacks
    def test_delete_session_owner_or_admin(self) -> Any:
        """DELETE /session?client=dev-A: 403 for bob, 204 for alice; and for ops, an
        --admin-user, on another session."""
        yield self.alice_away_with_queue()
        answer = yield self.json("DELETE", "/session?client=dev-A", 403,
                                 bearer(self.token("bob")))
        self.assertEqual(answer["reason_code"], 0x87)
        self.assertIsNotNone(inspection.session_info(self.broker, "dev-A"))
        code, _, _ = yield self.request("DELETE", "/session?client=dev-A",
                                        bearer(self.token("alice")))
        self.assertEqual(code, 204)
        self.assertIsNone(inspection.session_info(self.broker, "dev-A"))
        yield self.client("bob", "dev-B", clean=False)
        code, _, _ = yield self.curl("-H", f"Authorization: Bearer {self.token('ops')}",
                                     method="DELETE", path="/session?client=dev-B")
        self.assertEqual(code, 204)
        self.assertIsNone(inspection.session_info(self.broker, "dev-B"))


class JWTFreshTests(_JWTBroker):
    """--session-owner fresh: bob gets a clean session of his own beside alice's."""

    settings = BrokerSettings(session_owner="fresh")

    @inlineCallbacks
    def test_fresh_session_and_no_kicking(self) -> Any:
        """bob connecting as dev-A gets CONNACK 0 with session present 0 and none of
        alice's messages; alice resumes with both; both stay online; live A/ messages
        reach alice only, B/ ones bob."""
        ops = yield self.alice_away_with_queue()
        bob = yield self.client("bob", "dev-A", v5=True, clean=False)
        self.assertFalse(bob.session_present)
        yield bob.subscribe(("B/#", 1))
        alice = yield self.client("alice", "dev-A", clean=False)
        self.assertTrue(alice.session_present)
        got = yield alice.collect(2)
        self.assertEqual([m.payload for m in got], [b"one", b"two"])
        yield ops.publish("A/live", b"for alice", qos=1)
        yield ops.publish("B/live", b"for bob", qos=1)
        self.assertEqual((yield alice.next_message()).payload, b"for alice")
        self.assertEqual((yield bob.next_message()).payload, b"for bob")
        yield alice.no_message(0.2)
        self.assertEqual([m.topic for m in bob.received], ["B/live"])
        self.assertFalse(alice.is_disconnected or bob.is_disconnected)
        self.assertIn(foreign_key("dev-A", "bob"), inspection.session_ids(self.broker))

    @inlineCallbacks
    def test_http_still_refused(self) -> Any:
        """The HTTP bridge names sessions by the bare client id, so it is refused (403)
        in fresh mode too."""
        yield self.alice_away_with_queue()
        yield self.json("GET", "/subscribe?client=dev-A&topic=B/%23&timeout=0", 403,
                        bearer(self.token("bob")))


# --- the password file, through twistd ----------------------------------------------------


class _PasswdBroker(TwistdTestCase):
    """twistd with ``--auth passwd:FILE --acl FILE``: alice may use A/#, bob B/#, ops both
    (the password file written by the real mosquitto_passwd)."""

    def write_files(self) -> tuple[Any, Any]:
        """The password file (alice, bob, ops; pw-NAME) and the ACL file."""
        mosquitto_passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not os.access(mosquitto_passwd, os.X_OK):
            raise SkipTest("mosquitto_passwd is not installed (apt-get install mosquitto)")
        directory = self.directory()
        passwd = directory / "passwd"
        subprocess.run([mosquitto_passwd, "-c", "-b", str(passwd), "alice", "pw-alice"],
                       check=True)
        for user in ("bob", "ops"):
            subprocess.run([mosquitto_passwd, "-b", str(passwd), user, f"pw-{user}"],
                           check=True)
        acl = directory / "acl"
        acl.write_text("user alice\ntopic readwrite A/#\n\nuser bob\ntopic readwrite B/#\n\n"
                       "user ops\ntopic readwrite A/#\ntopic readwrite B/#\n")
        return passwd, acl

    def start(self, *extra: str) -> Any:
        passwd, acl = self.write_files()
        directory = passwd.parent
        self.port = free_port()
        proc = self.twistd("-n", "mqttbroker", "--listen", _listen(self.port),
                           "--auth", f"passwd:{passwd}", "--acl", str(acl), *extra,
                           cwd=directory)
        return self.wait_for_port(self.port, proc)

    @inlineCallbacks
    def client(self, user: str, client_id: str, *, v5: bool = False, clean: bool = True,
               expect: int = 0) -> Any:
        if v5:
            c: Any = PahoV5Client(self.reactor, self.port, client_id, clean_start=clean,
                                  connect_properties={} if clean else
                                  {"SessionExpiryInterval": 3600},
                                  username=user, password=f"pw-{user}")
        else:
            c = PahoClient(self.reactor, self.port, client_id, clean_session=clean,
                           username=user, password=f"pw-{user}")
        self.addCleanup(c.stop)
        result = yield c.connect()
        self.assertEqual(result.rc, expect)
        c.session_present = result.session_present
        return c

    @inlineCallbacks
    def alice_away_with_queue(self) -> Any:
        alice = yield self.client("alice", "dev-A", clean=False)
        self.assertEqual((yield alice.subscribe(("A/#", 1))), [1])
        yield alice.disconnect()
        yield alice.stop()
        ops = yield self.client("ops", "ops")
        yield ops.publish("A/1", b"one", qos=1)
        yield ops.publish("A/2", b"two", qos=1)
        return ops



class PasswdTwistdTests(_PasswdBroker):
    """``twistd -n mqttbroker --auth passwd:FILE --acl FILE [--session-owner ...]``."""

    @inlineCallbacks
    def test_refuse(self) -> Any:
        """The default: bob naming dev-A gets 0x87 (paho 5) / 5 (paho 3.1.1), before and
        while alice is online; alice gets her queue and stays connected."""
        yield self.start()
        ops = yield self.alice_away_with_queue()
        yield self.client("bob", "dev-A", v5=True, clean=False, expect=RC.NOT_AUTHORIZED)
        yield self.client("bob", "dev-A", clean=False, expect=RC.NOT_AUTHORIZED)  # paho: 5
        alice = yield self.client("alice", "dev-A", clean=False)
        self.assertTrue(alice.session_present)
        got = yield alice.collect(2)
        self.assertEqual([m.payload for m in got], [b"one", b"two"])
        yield self.client("bob", "dev-A", expect=RC.NOT_AUTHORIZED)
        yield ops.publish("A/live", b"live", qos=1)
        self.assertEqual((yield alice.next_message()).payload, b"live")
        self.assertFalse(alice.is_disconnected)

    @inlineCallbacks
    def test_fresh(self) -> Any:
        """--session-owner fresh: bob gets session present 0 and nothing of alice's; both
        stay online; A/ goes to alice only."""
        yield self.start("--session-owner", "fresh")
        ops = yield self.alice_away_with_queue()
        bob = yield self.client("bob", "dev-A", clean=False)
        self.assertFalse(bob.session_present)
        alice = yield self.client("alice", "dev-A", clean=False)
        self.assertTrue(alice.session_present)
        self.assertEqual([m.payload for m in (yield alice.collect(2))], [b"one", b"two"])
        yield ops.publish("A/live", b"live", qos=1)
        self.assertEqual((yield alice.next_message()).payload, b"live")
        yield bob.no_message(0.2)
        self.assertFalse(alice.is_disconnected or bob.is_disconnected)

    @inlineCallbacks
    def test_bad_session_owner_is_one_line_error(self) -> Any:
        """--session-owner with another value: one line, exit status 2."""
        proc = self.twistd("-n", "mqttbroker", "--listen", _listen(free_port()),
                           "--session-owner", "share")
        self.assertEqual((yield self.ended(proc)), 2, proc.text)
        self.assertOneLine(proc.text, "error", "--session-owner: 'share' must be refuse or fresh")


# --- a restart on Redis ---------------------------------------------------------------------


class RedisRestartTests(_PasswdBroker):
    """The owner is stored with the session: a broker killed and started again on the
    same Redis still refuses another user; a record written before owners existed
    loads, and goes to the first user who resumes it, re-checked against the ACL."""

    @inlineCallbacks
    def test_owner_survives_restart(self) -> Any:
        from tests.redisserver import RedisServer
        from tests.test_store_restart import BrokerProcess

        redis = RedisServer(self.reactor, str(self.directory() / "redis"))
        try:
            yield redis.start()
        except (OSError, RuntimeError) as e:
            raise SkipTest(f"redis-server: {e}") from None
        self.addCleanup(redis.stop, "KILL")
        files = self.write_files()
        broker = BrokerProcess(self.reactor, redis.url(), str(self.directory()),
                               "--auth", f"passwd:{files[0]}", "--acl", str(files[1]))
        self.addCleanup(broker.kill)
        yield broker.start()
        self.port = broker.port
        ops = yield self.alice_away_with_queue()
        yield ops.stop()
        yield broker.kill()
        yield broker.start()
        self.port = broker.port
        yield self.client("bob", "dev-A", v5=True, clean=False, expect=RC.NOT_AUTHORIZED)
        alice = yield self.client("alice", "dev-A", clean=False)
        self.assertTrue(alice.session_present)
        self.assertEqual([m.payload for m in (yield alice.collect(2))], [b"one", b"two"])
        yield alice.disconnect()
        yield alice.stop()
        # As written by a broker that knew no owners: the field is not there.  Removed
        # while no broker runs: the DISCONNECT's own save of the session may reach Redis
        # after the client saw its socket close, and would write the owner back (CI, load).
        yield broker.kill()
        removed = yield redis.command("HDEL", b"mqtt:session:{dev-A}", b"owner")
        self.assertEqual(removed, 1)
        yield broker.start()
        self.port = broker.port
        bob = yield self.client("bob", "dev-A", clean=False)
        self.assertTrue(bob.session_present)  # the ownerless session is his now
        self.assertEqual((yield bob.subscribe(("B/#", 1))), [1])
        ops = yield self.client("ops", "ops")
        yield ops.publish("A/3", b"not for bob", qos=1)  # his A/# was removed on resume
        yield ops.publish("B/1", b"for bob", qos=1)
        self.assertEqual((yield bob.next_message()).payload, b"for bob")
        yield bob.no_message(0.3)
        yield self.client("alice", "dev-A", clean=False, expect=RC.NOT_AUTHORIZED)
