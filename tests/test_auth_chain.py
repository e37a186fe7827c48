"""Several ``--auth`` backends on one broker (auth/chain.py): the first that accepts wins,
a refusal passes the client on, a broken backend is a logged refusal; anonymous clients
only with ``--allow-anonymous``; each backend's own authorizer for its users, combined
with the ACL file; SCRAM enhanced authentication through the chain; the tap's options;
paho clients of two backends on one real broker, and a Bearer token over real HTTP."""

from __future__ import annotations

import time
from typing import Any

import jwt
import paho.mqtt.client as mqtt
from scramp import ScramClient
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mqtt_twisted.adapters.listener import binds_loopback_only
from mqtt_twisted.auth.acl import AclAuthorizer, AllAuthorizers, parse_acl
from mqtt_twisted.auth.chain import AuthChain, Backend, ChainIdentity, _ChainExchange
from mqtt_twisted.auth.jwt import JWTAuthenticator, JWTIdentity, KeySource
from mqtt_twisted.auth.passwd import PasswordFileAuthenticator, parse_passwd
from mqtt_twisted.auth.scram import METHOD, ScramAuthenticator, make_secret, parse_users
from mqtt_twisted.codec import Auth, ConnAck, Connect
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core.systopics import SysTopics
from mqtt_twisted.errors import AuthenticationError, AuthorizationError
from mqtt_twisted.interfaces import IAuthExchange, IAuthorizer, IEnhancedAuthenticator
from mqtt_twisted.records import Credentials
from mqtt_twisted.service import BrokerService
from mqtt_twisted.tap import Options, makeService
from tests.certs import temp_dir
from tests.httpbroker import HTTPBrokerTestCase
from tests.pahov5 import V5TestCase
from tests.redisserver import free_port
from tests.securebroker import SecureBrokerTestCase
from tests.test_auth_passwd import ALICE, CAROL, at_once
from tests.test_twistd_run import TwistdTestCase, _listen

SECRET = "a shared secret of enough length!"
ACL = """\
topic read public/#
user alice
topic readwrite alice/#
user dev-1
topic readwrite devices/#
"""


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": time.time() + 600, **claims}, SECRET, "HS256")


def creds(username: str | None, password: bytes | str | None) -> Credentials:
    if isinstance(password, str):
        password = password.encode()
    return Credentials("c1", username, password, None, "127.0.0.1:5", "mqtt")


def jwt_backend(**kwargs: Any) -> JWTAuthenticator:
    return JWTAuthenticator(KeySource.from_secret(SECRET.encode()), **kwargs)


def chain(*, allow_anonymous: bool = False, **jwt_options: Any) -> AuthChain:
    """passwd (alice/secret1, carol/c3), then jwt (usernameClaim=sub, topicsClaim=acl)."""
    passwd = PasswordFileAuthenticator(parse_passwd(f"{ALICE}\n{CAROL}\n", "pw"), run=at_once)
    token_auth = jwt_backend(**{"username_claim": "sub", "topics_claim": "acl", **jwt_options})
    return AuthChain([Backend("passwd", passwd), Backend("jwt", token_auth, token_auth)],
                     allow_anonymous=allow_anonymous)


class _Broken:
    def authenticate(self, credentials: Any) -> Any:
        raise RuntimeError("the user database is on fire")


class ChainTests(SynchronousTestCase):
    """AuthChain on its own: order, refusals, anonymous clients, per-backend authorizers."""

    def refused(self, auth: AuthChain, credentials: Credentials, error: type) -> str:
        return str(self.failureResultOf(auth.authenticate(credentials), error).value)

    def test_verify(self) -> None:
        """The chain is an IEnhancedAuthenticator and an IAuthorizer; its exchange an
        IAuthExchange."""
        auth = chain()
        self.assertTrue(verifyObject(IEnhancedAuthenticator, auth))
        self.assertTrue(verifyObject(IAuthorizer, auth))
        self.assertEqual(auth.methods, ())
        scram = AuthChain([Backend("scram", ScramAuthenticator({"u": "p"}))])
        exchange = scram.startExchange(METHOD, creds(None, None))
        self.assertIsInstance(exchange, _ChainExchange)
        self.assertTrue(verifyObject(IAuthExchange, exchange))
        self.assertRaises(ValueError, AuthChain, [])

    def test_first_that_accepts_wins(self) -> None:
        """A password user is passwd's; a token user is jwt's; the identity names which."""
        auth = chain()
        alice = self.successResultOf(auth.authenticate(creds("alice", "secret1")))
        self.assertEqual(alice, ChainIdentity(0, "passwd", "alice"))
        self.assertEqual((alice.username, str(alice)), ("alice", "alice"))
        dev = self.successResultOf(auth.authenticate(creds("dev-1", token("dev-1"))))
        self.assertEqual((dev.backend, dev.name, dev.username), (1, "jwt", "dev-1"))
        self.assertIsInstance(dev.identity, JWTIdentity)

    def test_session_owner_passes_through(self) -> None:
        """The wrapper names the owner the backend's identity names: a string is itself, an
        object's own sessionOwner wins over its user name, else its user name."""

        class Owned:
            username = "claimed"
            sessionOwner = "subject"

        class Named:
            username = "bob"

        for inner, owner in (("alice", "alice"), (None, None), (Owned(), "subject"),
                             (Named(), "bob"), (object(), None)):
            self.assertEqual(ChainIdentity(0, "x", inner).sessionOwner, owner, inner)

    def test_refusals(self) -> None:
        """A wrong password, even a JWT-shaped one, is refused by both (the last error is
        the answer, saying what each said); a valid token cannot borrow a password user's name (usernameClaim)."""
        auth = chain()
        forged = jwt.encode({"sub": "alice", "exp": time.time() + 60},
                            "another secret that is long enough!", "HS256")
        self.assertIn("bad token", self.refused(auth, creds("alice", forged),
                                                AuthenticationError))
        said = self.refused(auth, creds("alice", "wrong"), AuthenticationError)
        self.assertTrue(said.startswith("passwd: bad user name or password; jwt: bad token"),
                        said)
        self.assertIn("does not match", self.refused(auth, creds("alice", token("dev-1")),
                                                     AuthenticationError))
        self.assertIn("bad token", self.refused(auth, creds("mallory", "secret1"),
                                                AuthenticationError))

    def test_broken_backend_is_a_logged_refusal(self) -> None:
        """A backend that raises is logged and passes the client on; last, it refuses."""
        alice = PasswordFileAuthenticator(parse_passwd(ALICE, "pw"), run=at_once)
        auth = AuthChain([Backend("broken", _Broken()), Backend("passwd", alice)])
        self.assertEqual(self.successResultOf(auth.authenticate(creds("alice", "secret1"))),
                         ChainIdentity(1, "passwd", "alice"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        last = AuthChain([Backend("passwd", alice), Backend("broken", _Broken())])
        self.assertIn("broken: internal error",
                      self.refused(last, creds("bob", "x"), AuthenticationError))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_anonymous(self) -> None:
        """No credentials: refused (0x87) unless allow_anonymous, then identity None; a user
        name without a password is not anonymous (the backends decide)."""
        e = self.failureResultOf(chain().authenticate(creds(None, None)), AuthorizationError)
        self.assertIn("--allow-anonymous", str(e.value))
        self.assertEqual(e.value.reason_code, ReasonCode.NOT_AUTHORIZED)
        open_chain = chain(allow_anonymous=True)
        self.assertIsNone(self.successResultOf(open_chain.authenticate(creds(None, None))))
        self.failureResultOf(open_chain.authenticate(creds("alice", None)), AuthenticationError)

    def test_certificate_only(self) -> None:
        """A client with only a TLS certificate is offered to the backends (one may take
        it); if none does it is anonymous: refused, or let in with --allow-anonymous."""

        class ByCertificate:
            def authenticate(self, credentials: Any) -> Any:
                if credentials.certificateIdentity == "CN=dev":
                    return succeed("dev")
                return fail(AuthenticationError("not my certificate"))

        def cert(identity: str) -> Credentials:
            return Credentials("c1", None, None, identity, "127.0.0.1:5", "mqtt")

        for allow in (False, True):
            auth = AuthChain([Backend("cert", ByCertificate())], allow_anonymous=allow)
            self.assertEqual(self.successResultOf(auth.authenticate(cert("CN=dev"))),
                             ChainIdentity(0, "cert", "dev"))
        closed = AuthChain([Backend("cert", ByCertificate())])
        self.failureResultOf(closed.authenticate(cert("CN=other")), AuthenticationError)
        open_ = AuthChain([Backend("cert", ByCertificate())], allow_anonymous=True)
        self.assertIsNone(self.successResultOf(open_.authenticate(cert("CN=other"))))

    def test_each_backend_authorizes_its_own_users(self) -> None:
        """A token's topic claims restrict its user and nobody else; passwd users have no
        rules of their own; anonymous clients are allowed only when let in; identities the
        chain did not make are refused."""
        auth = chain()
        alice = self.successResultOf(auth.authenticate(creds("alice", "secret1")))
        dev = self.successResultOf(auth.authenticate(
            creds(None, token("dev-1", acl=["devices/dev-1"]))))
        self.assertTrue(auth.mayPublish(alice, "c", "anything/at/all"))
        self.assertTrue(auth.maySubscribe(alice, "c", "#"))
        self.assertTrue(auth.mayPublish(dev, "c", "devices/dev-1/temp"))
        self.assertFalse(auth.mayPublish(dev, "c", "devices/dev-2/temp"))
        self.assertFalse(auth.maySubscribe(dev, "c", "#"))
        self.assertFalse(auth.mayPublish(None, "c", "t"))
        self.assertTrue(chain(allow_anonymous=True).mayPublish(None, "c", "t"))
        for foreign in ("alice", ChainIdentity(0, "jwt", "alice"), ChainIdentity(7, "x", "y")):
            self.assertFalse(auth.mayPublish(foreign, "c", "t"), foreign)
            self.assertFalse(auth.maySubscribe(foreign, "c", "t"), foreign)

    def test_with_the_acl(self) -> None:
        """The ACL applies to every backend's users by user name (a token's from its claim),
        and its anonymous section to anonymous clients."""
        auth = chain(allow_anonymous=True, topics_claim=None)
        both = AllAuthorizers((AclAuthorizer(parse_acl(ACL, "acl")), auth))
        alice = self.successResultOf(auth.authenticate(creds("alice", "secret1")))
        dev = self.successResultOf(auth.authenticate(creds(None, token("dev-1"))))
        self.assertTrue(both.mayPublish(alice, "c", "alice/x"))
        self.assertFalse(both.mayPublish(alice, "c", "devices/x"))
        self.assertTrue(both.mayPublish(dev, "c", "devices/x"))
        self.assertFalse(both.mayPublish(dev, "c", "alice/x"))
        self.assertTrue(both.maySubscribe(None, "c", "public/#"))
        self.assertFalse(both.maySubscribe(None, "c", "alice/#"))
        self.assertFalse(both.mayPublish(None, "c", "public/x"))

    def test_enhanced_methods_and_reload(self) -> None:
        """The chain offers its backends' methods; an exchange's identity is wrapped; an
        unknown method is refused; SIGHUP reloads every backend that can."""
        path = f"{temp_dir(self)}/pw"
        with open(path, "w") as f:
            f.write(ALICE + "\n")
        passwd = PasswordFileAuthenticator.from_file(path, run=at_once)
        scram = ScramAuthenticator({"sam": "pw"})
        auth = AuthChain([Backend("passwd", passwd), Backend("scram", scram, scram)])
        self.assertEqual(auth.methods, (METHOD,))
        client = ScramClient([METHOD], "sam", "pw")
        exchange = auth.startExchange(METHOD, creds(None, None))
        first = self.successResultOf(exchange.step(client.get_client_first().encode()))
        client.set_server_first(first.data.decode())
        final = self.successResultOf(exchange.step(client.get_client_final().encode()))
        self.assertTrue(final.done)
        self.assertEqual(final.identity, ChainIdentity(1, "scram", "sam"))
        self.assertRaises(AuthenticationError, auth.startExchange, "KERBEROS", creds(None, None))
        with open(path, "w") as f:
            f.write(CAROL + "\n")
        auth.reload()
        self.successResultOf(auth.authenticate(creds("carol", "c3")))


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class TapTests(SynchronousTestCase):
    """``--auth`` repeats; ``--allow-anonymous``; ``anonymous`` does not combine."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.pw = f"{self.dir}/pw"
        with open(self.pw, "w") as f:
            f.write(ALICE + "\n")

    def test_chain_from_options(self) -> None:
        """Two --auth give one chain, in order, which is also the authorizer; the ACL is
        combined with it."""
        options = parse("--auth", f"passwd:{self.pw}", "--auth", f"jwt:secret={SECRET}",
                        "--listen", "tcp:1884:interface=127.0.0.1")
        service = makeService(options, MemoryReactorClock())
        assert isinstance(service, BrokerService)
        auth = service.broker.authenticator
        self.assertIsInstance(auth, AuthChain)
        self.assertEqual([b.name for b in auth.backends], ["passwd", "jwt"])
        self.assertIs(service.broker.authorizer, auth)
        self.assertFalse(auth.allow_anonymous)
        options = parse("--auth", f"passwd:{self.pw}", "--allow-anonymous",
                        "--acl", self.pw.replace("pw", "acl"), "--listen", "tcp:1884")
        with open(self.pw.replace("pw", "acl"), "w") as f:
            f.write(ACL)
        service = makeService(options, MemoryReactorClock())
        self.assertTrue(service.broker.authenticator.allow_anonymous)
        self.assertIsInstance(service.broker.authorizer, AclAuthorizer)
        service = makeService(parse("--auth", f"passwd:{self.pw}", "--listen", "tcp:1884"),
                              MemoryReactorClock())
        self.assertIsInstance(service.broker.authenticator, AuthChain)
        self.assertIsNone(service.broker.authorizer)  # no rules: no call per PUBLISH
        options = parse("--auth", f"passwd:{self.pw}", "--auth", f"jwt:secret={SECRET}",
                        "--acl", self.pw.replace("pw", "acl"), "--listen", "tcp:1884")
        service = makeService(options, MemoryReactorClock())
        self.assertIsInstance(service.broker.authorizer, AllAuthorizers)

    def warnings(self, *argv: str) -> list[str]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            makeService(parse(*argv), MemoryReactorClock())
        finally:
            globalLogPublisher.removeObserver(events.append)
        return [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]

    def test_open_warnings(self) -> None:
        """The open default, and --allow-anonymous without an ACL, warn once when a
        listener is reachable from elsewhere; not on loopback or with an ACL."""
        acl = f"{self.dir}/acl"
        with open(acl, "w") as f:
            f.write(ACL)
        (line,) = self.warnings("--listen", "tcp:1884", "--listen", "unix:/tmp/x.sock")
        self.assertIn("mqtt=tcp:1884: open to anyone", line)
        self.assertIn("(--auth anonymous, no --acl)", line)
        self.assertNotIn("unix", line)
        (line,) = self.warnings("--listen", "tcp:1884", "--auth", f"passwd:{self.pw}",
                                "--allow-anonymous")
        self.assertIn("(--allow-anonymous, no --acl)", line)
        for argv in (["--listen", "tcp:1884:interface=127.0.0.1"],
                     ["--listen", r"tcp:1884:interface=\:\:1", "--listen", "unix:/tmp/x"],
                     ["--listen", "tcp:1884", "--acl", acl],
                     ["--listen", "tcp:1884", "--auth", f"passwd:{self.pw}"],
                     ["--listen", "tcp:1884", "--auth", f"passwd:{self.pw}",
                      "--allow-anonymous", "--acl", acl]):
            self.assertEqual(self.warnings(*argv), [], argv)

    def test_loopback_endpoints(self) -> None:
        """Which endpoint strings take connections from this machine only."""
        for endpoint, local in (("tcp:1883", False), ("tcp:1883:interface=127.0.0.1", True),
                                (r"tcp:1883:interface=\:\:1", True), ("tcp6:1883", False),
                                ("unix:/run/mqtt.sock", True), (r"tcp:1:interface=\:\:", False),
                                ("ssl:8883:privateKey=k.pem:interface=0.0.0.0", False),
                                ("tcp:port=1883:interface=127.0.0.5", True),
                                ("tcp:1883:interface=localhost", True),
                                ("tcp:1883:interface=192.0.2.7", False),
                                ("systemd:domain=INET:index=0", False)):
            self.assertEqual(binds_loopback_only(endpoint), local, endpoint)

    def test_anonymous_alone(self) -> None:
        """The default stays open (no authenticator at all); anonymous does not combine."""
        service = makeService(parse("--listen", "tcp:1884:interface=127.0.0.1"),
                              MemoryReactorClock())
        self.assertIsNone(service.broker.authenticator)
        e = self.assertRaises(usage.UsageError, parse, "--auth", "anonymous",
                              "--auth", f"passwd:{self.pw}")
        self.assertIn("--allow-anonymous", str(e))


class EndToEndTests(SecureBrokerTestCase):
    """``--auth passwd:FILE --auth jwt:... [--allow-anonymous] --acl FILE`` through the tap,
    on a real broker, with paho 3.1.1 and 5 clients."""

    @inlineCallbacks
    def start_tap(self, *argv: str) -> Any:
        directory = temp_dir(self)
        with open(f"{directory}/pw", "w") as f:
            f.write(f"{ALICE}\n{CAROL}\n")
        with open(f"{directory}/acl", "w") as f:
            f.write(ACL)
        options = parse("--auth", f"passwd:{directory}/pw", "--auth",
                        f"jwt:secret={SECRET}:usernameClaim=sub", "--acl", f"{directory}/acl",
                        "--sys-interval", "0", "--listen", "tcp:0:interface=127.0.0.1", *argv)
        service = makeService(options, self.reactor)
        service.startService()
        self.addCleanup(service.stopService)
        yield service.ready
        ports = []
        for listener in service._listeners:
            port = yield listener.whenListening()
            ports.append(port.getHost().port)
        return ports[0] if len(ports) == 1 else ports

    @inlineCallbacks
    def test_passwd_and_jwt_users(self) -> Any:
        """alice (password file) and dev-1 (token) connect; each gets its ACL section; a
        JWT-shaped wrong password, an unknown user and an anonymous client are refused."""
        port = yield self.start_tap()
        alice = yield self.paho(port, "alice-1", username="alice", password="secret1")
        dev = yield self.paho(port, "dev-1", protocol=mqtt.MQTTv5, username="dev-1",
                              password=token("dev-1"))
        self.assertEqual((yield alice.subscribe(("alice/#", 1), ("devices/#", 1))), [1, 0x80])
        granted = yield dev.subscribe(("devices/#", 1), ("alice/#", 1))
        self.assertEqual([int(code) for code in granted], [1, 0x87])
        forged = jwt.encode({"sub": "alice", "exp": time.time() + 60},
                            "another secret that is long enough!", "HS256")
        for user, password, code in (("alice", forged, 0x86), ("mallory", "secret1", 0x86),
                                     ("alice", token("dev-1"), 0x86), (None, None, 0x87)):
            client = yield self.paho(port, "refused", connect=False, protocol=mqtt.MQTTv5,
                                     username=user, password=password)
            result = yield client.connect()
            self.assertEqual(result.rc, code, user)

    @inlineCallbacks
    def test_allow_anonymous(self) -> Any:
        """With --allow-anonymous a client without credentials connects, and the ACL's
        anonymous section is what it may do."""
        port = yield self.start_tap("--allow-anonymous")
        anon = yield self.paho(port, "anon", protocol=mqtt.MQTTv5)
        granted = yield anon.subscribe(("public/#", 0), ("alice/#", 0))
        self.assertEqual([int(code) for code in granted], [0, 0x87])


    @inlineCallbacks
    def test_every_adapter_one_chain(self) -> Any:
        """TCP, WebSocket and the HTTP bridge go through the same chain and ACL: alice's
        password and dev-1's token work on each, within their ACL sections; no or wrong
        credentials are refused alike."""
        from twisted.internet.utils import getProcessOutputAndValue

        mqtt_port, ws_port, http_port = yield self.start_tap(
            "--listen", "ws=tcp:0:interface=127.0.0.1",
            "--listen", "http=tcp:0:interface=127.0.0.1")
        watcher = yield self.paho(mqtt_port, "watch", username="alice", password="secret1")
        yield watcher.subscribe(("alice/#", 1))
        dev = yield self.paho(ws_port, "dev-ws", transport="websockets", protocol=mqtt.MQTTv5,
                              username="dev-1", password=token("dev-1"))
        granted = yield dev.subscribe(("devices/#", 1), ("alice/#", 1))
        self.assertEqual([int(code) for code in granted], [1, 0x87])
        refused = yield self.paho(ws_port, "ws-bad", connect=False, transport="websockets",
                                  username="alice", password="wrong")
        self.assertEqual((yield refused.connect()).rc, ReasonCode.BAD_USER_NAME_OR_PASSWORD)

        def curl(*args: str) -> Any:
            d = getProcessOutputAndValue("curl", [
                "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10", *args])
            return d.addCallback(lambda result: int(result[0]))

        base = f"http://127.0.0.1:{http_port}/publish?topic="
        post = ("-X", "POST", "--data-binary", "x")
        bearer = f"Authorization: Bearer {token('dev-1')}"
        stream = f"http://127.0.0.1:{http_port}/subscribe?topic=public/%23&client=s&timeout=0"
        for args, status in (((f"{base}alice/http", *post, "-u", "alice:secret1"), 200),
                             ((f"{base}devices/http", *post, "-H", bearer), 200),
                             ((f"{base}alice/x", *post, "-H", bearer), 403),
                             ((f"{base}alice/x", *post, "-u", "alice:wrong"), 401),
                             # No credentials: 401 asking for them (it was 403).
                             ((f"{base}public/x", *post), 401),
                             ((stream, "-H", "Accept: text/event-stream"), 401)):
            self.assertEqual((yield curl(*args)), status, args)
        message = yield watcher.next_message()
        self.assertEqual((message.topic, message.payload), ("alice/http", b"x"))
        # The ownership rule: only alice may end the session alice opened over TCP.
        session = f"http://127.0.0.1:{http_port}/session?client=watch"
        self.assertEqual((yield curl(session, "-X", "DELETE", "-H", bearer)), 403)
        self.assertEqual((yield curl(session, "-X", "DELETE", "-u", "alice:secret1")), 204)
        yield watcher.disconnected


SCRAM_FILE = "\n".join([make_secret("secret").line("sam")]) + "\n"


class ScramInChainTests(V5TestCase):
    """SCRAM-SHA-256 over CONNECT/AUTH with SCRAM one backend of a chain (passwd first),
    its users read from a file of StoredKey/ServerKey lines."""

    _scram = ScramAuthenticator(parse_users(SCRAM_FILE, "scram"))
    authenticator = authorizer = AuthChain([
        Backend("passwd", PasswordFileAuthenticator(parse_passwd(ALICE, "pw"), run=at_once)),
        Backend("scram", _scram, _scram)])

    @inlineCallbacks
    def exchange(self, user: str, password: str, raw: Any = None) -> Any:
        raw = raw or (yield self.raw5())
        scram = ScramClient([METHOD], user, password)
        raw.send(Connect(f"c-{user}", 5, True, 0, properties={
            P.AUTHENTICATION_METHOD: METHOD,
            P.AUTHENTICATION_DATA: scram.get_client_first().encode()}))
        challenge = yield raw.expect(Auth)
        scram.set_server_first(challenge.properties[P.AUTHENTICATION_DATA].decode())
        raw.send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, {
            P.AUTHENTICATION_METHOD: METHOD,
            P.AUTHENTICATION_DATA: scram.get_client_final().encode()}))
        connack = yield raw.expect(ConnAck)
        return scram, connack, raw

    @inlineCallbacks
    def test_scram_exchange_through_the_chain(self) -> Any:
        """The exchange succeeds, the server proves itself, the identity is scram's; a
        wrong password gets 0x86; password users of both backends log in plainly."""
        scram, connack, raw = yield self.exchange("sam", "secret")
        self.assertEqual(connack.reason_code, 0)
        scram.set_server_final(connack.properties[P.AUTHENTICATION_DATA].decode())
        self.assertEqual(self.session("c-sam").identity, ChainIdentity(1, "scram", "sam"))
        _, refused, _ = yield self.exchange("sam", "wrong")
        self.assertEqual(refused.reason_code, ReasonCode.BAD_USER_NAME_OR_PASSWORD)
        yield self.paho5("plain-sam", username="sam", password="secret")
        yield self.paho5("plain-alice", username="alice", password="secret1")
        # Re-authentication (AUTH 0x19) goes through the chain too [MQTT-4.12.1].
        again = ScramClient([METHOD], "sam", "secret")
        raw.send(Auth(ReasonCode.RE_AUTHENTICATE, {
            P.AUTHENTICATION_METHOD: METHOD,
            P.AUTHENTICATION_DATA: again.get_client_first().encode()}))
        challenge = yield raw.expect(Auth)
        again.set_server_first(challenge.properties[P.AUTHENTICATION_DATA].decode())
        raw.send(Auth(ReasonCode.CONTINUE_AUTHENTICATION, {
            P.AUTHENTICATION_METHOD: METHOD,
            P.AUTHENTICATION_DATA: again.get_client_final().encode()}))
        done = yield raw.expect(Auth)
        self.assertEqual(done.reason_code, ReasonCode.SUCCESS)
        again.set_server_final(done.properties[P.AUTHENTICATION_DATA].decode())
        self.assertEqual(self.session("c-sam").identity, ChainIdentity(1, "scram", "sam"))


SYS_ACL = """\
user alice
topic readwrite #
user carol
topic read $SYS/#
topic read end
"""


def _sys_chain() -> AuthChain:
    passwd = PasswordFileAuthenticator(parse_passwd(f"{ALICE}\n{CAROL}\n", "pw"), run=at_once)
    return AuthChain([Backend("passwd", passwd)])


class SysReadTests(V5TestCase):
    """[MQTT 4.7.2] $SYS is read-only, and once an ACL is given readable only by whom it
    allows: ``topic readwrite #`` does not cover $SYS topics."""

    authenticator = _sys_chain()
    authorizer = AllAuthorizers((AclAuthorizer(parse_acl(SYS_ACL, "acl")), authenticator))

    @inlineCallbacks
    def test_sys_readable_only_as_the_acl_allows(self) -> Any:
        """alice (readwrite #) cannot subscribe to $SYS filters and gets no $SYS value
        through # or +/broker/#, nor publish there; carol (read $SYS/#) gets the values."""
        alice = yield self.paho5("alice", username="alice", password="secret1")
        granted = yield alice.subscribe(("$SYS/#", 0), ("$SYS/broker/uptime", 0),
                                        ("+/broker/#", 0), ("#", 0))
        self.assertEqual([int(code) for code in granted], [0x87, 0x87, 0, 0])
        carol = yield self.paho5("carol", username="carol", password="c3")
        granted = yield carol.subscribe(("$SYS/#", 0), ("end", 0), ("#", 0))
        self.assertEqual([int(code) for code in granted], [0, 0, 0x87])
        SysTopics(self.broker).tick()
        self.assertEqual((yield alice.publish("$SYS/broker/uptime", b"forged", 1)), 0x87)
        yield alice.publish("end", b"", 1)
        values = yield carol.collect_until("end")
        topics = {m.topic for m in values}
        self.assertIn("$SYS/broker/uptime", topics)
        self.assertTrue(all(t.startswith("$SYS/broker/") for t in topics), topics)
        self.assertNotIn(b"forged", [m.payload for m in values])
        self.assertEqual((yield alice.collect_until("end")), [])


class _Tokens(JWTAuthenticator):
    def __init__(self) -> None:
        super().__init__(KeySource.from_secret(SECRET.encode()), username_claim="sub",
                         topics_claim="acl")


class BearerTests(HTTPBrokerTestCase):
    """``Authorization: Bearer TOKEN`` with ``usernameClaim=sub``: the token's claim is the
    user name (it was 401: no user name to compare the claim with)."""

    authenticator = authorizer = _Tokens()

    @inlineCallbacks
    def test_bearer_with_username_claim(self) -> Any:
        """curl and Agent publish with a Bearer token (200); its topic claims still hold
        (403); a token without the claim is 401."""
        good = token("dev-1", acl=["devices/dev-1"])
        status, _, body = yield self.curl("-H", f"Authorization: Bearer {good}",
                                          "--data-binary", "21", method="POST",
                                          path="/publish?topic=devices/dev-1/t")
        self.assertEqual(status, 200, body)
        yield self.json("POST", "/publish?topic=devices/dev-1/t", 200,
                        {"Authorization": f"Bearer {good}"}, b"1")
        yield self.json("POST", "/publish?topic=devices/dev-2/t", 403,
                        {"Authorization": f"Bearer {good}"}, b"1")
        nameless = jwt.encode({"exp": time.time() + 60, "acl": ["#"]}, SECRET, "HS256")
        yield self.json("POST", "/publish?topic=devices/dev-1/t", 401,
                        {"Authorization": f"Bearer {nameless}"}, b"1")


class TwistdTests(TwistdTestCase):
    """A real ``twistd -n mqttbroker``: the open quick start says so in its log, once."""

    @inlineCallbacks
    def test_open_quick_start_warns(self) -> Any:
        """``--listen tcp:PORT`` (every interface) with no --auth and no --acl logs one
        warning saying how to lock it down; on 127.0.0.1, with --auth or with --acl it
        does not."""
        directory = self.directory()
        (directory / "acl").write_text(ACL)
        (directory / "pw").write_text(ALICE + "\n")
        runs = {
            "open": ["--listen", "tcp:{port}"],
            "loopback": ["--listen", "tcp:{port}:interface=127.0.0.1"],
            "acl": ["--listen", "tcp:{port}", "--acl", str(directory / "acl")],
            "auth": ["--listen", "tcp:{port}", "--auth", f"passwd:{directory / 'pw'}"],
        }
        procs = {}
        for name, argv in runs.items():
            port = free_port()
            proc = self.twistd("-n", "mqttbroker", "--sys-interval", "0",
                               *[a.format(port=port) for a in argv])
            procs[name] = (proc, port)
        for proc, port in procs.values():
            yield self.wait_for_port(port, proc)
        open_proc, open_port = procs["open"]
        line = self.assertOneLine(open_proc.text, "may connect, publish and subscribe",
                                  f"mqtt=tcp:{open_port}", "--auth passwd:FILE", "--acl FILE",
                                  "interface=127.0.0.1")
        self.assertIn("warn", line)
        for name in ("loopback", "acl", "auth"):
            self.assertNotIn("may connect, publish and subscribe", procs[name][0].text, name)

    @inlineCallbacks
    def test_one_line_errors(self) -> Any:
        """anonymous with another backend, and a bad backend in a chain: one line, exit 2."""
        pw = self.directory() / "pw"
        pw.write_text(ALICE + "\n")
        cases = [(["--auth", "anonymous", "--auth", f"passwd:{pw}"],
                  ["--auth anonymous", "cannot be combined", "--allow-anonymous"]),
                 (["--auth", f"passwd:{pw}", "--auth", "jwt:secret=short"],
                  ["--auth 'jwt:secret=short'", "32 bytes"])]
        procs = [self.twistd("-n", "mqttbroker", "--listen", _listen(free_port()), *argv)
                 for argv, _ in cases]
        for (_, needles), proc in zip(cases, procs):
            code = yield self.ended(proc)
            self.assertEqual(code, 2, proc.text)
            self.assertOneLine(proc.text, "error", *needles)
