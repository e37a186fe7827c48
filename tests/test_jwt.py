"""JWT authentication: token checks (unit), topic prefixes, the plugin's options, and
end-to-end refusals (CONNACK 0x86 / 0x04) and authorization on a real broker."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mqtt_twisted.auth.jwt import (
    JWTAuthenticator,
    JWTIdentity,
    KeySource,
    TopicFilters,
    authenticator_from_options,
    parse_options,
)
from mqtt_twisted.codec import ConnAck, Connect, Publish, SubAck, Subscribe, Subscription
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.core.broker import Credentials
from mqtt_twisted.errors import AuthenticationError
from mqtt_twisted.interfaces import IAuthenticator, IAuthorizer, IAuthPlugin
from mqtt_twisted.plugins.jwt import JWTAuthPlugin
from tests.certs import temp_dir
from tests.pahoclient import connect_raw
from tests.securebroker import SecureBrokerTestCase

NOW = 1_800_000_000.0
SECRET = b"a shared secret of enough length!"
LONG = "0123456789abcdef0123456789abcdef"  # 32 bytes: the shortest secret accepted


def hs256(claims: dict[str, Any], secret: bytes = SECRET, **headers: Any) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers or None)


def auth(keys: KeySource | None = None, **kwargs: Any) -> JWTAuthenticator:
    return JWTAuthenticator(keys or KeySource.from_secret(SECRET), clock=lambda: NOW, **kwargs)


def pem(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


class TokenTests(SynchronousTestCase):
    """What the authenticator accepts and refuses, on a fixed clock."""

    def refused(self, authenticator: JWTAuthenticator, token: str | bytes | None,
                username: str | None = None) -> str:
        e = self.assertRaises(AuthenticationError, authenticator.verify, token, username)
        self.assertEqual((e.reason_code, e.v3_return_code), (0x86, 0x04))
        return str(e)

    def test_hs256(self) -> None:
        """A valid HS256 token gives an identity named by its subject."""
        identity = auth().verify(hs256({"sub": "dev-1", "exp": NOW + 60}).encode(), "anyone")
        self.assertIsInstance(identity, JWTIdentity)
        self.assertEqual((str(identity), identity.username, identity.expires),
                         ("dev-1", "anyone", NOW + 60))

    def test_wrong_secret(self) -> None:
        """A token signed with another secret is refused (signature)."""
        self.assertIn("Signature verification failed",
                      self.refused(auth(), hs256({"exp": NOW + 60}, b"another secret that is long enough")))

    def test_no_token(self) -> None:
        """No password, or one that is not a JWT, is refused with a message saying so."""
        self.assertIn("no token", self.refused(auth(), None))
        self.assertIn("bad token", self.refused(auth(), b"hunter2"))
        self.assertIn("not a JWT", self.refused(auth(), b"\xff\xfe"))

    def test_malformed_tokens(self) -> None:
        """Garbage in every part of a token (segments, padding, JSON, a non-object payload,
        a numeric kid) is an AuthenticationError, never another exception."""
        import base64

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header, numeric_kid = b64(b'{"alg":"HS256"}'), b64(b'{"alg":"HS256","kid":5}')
        for token in ("a.b.c", "....", "x", f"{b64(b'not json')}.e30.x",
                      f"{header}.{b64(b'[1, 2]')}.{b64(b'x' * 32)}", f"{numeric_kid}.e30.x",
                      hs256({"exp": NOW + 60}) + "x", "é.é.é"):
            self.refused(auth(), token.encode())

    def test_exp(self) -> None:
        """An expired token is refused; leeway covers clock skew; exp must be a number."""
        token = hs256({"exp": NOW - 10})
        self.assertEqual(self.refused(auth(), token), "token expired")
        self.assertEqual(auth(leeway=30).verify(token, None).expires, NOW + 20)
        self.assertIn("exp is not a number", self.refused(auth(), hs256({"exp": "soon"})))

    def test_exp_required_by_default(self) -> None:
        """A token without exp is refused unless requireExp=no."""
        self.assertEqual(self.refused(auth(), hs256({"sub": "x"})), "token has no exp claim")
        self.assertIsNone(auth(require_exp=False).verify(hs256({"sub": "x"}), None).expires)

    def test_nbf(self) -> None:
        """A token not valid yet (nbf in the future) is refused; leeway covers skew."""
        token = hs256({"exp": NOW + 600, "nbf": NOW + 10})
        self.assertEqual(self.refused(auth(), token), "token not valid yet (nbf)")
        auth(leeway=10).verify(token, None)

    def test_audience(self) -> None:
        """aud must name a configured audience; a token with aud is refused by a broker that
        configures none."""
        token = hs256({"exp": NOW + 60, "aud": ["other", "mqtt"]})
        auth(audience=["mqtt"]).verify(token, None)
        self.assertIn("audience", self.refused(auth(audience=["web"]), token).lower())
        self.assertIn("audience", self.refused(auth(), token).lower())
        self.assertIn("aud", self.refused(auth(audience=["mqtt"]), hs256({"exp": NOW + 60})))

    def test_issuer(self) -> None:
        """iss must be one of the configured issuers."""
        token = hs256({"exp": NOW + 60, "iss": "https://auth.example.com"})
        auth(issuer=["https://auth.example.com"]).verify(token, None)
        auth(issuer=["a", "https://auth.example.com"]).verify(token, None)
        self.assertIn("issuer", self.refused(auth(issuer=["https://evil.example"]), token))
        self.assertIn("iss", self.refused(auth(issuer=["x"]), hs256({"exp": NOW + 60})))

    def test_rs256_public_key(self) -> None:
        """RS256 tokens verify against an RSA public key; another key's token is refused."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        checker = auth(KeySource.from_public_key(pem(key.public_key())))
        checker.verify(jwt.encode({"exp": NOW + 60, "sub": "r"}, key, algorithm="RS256"), None)
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.refused(checker, jwt.encode({"exp": NOW + 60}, other, algorithm="RS256"))

    def test_es256_public_key(self) -> None:
        """ES256 tokens verify against a P-256 public key; RS256 is not accepted with it."""
        key = ec.generate_private_key(ec.SECP256R1())
        keys = KeySource.from_public_key(pem(key.public_key()))
        auth(keys).verify(jwt.encode({"exp": NOW + 60}, key, algorithm="ES256"), None)
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.assertIn("alg value is not allowed", self.refused(
            auth(keys), jwt.encode({"exp": NOW + 60}, rsa_key, algorithm="RS256")))

    def test_algorithm_confusion_and_none(self) -> None:
        """An HS256 token keyed with the public key's PEM, and an unsigned (alg none) token,
        are refused by a public-key authenticator."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        checker = auth(KeySource.from_public_key(pem(key.public_key())))
        forged = jwt.encode({"exp": NOW + 60}, "x" * 32, algorithm="HS256")
        self.refused(checker, forged)
        unsigned = jwt.encode({"exp": NOW + 60}, None, algorithm="none")
        self.refused(checker, unsigned)
        self.refused(auth(), unsigned)

    def test_jwks(self) -> None:
        """A JWKS file's keys are chosen by kid (RSA and EC); unknown kids, and tokens
        without kid when there are several keys, are refused."""
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        keyset = {"keys": [
            dict(json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())),
                 kid="r1", alg="RS256", use="sig"),
            dict(json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), kid="e1"),
        ]}
        checker = auth(KeySource.from_jwks(json.dumps(keyset)))
        claims = {"exp": NOW + 60}
        checker.verify(jwt.encode(claims, rsa_key, "RS256", headers={"kid": "r1"}), None)
        checker.verify(jwt.encode(claims, ec_key, "ES256", headers={"kid": "e1"}), None)
        self.assertIn("unknown key", self.refused(
            checker, jwt.encode(claims, ec_key, "ES256", headers={"kid": "e2"})))
        self.assertIn("no kid", self.refused(checker, jwt.encode(claims, ec_key, "ES256")))
        # The RSA key's kid with the EC key's signature: the RSA key does not verify it.
        self.refused(checker, jwt.encode(claims, ec_key, "ES256", headers={"kid": "r1"}))

    def test_username_claim(self) -> None:
        """usernameClaim: the CONNECT user name must equal the claim."""
        checker = auth(username_claim="sub")
        token = hs256({"exp": NOW + 60, "sub": "dev-9"})
        checker.verify(token, "dev-9")
        self.assertIn("does not match", self.refused(checker, token, "dev-8"))
        self.assertIn("no sub claim", self.refused(checker, hs256({"exp": NOW + 60}), "dev-9"))

    def test_username_from_the_claim(self) -> None:
        """Without a user name beside the token (an HTTP Bearer token, an MQTT 5 CONNECT with
        only a password) the claim is the user name; a token without it is still refused."""
        checker = auth(username_claim="sub")
        identity = checker.verify(hs256({"exp": NOW + 60, "sub": "dev-9"}), None)
        self.assertEqual((identity.username, str(identity)), ("dev-9", "dev-9"))
        self.assertIn("no sub claim", self.refused(checker, hs256({"exp": NOW + 60}), None))
        self.assertIsNone(auth().verify(hs256({"exp": NOW + 60, "sub": "x"}), None).username)

    def test_authenticate_deferreds(self) -> None:
        """authenticate() fires with the identity, or fails with AuthenticationError."""
        results: list[Any] = []
        good = Credentials("c", "u", hs256({"exp": NOW + 60}).encode())
        auth().authenticate(good).addCallback(results.append)
        auth().authenticate(Credentials("c", "u", b"x")).addErrback(results.append)
        self.assertIsInstance(results[0], JWTIdentity)
        self.assertTrue(results[1].check(AuthenticationError))


class TopicTests(SynchronousTestCase):
    """Topic prefixes from a claim, and the authorizer's answers."""

    def test_prefixes_are_level_aware(self) -> None:
        """devices/42 allows devices/42 and below, not devices/420; '#' allows everything."""
        p = TopicFilters.parse(["devices/42", "alerts/#"])
        self.assertTrue(p.allows_topic("devices/42"))
        self.assertTrue(p.allows_topic("devices/42/temp"))
        self.assertTrue(p.allows_topic("alerts/fire"))
        self.assertFalse(p.allows_topic("devices/420"))
        self.assertFalse(p.allows_topic("devices"))
        self.assertTrue(TopicFilters.parse(["#"]).allows_topic("anything/at/all"))

    def test_filters_stay_inside_prefixes(self) -> None:
        """A filter is allowed if its leading levels are the prefix's, literally: wildcards
        inside the prefix would reach beyond it."""
        p = TopicFilters.parse(["devices/42/"])
        for allowed in ("devices/42/#", "devices/42/+/temp", "devices/42", "$share/g/devices/42/x"):
            self.assertTrue(p.allows_filter(allowed), allowed)
        for refused in ("devices/#", "devices/+/temp", "#", "+/42/x", "$share/g/#"):
            self.assertFalse(p.allows_filter(refused), refused)

    def test_filters_as_mqtt_filters(self) -> None:
        """Claims are MQTT filters matched with the ACL's covering test: A/# allows A and
        below; /# only topics starting with '/'; # everything but $ topics; an empty claim
        (string or list) nothing; +/x one level; a bad filter is a refusal."""
        a = TopicFilters.parse(["A/#"])
        for topic in ("A", "A/x", "A/x/y"):
            self.assertTrue(a.allows_topic(topic), topic)
        self.assertFalse(a.allows_topic("B"))
        self.assertFalse(a.allows_topic("AB"))
        slash = TopicFilters.parse(["/#"])
        self.assertTrue(slash.allows_topic("/x"))
        self.assertTrue(slash.allows_topic("/"))
        for topic in ("x", "x/y", "$SYS/broker/uptime"):
            self.assertFalse(slash.allows_topic(topic), topic)
        self.assertFalse(slash.allows_filter("#"))
        self.assertFalse(slash.grants_all)
        hash_ = TopicFilters.parse(["#"])
        self.assertTrue(hash_.grants_all)
        self.assertTrue(hash_.allows_topic("a/b"))
        self.assertTrue(hash_.allows_filter("#"))
        for dollar in ("$SYS/broker/uptime", "$SYS/#", "$other"):
            self.assertFalse(hash_.allows_topic(dollar), dollar)
            self.assertFalse(hash_.allows_filter(dollar), dollar)
        sys_ = TopicFilters.parse(["$SYS/#"])
        self.assertTrue(sys_.allows_filter("$SYS/broker/+"))
        self.assertFalse(sys_.allows_topic("a"))
        for empty in ([], [""], ["  "]):
            nothing = TopicFilters.parse(empty)
            self.assertEqual(nothing.filters, ())
            for probe in ("a", "/a", "#", "$SYS/x"):
                self.assertFalse(nothing.allows_topic(probe), (empty, probe))
                self.assertFalse(nothing.allows_filter(probe), (empty, probe))
        plus = TopicFilters.parse(["+/temp"])
        self.assertTrue(plus.allows_topic("k/temp"))
        self.assertFalse(plus.allows_topic("k/temp/x"))
        self.assertFalse(plus.allows_filter("#"))
        self.assertTrue(plus.allows_filter("$share/g/k/temp"))
        for bad in ("a/#/b", "a#", "$share/g/x"):
            self.assertRaises(AuthenticationError, TopicFilters.parse, [bad], "acl")

    def test_same_answers_as_the_acl_covering_test(self) -> None:
        """The split-once fast path answers what acl.filter_covers answers, for every pair
        of a set of rules and topics/filters."""
        from itertools import product

        from mqtt_twisted.auth.acl import filter_covers

        rules = ["#", "/#", "a/#", "a/b/#", "a/+", "+/b", "+/#", "a/+/#", "$SYS/#", "a/b",
                 "+", "a//#", "$SYS/+/x"]
        probes = ["a", "a/b", "a/b/c", "/a", "/", "b", "b/b", "a//x", "#", "+", "a/#", "a/+",
                  "+/b", "$SYS", "$SYS/x", "$SYS/x/x", "$SYS/#", "a/b/#", "a/+/c", ""]
        for rule, probe in product(rules, probes):
            (expected,) = {filter_covers(f, probe) for f in TopicFilters.parse([rule]).filters}
            parsed = TopicFilters.parse([rule])
            self.assertEqual(parsed.allows_filter(probe), expected, (rule, probe))
            self.assertEqual(parsed.allows_topic(probe), expected, (rule, probe))

    def test_token_claims_as_filters(self) -> None:
        """Through a token: "/#" no longer grants every topic, "" grants none, "#" not $SYS."""
        checker = auth(topics_claim="acl")
        for claim, topic, allowed in (("/#", "a/b", False), ("/#", "/a", True),
                                      ("", "a", False), ("#", "a", True),
                                      ("#", "$SYS/broker/uptime", False),
                                      (["$SYS/#", "#"], "$SYS/broker/uptime", True)):
            who = checker.verify(hs256({"exp": NOW + 60, "acl": claim}), None)
            self.assertEqual(checker.mayPublish(who, "c", topic), allowed, (claim, topic))
            self.assertEqual(checker.maySubscribe(who, "c", topic), allowed, (claim, topic))

    def test_claim_forms(self) -> None:
        """A list applies to both; {pub, sub, all} splits them; no claim allows nothing."""
        checker = auth(topics_claim="acl")
        both = checker.verify(hs256({"exp": NOW + 60, "acl": ["a/1"]}), None)
        self.assertTrue(checker.mayPublish(both, "c", "a/1/x"))
        self.assertTrue(checker.maySubscribe(both, "c", "a/1/#"))
        split = checker.verify(hs256({"exp": NOW + 60, "acl": {
            "pub": ["up/9"], "sub": ["down/9"], "all": ["chat"]}}), None)
        self.assertTrue(checker.mayPublish(split, "c", "up/9/t"))
        self.assertFalse(checker.mayPublish(split, "c", "down/9/t"))
        self.assertTrue(checker.maySubscribe(split, "c", "down/9/#"))
        self.assertFalse(checker.maySubscribe(split, "c", "up/9/#"))
        self.assertTrue(checker.mayPublish(split, "c", "chat/room"))
        none = checker.verify(hs256({"exp": NOW + 60}), None)
        self.assertFalse(checker.mayPublish(none, "c", "a/1"))
        e = self.assertRaises(AuthenticationError, checker.verify,
                              hs256({"exp": NOW + 60, "acl": {"write": ["x"]}}), None)
        self.assertIn("unknown keys", str(e))

    def test_no_topics_claim_configured(self) -> None:
        """Without topicsClaim every topic is allowed while the token is valid."""
        checker = auth()
        identity = checker.verify(hs256({"exp": NOW + 60}), None)
        self.assertTrue(checker.mayPublish(identity, "c", "any/topic"))
        self.assertTrue(checker.maySubscribe(identity, "c", "#"))

    def test_expired_identity_may_do_nothing(self) -> None:
        """Once the token expires, publishing and subscribing are refused; so for identities
        that are not JWT ones."""
        now = [NOW]
        checker = JWTAuthenticator(KeySource.from_secret(SECRET), clock=lambda: now[0])
        identity = checker.verify(hs256({"exp": NOW + 60}), None)
        self.assertTrue(checker.mayPublish(identity, "c", "t"))
        now[0] = NOW + 61
        self.assertFalse(checker.mayPublish(identity, "c", "t"))
        self.assertFalse(checker.maySubscribe(identity, "c", "t"))
        self.assertFalse(checker.mayPublish("someone", "c", "t"))


class PluginTests(SynchronousTestCase):
    """``--auth jwt:...``: option parsing and the plugin."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)

    def write(self, name: str, data: bytes | str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        return path

    def test_plugin_and_interfaces(self) -> None:
        """JWTAuthPlugin provides IAuthPlugin and makes an IAuthenticator and IAuthorizer."""
        from twisted.internet.task import Clock

        plugin = JWTAuthPlugin()
        self.assertTrue(verifyObject(IAuthPlugin, plugin))
        made = plugin.makeAuthenticator(Clock(), f"secret={LONG}")
        self.assertTrue(verifyObject(IAuthenticator, made))
        self.assertTrue(verifyObject(IAuthorizer, made))

    def test_grant_all_warning(self) -> None:
        """Without topicsClaim every valid token grants every topic: makeService logs one
        warning saying so (naming the backend, never its secret), unless topicsClaim or an
        ACL file restricts them."""
        from twisted.internet.testing import MemoryReactorClock
        from twisted.logger import LogLevel, formatEvent

        from mqtt_twisted.tap import Options, makeService

        acl = os.path.join(self.dir, "acl")
        with open(acl, "w") as f:
            f.write("topic read #\n")
        self.assertTrue(auth().grants_all_topics)
        self.assertFalse(auth(topics_claim="acl").grants_all_topics)
        for extra, warned in (([], True), (["--acl", acl], False),
                              (["--auth", f"jwt:secret={LONG}:topicsClaim=acl"], False)):
            events: list[dict[str, Any]] = []
            globalLogPublisher.addObserver(events.append)
            self.addCleanup(globalLogPublisher.removeObserver, events.append)
            options = Options()
            argv = extra if extra[:1] == ["--auth"] else ["--auth", f"jwt:secret={LONG}", *extra]
            options.parseOptions(["--listen", "tcp:1884:interface=127.0.0.1", *argv])
            makeService(options, MemoryReactorClock())
            globalLogPublisher.removeObserver(events.append)
            said = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
            if warned:
                (line,) = said
                self.assertIn("--auth jwt: every client it lets in may publish and subscribe "
                              "to every topic", line)
                self.assertIn("topicsClaim=CLAIM", line)
                self.assertNotIn(LONG, line)
            else:
                self.assertEqual(said, [], extra)

    def test_escaped_colons(self) -> None:
        """Values may hold colons escaped as \\: (issuer URLs)."""
        options = parse_options("secret=x:issuer=https\\://auth.example.com:audience=a,b")
        self.assertEqual(options, {"secret": "x", "issuer": "https://auth.example.com",
                                   "audience": "a,b"})

    def test_config_file(self) -> None:
        """jwt:FILE (or config=FILE) reads key = value lines; command-line keys win."""
        key = ec.generate_private_key(ec.SECP256R1())
        public = self.write("pub.pem", pem(key.public_key()))
        config = self.write("jwt.conf", f"# broker tokens\npublicKey = {public}\n"
                                        "issuer = https://auth.example.com\nleeway = 5\n")
        self.assertEqual(parse_options(config)["issuer"], "https://auth.example.com")
        options = parse_options(f"config={config}:leeway=9")
        self.assertEqual(options["leeway"], "9")
        checker = authenticator_from_options(options, clock=lambda: NOW)
        token = jwt.encode({"exp": NOW - 8, "iss": "https://auth.example.com"}, key, "ES256")
        checker.verify(token, None)

    def test_secret_file(self) -> None:
        """secretFile= reads the shared secret (surrounding whitespace dropped)."""
        path = self.write("secret", SECRET + b"\n")
        checker = authenticator_from_options({"secretFile": path}, clock=lambda: NOW)
        checker.verify(hs256({"exp": NOW + 1}), None)

    def test_errors(self) -> None:
        """Missing or doubled key sources, unknown keys, unreadable files and bad values are
        ValueErrors saying what to fix."""
        for argument, text in (("audience=x", "exactly one of"),
                               ("secret=a:publicKey=b", "exactly one of"),
                               ("secret=a:colour=blue", "unknown jwt option(s) colour"),
                               ("publicKey=/nonexistent.pem", "/nonexistent.pem"),
                               (f"secret={LONG}:leeway=soon", "leeway"),
                               ("secret=a:algorithms=RS256", "cannot be used"),
                               (f"secret={LONG}:requireExp=maybe", "requireExp"),
                               ("secret=31-bytes-are-one-byte-too-short",
                                "is 31 bytes; HMAC needs at least 32 bytes")):
            e = self.assertRaises(ValueError,
                                  lambda a=argument: authenticator_from_options(parse_options(a)))
            self.assertIn(text, str(e), argument)
        not_a_key = self.write("bad.pem", "not a key")
        e = self.assertRaises(ValueError, authenticator_from_options, {"publicKey": not_a_key})
        self.assertIn("not a PEM public key", str(e))

    def test_twistd_option(self) -> None:
        """--auth jwt:publicKey=/missing ends start-up with a one-line message."""
        from mqtt_twisted.tap import Options, makeService

        options = Options()
        options.parseOptions(["--auth", "jwt:publicKey=/missing.pem"])
        from twisted.internet.testing import MemoryReactorClock

        err = io.StringIO()
        with redirect_stderr(err):
            e = self.assertRaises(SystemExit, makeService, options, MemoryReactorClock())
        self.assertEqual(e.code, 2)
        self.assertIn("twistd mqttbroker: error: --auth 'jwt:publicKey=/missing.pem'",
                      err.getvalue())


class EndToEndTests(SecureBrokerTestCase):
    """A broker with --auth jwt: refusals on the wire and topic authorization."""

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def authenticator(self) -> JWTAuthenticator:
        return JWTAuthenticator(KeySource.from_secret(SECRET), topics_claim="acl",
                                username_claim="sub", clock=self.reactor.seconds)

    def token(self, **claims: Any) -> str:
        claims.setdefault("exp", self.reactor.seconds() + 300)
        claims.setdefault("sub", "dev-1")
        return hs256(claims)

    @inlineCallbacks
    def test_bad_tokens_refused_v5_and_v311(self) -> None:
        """An expired token gets CONNACK 0x86 from paho v5, a bad one 0x04 on MQTT 3.1.1,
        each with a log line naming the reason."""
        import paho.mqtt.client as mqtt

        a = self.authenticator()
        (port,) = yield self.start("tcp:0:interface=127.0.0.1", authenticator=a, authorizer=a)
        expired = self.token(exp=self.reactor.seconds() - 1)
        client = yield self.paho(port, "v5", connect=False, protocol=mqtt.MQTTv5,
                                 username="dev-1", password=expired)
        result = yield client.connect()
        self.assertEqual(result.rc, ReasonCode.BAD_USER_NAME_OR_PASSWORD)  # 0x86
        raw = yield connect_raw(self.reactor, port)
        self.addCleanup(raw.abort)
        raw.send(Connect("v311", 4, True, 0, None, "dev-1", b"not.a.token"))
        connack = yield raw.expect(ConnAck)
        self.assertEqual(connack.reason_code, 0x04)
        yield raw.wait_closed()
        # One authentication failure line each, naming the client and the reason.
        failures = {e["client_id"]: e["log_format"].format(**e) for e in self.events
                    if e.get("action") == "auth_failure"}
        self.assertEqual(sorted(failures), ["v311", "v5"])
        self.assertIn("Authentication failed for v5", failures["v5"])
        self.assertIn("token expired", failures["v5"])
        self.assertIn("Authentication failed for v311", failures["v311"])
        self.assertIn("bad token", failures["v311"])
        self.assertNotIn("not.a.token", "\n".join(failures.values()))

    @inlineCallbacks
    def test_username_must_match(self) -> None:
        """With usernameClaim=sub, a good token under another user name is refused (0x04)."""
        a = self.authenticator()
        (port,) = yield self.start("tcp:0:interface=127.0.0.1", authenticator=a, authorizer=a)
        raw = yield connect_raw(self.reactor, port)
        self.addCleanup(raw.abort)
        raw.send(Connect("c", 4, True, 0, None, "dev-2", self.token().encode()))
        self.assertEqual((yield raw.expect(ConnAck)).reason_code, 0x04)

    @inlineCallbacks
    def test_topic_prefixes_enforced(self) -> None:
        """A token's acl claim decides SUBACK codes and which PUBLISHes are routed."""
        a = self.authenticator()
        (port,) = yield self.start("tcp:0:interface=127.0.0.1", authenticator=a, authorizer=a)
        raw = yield connect_raw(self.reactor, port)
        self.addCleanup(raw.abort)
        token = self.token(acl={"sub": ["devices/dev-1"], "pub": ["devices/dev-1"]})
        raw.send(Connect("c", 4, True, 0, None, "dev-1", token.encode()))
        self.assertEqual((yield raw.expect(ConnAck)).reason_code, 0)
        raw.send(Subscribe(1, [Subscription("devices/dev-1/#", 1),
                               Subscription("devices/#", 1)]))
        suback = yield raw.expect(SubAck)
        self.assertEqual(list(suback.reason_codes), [1, 0x80])
        raw.send(Publish("devices/dev-2/x", b"not mine", 0, False, False, None))
        raw.send(Publish("devices/dev-1/x", b"mine", 0, False, False, None))
        received = yield raw.expect(Publish)
        self.assertEqual((received.topic, received.payload), ("devices/dev-1/x", b"mine"))
