"""Sessions belong to their user (issue 13), sans-IO: the rule in the core's Connector and
the gateway, on a fake clock with FakeClients (docs/security.md).

A session records the user that created it; with an authenticator, a CONNECT naming a
client id whose session belongs to another user is refused (0x87 / 5) or, with
``session_owner="fresh"``, gets a clean session of its own beside the owner's; resumed
sessions and re-authentications have their subscriptions checked again.  The wire
tests (paho, curl, twistd, Redis) are in tests/test_e2e_ownership.py.
"""

from __future__ import annotations

from typing import Any

from scramp import ScramClient
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mqtt_twisted.auth.jwt import JWTIdentity
from mqtt_twisted.auth.scram import ScramAuthenticator
from mqtt_twisted.codec import Auth, ConnAck, Connect, Disconnect, Publish, SubAck
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.constants import ReasonCode as RC
from mqtt_twisted.core import inspection
from mqtt_twisted.core.ownership import foreign_key, visible_id
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.errors import AuthenticationError, AuthorizationError
from mqtt_twisted.gateway import Gateway
from mqtt_twisted.interfaces import IAuthenticator, IAuthorizer
from mqtt_twisted.records import owner_of
from mqtt_twisted.store.memory import StoredSession
from mqtt_twisted.testing import FakeClient, make_broker


@implementer(IAuthenticator, IAuthorizer)
class Users:
    """alice may use A/..., bob B/..., ops everything; each user's password is
    ``pw-<name>``.  ``later`` makes every authorizer answer a Deferred fired by hand."""

    def __init__(self) -> None:
        self.prefixes = {"alice": ["A/"], "bob": ["B/"], "ops": [""]}
        self.later: list[Deferred[bool]] | None = None

    def authenticate(self, credentials: Any) -> Any:
        name = credentials.username
        if name not in self.prefixes or credentials.password != f"pw-{name}".encode():
            return fail(AuthenticationError("bad user name or password"))
        return succeed(name)

    def _allows(self, identity: Any, topic: str) -> Any:
        answer = any(topic.startswith(p) for p in self.prefixes.get(identity, ()))
        if self.later is None:
            return answer
        d: Deferred[bool] = Deferred()
        self.later.append(d)
        d.answer = answer  # type: ignore[attr-defined]
        return d

    def mayPublish(self, identity: Any, clientId: str | None, topic: str) -> Any:
        return self._allows(identity, topic)

    def maySubscribe(self, identity: Any, clientId: str | None, topicFilter: str) -> Any:
        return self._allows(identity, topicFilter)


def publishes(packets: list[Any]) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


class _Base(SynchronousTestCase):
    settings = BrokerSettings()

    def setUp(self) -> None:
        self.users = Users()
        self.broker, self.clock = make_broker(self.settings, authenticator=self.users,
                                              authorizer=self.users)

    def client(self, user: str, client_id: str, version: int = 4, clean: bool = True,
               **kwargs: Any) -> tuple[FakeClient, Any]:
        c = FakeClient(self.broker, version)
        (ack,) = c.connect(client_id, clean=clean, username=user,
                           password=f"pw-{user}".encode(), **kwargs)
        return c, ack

    def alice_away_with_queue(self) -> None:
        """alice subscribes A/# (QoS 1, persistent session dev-A) and leaves; ops publishes
        two messages for her."""
        alice, ack = self.client("alice", "dev-A", clean=False)
        self.assertEqual(ack.reason_code, 0)
        (suback,) = alice.subscribe("A/#", qos=1)
        self.assertEqual(list(suback.reason_codes), [1])
        alice.disconnect()
        ops, _ = self.client("ops", "ops")
        ops.publish("A/1", b"one", qos=1)
        ops.publish("A/2", b"two", qos=1)
        self.ops = ops


class RefuseTests(_Base):
    """The default: another user's client id is refused, the owner's session untouched."""

    def test_v5_refused_0x87_v311_rc5(self) -> None:
        """bob naming alice's client id gets CONNACK 0x87 (v5) and 5 (v3.1.1), clean
        start or not; alice then resumes her session with both queued messages."""
        self.alice_away_with_queue()
        for version, clean, code in ((5, False, RC.NOT_AUTHORIZED), (5, True, RC.NOT_AUTHORIZED),
                                     (4, False, 5), (4, True, 5)):
            bob, ack = self.client("bob", "dev-A", version, clean)
            self.assertIsInstance(ack, ConnAck)
            self.assertEqual((ack.reason_code, ack.session_present), (code, False))
            self.assertTrue(bob.transport.closed)
        self.assertEqual(self.broker.stats.ownership_refusals, 4)
        info = inspection.session_info(self.broker, "dev-A")
        self.assertEqual((info.identity, len(info.subscriptions)), ("alice", 1))
        alice = FakeClient(self.broker)
        out = alice.connect("dev-A", clean=False, username="alice", password=b"pw-alice")
        self.assertTrue(out[0].session_present)
        self.assertEqual([p.payload for p in publishes(out)], [b"one", b"two"])

    def test_online_owner_is_not_kicked(self) -> None:
        """With alice online, bob's CONNECT neither takes over nor sends alice's will;
        alice keeps receiving and bob gets nothing."""
        from mqtt_twisted.codec import Will

        alice, _ = self.client("alice", "dev-A", will=Will("A/will", b"gone", 0, False))
        alice.subscribe("A/#", qos=0)
        watcher, _ = self.client("ops", "watch")
        watcher.subscribe("A/will")
        bob, ack = self.client("bob", "dev-A", 5)
        self.assertEqual(ack.reason_code, RC.NOT_AUTHORIZED)
        self.assertFalse(alice.transport.closed)
        self.assertEqual(self.broker.stats.takeovers, 0)
        self.assertEqual(publishes(watcher.received()), [])
        self.ops = watcher
        watcher.publish("A/live", b"hi")
        self.assertEqual([p.payload for p in publishes(alice.received())], [b"hi"])
        self.assertEqual(publishes(bob.received()), [])

    def test_owner_still_takes_over_own_session(self) -> None:
        """The same user connecting again takes its session over, as MQTT wants."""
        first, _ = self.client("alice", "dev-A", clean=False)
        _, ack = self.client("alice", "dev-A", clean=False)
        self.assertEqual((ack.reason_code, ack.session_present), (0, True))
        self.assertTrue(first.transport.closed)
        self.assertEqual(self.broker.stats.takeovers, 1)

    def test_anonymous_broker_keeps_takeover(self) -> None:
        """Without an authenticator a user name proves nothing: anyone may resume or take
        over a client id, as before (documented)."""
        broker, _ = make_broker()
        a = FakeClient(broker)
        a.connect("dev-A", clean=False, username="alice")
        a.subscribe("A/#", qos=1)
        b = FakeClient(broker)
        (ack,) = b.connect("dev-A", clean=False, username="bob")
        self.assertEqual((ack.reason_code, ack.session_present), (0, True))
        self.assertTrue(a.transport.closed)
        self.assertIsNone(broker.sessions["dev-A"].owner)

    def test_owner_is_recorded_and_saved(self) -> None:
        """The owner is the authenticated user, kept on the session and in the store."""
        self.client("alice", "dev-A", clean=False)
        self.assertEqual(self.broker.sessions["dev-A"].owner, "alice")
        stored = self.successResultOf(self.broker.store.loadSession("dev-A"))
        self.assertEqual(stored.owner, "alice")

    def test_restored_session_keeps_owner(self) -> None:
        """A session rebuilt from the store (a restart) still belongs to its user."""
        state = StoredSession("dev-A")
        state.expiryInterval = None
        state.disconnectedAt = 0.0
        state.owner = "alice"
        state.subscriptions = {}
        self.broker.restore_session(state)
        _, ack = self.client("bob", "dev-A", 5, False)
        self.assertEqual(ack.reason_code, RC.NOT_AUTHORIZED)
        _, ack = self.client("alice", "dev-A", 5, False)
        self.assertEqual((ack.reason_code, ack.session_present), (0, True))


class RecheckTests(_Base):
    """A session changing hands within its user has its subscriptions checked again."""

    def test_resume_drops_subscriptions_no_longer_allowed(self) -> None:
        """alice's rights shrink while she is away: on resume A2/# is removed (index,
        session and store) with the queued message only it matched; A/# stays."""
        self.users.prefixes["alice"] = ["A/", "A2/"]
        alice, _ = self.client("alice", "dev-A", clean=False)
        alice.subscribe("A/#", "A2/#", qos=1)
        alice.disconnect()
        ops, _ = self.client("ops", "ops")
        ops.publish("A2/x", b"secret", qos=1)
        ops.publish("A/x", b"fine", qos=1)
        self.users.prefixes["alice"] = ["A/"]
        alice = FakeClient(self.broker)
        out = alice.connect("dev-A", clean=False, username="alice", password=b"pw-alice")
        self.assertTrue(out[0].session_present)
        self.assertEqual([p.payload for p in publishes(out)], [b"fine"])
        self.assertEqual(set(self.broker.sessions["dev-A"].subscriptions), {"A/#"})
        stored = self.successResultOf(self.broker.store.loadSession("dev-A"))
        self.assertEqual(set(stored.subscriptions), {"A/#"})
        self.assertEqual([o.message.topic for o in stored.outbound], ["A/x"])
        ops.publish("A2/y", b"never", qos=1)
        self.assertEqual(publishes(alice.received()), [])

    def test_ownerless_session_adopted_and_rechecked(self) -> None:
        """A session stored before owners existed belongs to nobody: the first user to
        resume it adopts it, and keeps only what that user may subscribe to."""
        state = StoredSession("dev-A")
        state.expiryInterval = None
        state.disconnectedAt = 0.0
        from mqtt_twisted.records import SubscriptionOptions

        state.subscriptions = {"A/#": SubscriptionOptions(1), "B/#": SubscriptionOptions(1)}
        self.broker.restore_session(state)
        self.assertIsNone(self.broker.sessions["dev-A"].owner)
        ops, _ = self.client("ops", "ops")
        ops.publish("A/x", b"for alice", qos=1)
        bob, ack = self.client("bob", "dev-A", clean=False)
        self.assertEqual((ack.reason_code, ack.session_present), (0, True))
        self.assertEqual(publishes(bob.received()), [])
        session = self.broker.sessions["dev-A"]
        self.assertEqual((session.owner, set(session.subscriptions)), ("bob", {"B/#"}))
        _, ack = self.client("alice", "dev-A", 5, False)
        self.assertEqual(ack.reason_code, RC.NOT_AUTHORIZED)

    def test_adopter_gets_no_unacknowledged_message_of_before(self) -> None:
        """An ownerless session's in-flight (sent, never acknowledged) message is not
        resent to the user who adopts it unless that user may read it (found by the
        Redis restart test: bob got alice's unacknowledged QoS 1 message, DUP)."""
        from mqtt_twisted.message import Message
        from mqtt_twisted.records import Outbound, SubscriptionOptions

        state = StoredSession("dev-A")
        state.expiryInterval = None
        state.disconnectedAt = 0.0
        state.subscriptions = {"A/#": SubscriptionOptions(1)}
        state.outbound = [Outbound(Message("A/x", b"alice's", 1, False), 1, False, None, 7,
                                   0, None, 1)]
        self.broker.restore_session(state)
        self.assertEqual(list(self.broker.sessions["dev-A"].inflight), [7])
        bob, ack = self.client("bob", "dev-A", clean=False)
        self.assertEqual((ack.reason_code, ack.session_present), (0, True))
        self.assertEqual(publishes(bob.received()), [])
        self.assertEqual(self.broker.sessions["dev-A"].inflight, {})
        stored = self.successResultOf(self.broker.store.loadSession("dev-A"))
        self.assertEqual(list(stored.outbound), [])

    def test_deferred_authorizer_holds_connack(self) -> None:
        """An authorizer answering later: CONNACK and the queue wait for every answer,
        and the refused subscription's messages never go out."""
        self.users.prefixes["alice"] = ["A/", "A2/"]
        alice, _ = self.client("alice", "dev-A", clean=False)
        alice.subscribe("A/#", "A2/#", qos=1)
        alice.disconnect()
        ops, _ = self.client("ops", "ops")
        ops.publish("A2/x", b"secret", qos=1)
        self.users.prefixes["alice"] = ["A/"]
        self.users.later = []
        alice = FakeClient(self.broker)
        self.assertEqual(alice.connect("dev-A", clean=False, username="alice",
                                       password=b"pw-alice"), [])
        answers, self.users.later = self.users.later, None
        self.assertEqual(len(answers), 2)
        for d in answers:
            d.callback(d.answer)  # type: ignore[attr-defined]
        out = alice.received()
        self.assertIsInstance(out[0], ConnAck)
        self.assertEqual(publishes(out), [])
        self.assertEqual(set(self.broker.sessions["dev-A"].subscriptions), {"A/#"})
        # The client id's lock was released: the next CONNECT is answered at once.
        _, ack = self.client("alice", "dev-A", clean=False)
        self.assertEqual(ack.reason_code, 0)

    def test_session_expiring_during_recheck(self) -> None:
        """The session expires while the authorizer answers: the CONNECT gets a new
        session (session present 0), not the discarded one."""
        alice = FakeClient(self.broker, 5)
        alice.connect("dev-A", clean=False, username="alice", password=b"pw-alice",
                      properties={P.SESSION_EXPIRY_INTERVAL: 5})
        alice.subscribe("A/#", qos=1)
        alice.disconnect()
        old = self.broker.sessions["dev-A"]
        self.users.later = []
        c = FakeClient(self.broker, 5)
        self.assertEqual(c.connect("dev-A", clean=False, username="alice",
                                   password=b"pw-alice"), [])
        self.clock.advance(6)  # (within the 10 s a CONNECT may take)
        self.assertNotIn("dev-A", self.broker.sessions)
        answers, self.users.later = self.users.later, None
        answers[0].callback(True)
        (ack,) = c.received()
        self.assertEqual((ack.reason_code, ack.session_present), (0, False))
        session = self.broker.sessions["dev-A"]
        self.assertIsNot(session, old)
        self.assertEqual((session.owner, session.subscriptions), ("alice", {}))
        self.assertIs(session.connection, c.connection)

    def test_authorizer_failure_refuses_connect(self) -> None:
        """An authorizer that fails while re-checking: CONNACK 'server unavailable'-like
        refusal, never a hang, and the lock is free again."""
        alice, _ = self.client("alice", "dev-A", clean=False)
        alice.subscribe("A/#", qos=1)
        alice.disconnect()
        self.users.later = []
        c = FakeClient(self.broker, 5)
        c.connect("dev-A", clean=False, username="alice", password=b"pw-alice")
        answers, self.users.later = self.users.later, None
        answers[0].errback(RuntimeError("authorizer down"))
        (ack,) = c.received()
        self.assertNotEqual(ack.reason_code, 0)
        _, ack = self.client("alice", "dev-A", clean=False)
        self.assertEqual((ack.reason_code, ack.session_present), (0, True))
        self.flushLoggedErrors(RuntimeError)


class FreshTests(_Base):
    """``session_owner="fresh"``: the other user gets a clean session of its own."""

    settings = BrokerSettings(session_owner="fresh")

    def test_fresh_session_beside_the_owner(self) -> None:
        """bob naming dev-A gets CONNACK 0 without a session (v5: expiry 0), none of
        alice's messages; alice's session keeps its queue and both may be online."""
        self.alice_away_with_queue()
        bob, ack = self.client("bob", "dev-A", 5, False,
                               properties={P.SESSION_EXPIRY_INTERVAL: 3600})
        self.assertEqual((ack.reason_code, ack.session_present), (0, False))
        self.assertEqual(ack.properties.get(P.SESSION_EXPIRY_INTERVAL), 0)
        self.assertEqual(publishes(bob.received()), [])
        key = foreign_key("dev-A", "bob")
        self.assertEqual(visible_id(key), "dev-A")
        self.assertEqual(self.broker.sessions[key].owner, "bob")
        self.assertEqual(len(self.broker.sessions["dev-A"].queue), 2)
        alice = FakeClient(self.broker)
        out = alice.connect("dev-A", clean=False, username="alice", password=b"pw-alice")
        self.assertTrue(out[0].session_present)
        self.assertEqual([p.payload for p in publishes(out)], [b"one", b"two"])
        self.assertFalse(bob.transport.closed)
        # Live messages: A/ to alice only; bob's own subscription works in his session.
        (suback,) = bob.subscribe("A/#", "B/#", qos=1)
        self.assertEqual(list(suback.reason_codes), [RC.NOT_AUTHORIZED, 1])
        self.ops.publish("A/live", b"a", qos=0)
        self.ops.publish("B/live", b"b", qos=0)
        self.assertEqual([p.payload for p in publishes(alice.received())], [b"a"])
        self.assertEqual([p.payload for p in publishes(bob.received())], [b"b"])

    def test_fresh_session_is_never_stored(self) -> None:
        """The foreign session is not persisted and ends with its connection; bob
        connecting again takes over his own fresh session, never alice's."""
        self.alice_away_with_queue()
        bob1, _ = self.client("bob", "dev-A", 4, False)
        bob2, ack = self.client("bob", "dev-A", 4, False)
        self.assertEqual((ack.reason_code, ack.session_present), (0, False))
        self.assertTrue(bob1.transport.closed)
        self.assertEqual(self.successResultOf(self.broker.store.listSessions()), ["dev-A"])
        bob2.disconnect()
        self.assertNotIn(foreign_key("dev-A", "bob"), self.broker.sessions)
        self.assertEqual(len(self.broker.sessions["dev-A"].queue), 2)
        self.assertIsNone(self.broker.sessions["dev-A"].connection)

    def test_no_local_follows_the_session(self) -> None:
        """A foreign session's messages carry its own key as sender: no local suppresses
        bob's own messages for bob, and never alice's delivery of them."""
        alice, _ = self.client("alice", "dev-A", 5)
        self.users.prefixes["alice"] = ["A/", "B/"]
        alice.subscribe("B/#", no_local=True)
        bob, _ = self.client("bob", "dev-A", 5)
        bob.subscribe("B/#", no_local=True)
        bob.publish("B/x", b"from bob")
        self.assertEqual([p.payload for p in publishes(alice.received())], [b"from bob"])
        self.assertEqual(publishes(bob.received()), [])

    def test_virtual_sessions_are_refused_even_when_fresh(self) -> None:
        """An adapter's session (HTTP client=) addresses a session by the bare client id:
        a fresh one could not be told apart, so it is refused in both modes."""
        self.client("alice", "dev-A", clean=False)
        gateway = Gateway(self.broker)
        from mqtt_twisted.records import Credentials

        d = gateway.openSession("dev-A", _Sink(), False,
                                Credentials("dev-A", "bob", b"pw-bob", adapter="http"))
        self.failureResultOf(d, AuthorizationError)


class _Sink:
    def deliver(self, message: Any, qos: int) -> bool:
        return True


class ReauthTests(SynchronousTestCase):
    """v5 re-authentication (AUTH 0x19) as another user ends the connection with 0x87."""

    def setUp(self) -> None:
        self.auth = ScramAuthenticator({"alice": "secret", "bob": "hunter2"})
        self.broker, _ = make_broker(authenticator=self.auth, authorizer=self.auth)

    def scram(self, c: FakeClient, first: Any, user: str, password: str) -> list[Any]:
        scram = ScramClient(["SCRAM-SHA-256"], user, password)
        first({P.AUTHENTICATION_METHOD: "SCRAM-SHA-256",
               P.AUTHENTICATION_DATA: scram.get_client_first().encode()})
        (challenge,) = c.received()
        scram.set_server_first(challenge.properties[P.AUTHENTICATION_DATA].decode())
        c.send(Auth(RC.CONTINUE_AUTHENTICATION, {
            P.AUTHENTICATION_METHOD: "SCRAM-SHA-256",
            P.AUTHENTICATION_DATA: scram.get_client_final().encode()}))
        return c.received()

    def connect(self, user: str, password: str) -> FakeClient:
        c = FakeClient(self.broker, 5)
        (ack,) = self.scram(c, lambda props: c.send(Connect(
            "dev-A", 5, False, 0, None, properties={**props, P.SESSION_EXPIRY_INTERVAL: 60})),
                            user, password)
        self.assertEqual(ack.reason_code, 0)
        return c

    def reauth(self, c: FakeClient, user: str, password: str) -> list[Any]:
        return self.scram(c, lambda props: c.send(Auth(RC.RE_AUTHENTICATE, props)),
                          user, password)

    def test_reauth_as_other_user_disconnects(self) -> None:
        """alice re-authenticating as bob: DISCONNECT 0x87; the session stays alice's."""
        c = self.connect("alice", "secret")
        c.subscribe("A/#", qos=1)
        out = self.reauth(c, "bob", "hunter2")
        self.assertIsInstance(out[-1], Disconnect)
        self.assertEqual(out[-1].reason_code, RC.NOT_AUTHORIZED)
        self.assertTrue(c.transport.closed)
        session = self.broker.sessions["dev-A"]
        self.assertEqual((session.owner, session.identity), ("alice", "alice"))
        self.assertEqual(self.broker.stats.ownership_refusals, 1)

    def test_reauth_as_same_user_succeeds(self) -> None:
        """Re-authenticating as the same user keeps the connection (AUTH 0x00)."""
        c = self.connect("alice", "secret")
        (done,) = self.reauth(c, "alice", "secret")
        self.assertEqual(done.reason_code, RC.SUCCESS)
        self.assertFalse(c.transport.closed)


class ReauthRecheckTests(SynchronousTestCase):
    """Re-authentication as the same user re-checks the subscriptions with the new
    identity (a JWT's claims, say): those it no longer allows are removed."""

    def test_reauth_rechecks_subscriptions(self) -> None:
        auth = ScramAuthenticator({"alice": "secret"})
        rights = {"A/#": True, "A2/#": True}

        class Narrowing(Users):
            def maySubscribe(self, identity: Any, clientId: Any, topicFilter: str) -> bool:
                return rights.get(topicFilter, False)

        broker, _ = make_broker(authenticator=auth, authorizer=Narrowing())
        helper = ReauthTests()
        helper.broker = broker
        c = helper.connect("alice", "secret")
        (suback,) = c.subscribe("A/#", "A2/#", qos=1)
        self.assertIsInstance(suback, SubAck)
        self.assertEqual(list(suback.reason_codes), [1, 1])
        rights["A2/#"] = False
        (done,) = helper.reauth(c, "alice", "secret")
        self.assertEqual(done.reason_code, RC.SUCCESS)
        self.assertEqual(set(broker.sessions["dev-A"].subscriptions), {"A/#"})


class GatewayTests(_Base):
    """The HTTP bridge's doors: a client= naming another user's session, and who may
    remove a session."""

    settings = BrokerSettings(admin_users=frozenset({"ops"}))

    def creds(self, user: str, client_id: str | None) -> Any:
        from mqtt_twisted.records import Credentials

        return Credentials(client_id or "", user, f"pw-{user}".encode(), adapter="http")

    def test_authenticate_refuses_foreign_client_id(self) -> None:
        """authenticate() with credentials naming alice's client id fails for bob with
        AuthorizationError (HTTP 403), works for alice and for unknown client ids."""
        self.client("alice", "dev-A", clean=False)
        gateway = Gateway(self.broker)
        self.failureResultOf(gateway.authenticate(self.creds("bob", "dev-A")),
                             AuthorizationError)
        self.assertEqual(self.successResultOf(
            gateway.authenticate(self.creds("alice", "dev-A"))), "alice")
        self.assertEqual(self.successResultOf(
            gateway.authenticate(self.creds("bob", "dev-B"))), "bob")
        self.assertEqual(self.successResultOf(
            gateway.authenticate(self.creds("bob", None))), "bob")

    def test_may_remove_session(self) -> None:
        """Only the owner, or an admin user, may remove a session."""
        self.client("alice", "dev-A", clean=False)
        gateway = Gateway(self.broker)
        self.assertFalse(self.successResultOf(gateway.mayRemoveSession("bob", "dev-A")))
        self.assertTrue(self.successResultOf(gateway.mayRemoveSession("alice", "dev-A")))
        self.assertTrue(self.successResultOf(gateway.mayRemoveSession("ops", "dev-A")))
        self.assertFalse(self.successResultOf(gateway.mayRemoveSession(None, "dev-A")))


class OwnerOfTests(SynchronousTestCase):
    """Who an identity is, for ownership."""

    def test_strings_and_none(self) -> None:
        self.assertEqual(owner_of("alice"), "alice")
        self.assertIsNone(owner_of(None))

    def test_jwt_identity(self) -> None:
        """A JWT's user name counts only when usernameClaim checked it; else the subject:
        any client may send any user name with its own token."""
        checked = JWTIdentity("alice", "alice", {}, username_verified=True)
        self.assertEqual(owner_of(checked), "alice")
        claimed = JWTIdentity("bob", "alice", {})
        self.assertEqual(owner_of(claimed), "bob")
        self.assertIsNone(owner_of(JWTIdentity(None, "alice", {})))

    def test_other_objects(self) -> None:
        """A plugin's identity object: its sessionOwner, else its username."""

        class Named:
            username = "carol"

        class Owned:
            username = "carol"
            sessionOwner = "team-1"

        self.assertEqual(owner_of(Named()), "carol")
        self.assertEqual(owner_of(Owned()), "team-1")
        self.assertIsNone(owner_of(object()))
