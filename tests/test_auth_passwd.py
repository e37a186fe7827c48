"""Mosquitto password files (``--auth passwd:FILE``): files written by the real
``mosquitto_passwd`` ($7$ PBKDF2-SHA512 and, with ``-H sha512``, $6$ SHA-512), the
parser's errors with their line numbers, the hash computed off the reactor thread,
refusals on the wire (paho and raw CONNECTs) and twistd's one-line start-up error."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface.verify import verifyObject

from mqtt_twisted.auth.passwd import PasswordFileAuthenticator, parse_passwd, read_passwd
from mqtt_twisted.codec import ConnAck, Connect
from mqtt_twisted.constants import ReasonCode
from mqtt_twisted.errors import AuthenticationError, AuthorizationError, ValidationError
from mqtt_twisted.interfaces import IAuthenticator, IAuthPlugin
from mqtt_twisted.plugins.builtin import PasswdAuthPlugin
from mqtt_twisted.records import Credentials
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore
from tests.certs import temp_dir
from tests.pahoclient import connect_raw
from tests.redisserver import free_port
from tests.securebroker import SecureBrokerTestCase
from tests.test_twistd_run import TwistdTestCase, _listen

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
#: A $7$ line (mosquitto_passwd 2.0.11, password "secret1") and a $6$ one (-H sha512,
#: password "c3"), for the tests that need no mosquitto_passwd.
ALICE = ("alice:$7$101$4VfHc0LXprOQpLwK$IfTcalXlkSF73vSPqn/pLMxghkkxOk7NEa5oXJmf/qkbZJu73R"
         "EP0iWWq1w5RPtLGxw2a3K4NA+294pPRXZahw==")
CAROL = ("carol:$6$VUAvlawD0SnAgaSO$LEFGfW/1EvYQR0UoX1ayjarH7LNlRecw++R4DOVRWdDUNj8kPRKT5Dtq"
         "T89ImUYONWTK82/vkAqje5/ziXbwYg==")


def mosquitto_passwd(*args: str) -> None:
    if not os.access(MOSQUITTO_PASSWD, os.X_OK):
        raise SkipTest("mosquitto_passwd is not installed (apt-get install mosquitto)")
    subprocess.run([MOSQUITTO_PASSWD, *args], check=True, capture_output=True)


def made_by_mosquitto(directory: str) -> str:
    """alice (-c -b, $7$), bob added (password with a colon, a space and UTF-8) and carol
    (-H sha512: $6$), all written by the real mosquitto_passwd."""
    path = os.path.join(directory, "passwd")
    mosquitto_passwd("-c", "-b", path, "alice", "secret1")
    mosquitto_passwd("-b", path, "bob", "pa:ss wörd")
    mosquitto_passwd("-H", "sha512", "-b", path, "carol", "c3")
    return path


def at_once(f: Any, *args: Any) -> defer.Deferred[Any]:
    """A runner computing the hash synchronously: sans-IO tests need no threads."""
    return maybeDeferred(f, *args)


def creds(username: str | None, password: bytes | None) -> Credentials:
    return Credentials("c1", username, password, None, "127.0.0.1:5", "mqtt")


class FileTests(SynchronousTestCase):
    """What mosquitto_passwd writes is read and checked; refusals carry the right codes."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)

    def test_mosquitto_passwd_files(self) -> None:
        """-c -b ($7$), a second user added, -H sha512 ($6$): each password is accepted and
        the identity is the user name."""
        path = made_by_mosquitto(self.dir)
        with open(path) as f:
            kinds = [line.split(":", 1)[1][:3] for line in f]
        self.assertEqual(kinds, ["$7$", "$7$", "$6$"])
        a = PasswordFileAuthenticator.from_file(path, run=at_once)
        for user, password in (("alice", "secret1"), ("bob", "pa:ss wörd"), ("carol", "c3")):
            d = a.authenticate(creds(user, password.encode()))
            self.assertEqual(self.successResultOf(d), user)

    def test_refusals(self) -> None:
        """A wrong password and an unknown user are AuthenticationError (0x86 / 4); no user
        name is AuthorizationError (0x87 / 5); a user name without a password is wrong."""
        a = PasswordFileAuthenticator(parse_passwd(f"{ALICE}\n{CAROL}\n", "f"), run=at_once)
        for user, password in (("alice", b"secret2"), ("carol", b"secret1"), ("mallory", b"x"),
                               ("alice", None), ("alice", b"")):
            failure = self.failureResultOf(a.authenticate(creds(user, password)),
                                           AuthenticationError)
            self.assertEqual((failure.value.reason_code, failure.value.v3_return_code),
                             (0x86, 4))
        failure = self.failureResultOf(a.authenticate(creds(None, b"secret1")),
                                       AuthorizationError)
        self.assertEqual((failure.value.reason_code, failure.value.v3_return_code), (0x87, 5))

    def test_comments_and_blank_lines(self) -> None:
        """Blank lines, # comments and surrounding whitespace are ignored."""
        users = parse_passwd(f"# users\n\n   \n  {ALICE}  \n# {CAROL}\n", "f")
        self.assertEqual(sorted(users), ["alice"])

    def test_parse_errors(self) -> None:
        """Each malformed line is an error naming the file and the line."""
        h7 = ALICE.split(":", 1)[1]
        _, _, it, salt, digest = h7.split("$")
        cases = [
            ("nocolon", "expected user:HASH"),
            (f":{h7}", "expected user:HASH"),
            ("dave:plaintext", "plain-text password"),
            ("dave:", "plain-text password"),
            (f"dave:$5${salt}${digest}", "unknown hash type $5$"),
            (f"dave:$7${it}${salt}", "$7$ITERATIONS$SALT$HASH"),
            (f"dave:$7$many${salt}${digest}", "iterations 'many'"),
            (f"dave:$7$0${salt}${digest}", "iterations '0'"),
            (f"dave:$7${it}$not*base64${digest}", "salt is not valid base64"),
            (f"dave:$7${it}${salt}$abc", "hash is not valid base64"),
            (f"dave:$7${it}${salt}$AAAA", "hash is 3 bytes, not 64"),
            (f"dave:$6${salt}", "$6$SALT$HASH"),
            (f"dave:$6$${digest}", "salt is empty"),
            (ALICE, "user 'alice' is already on line 2"),
        ]
        for line, message in cases:
            text = f"# header\n{ALICE}\n\n{line}\n"
            e = self.assertRaises(ValidationError, parse_passwd, text, "/etc/mqtt/passwd")
            self.assertTrue(str(e).startswith("/etc/mqtt/passwd:4: "), (line, str(e)))
            self.assertIn(message, str(e), line)

    def test_not_utf8(self) -> None:
        """Bytes that are not UTF-8 are an error on their line."""
        path = os.path.join(self.dir, "passwd")
        with open(path, "wb") as f:
            f.write(ALICE.encode() + b"\n\xff\xfe:x\n")
        e = self.assertRaises(ValidationError, read_passwd, path)
        self.assertEqual(str(e), f"{path}:2: not UTF-8")

    def test_runs_the_hash_through_run(self) -> None:
        """Every check, an unknown user's too (no timing hint), goes through the runner."""
        calls: list[Any] = []

        def run(f: Any, *args: Any) -> defer.Deferred[Any]:
            calls.append(args)
            return maybeDeferred(f, *args)

        a = PasswordFileAuthenticator(parse_passwd(ALICE, "f"), run=run)
        self.successResultOf(a.authenticate(creds("alice", b"secret1")))
        self.failureResultOf(a.authenticate(creds("nobody", b"pw")), AuthenticationError)
        self.assertEqual(calls, [(b"secret1",), (b"pw",)])

    def test_plugin(self) -> None:
        """PasswdAuthPlugin provides IAuthPlugin and makes an IAuthenticator; a missing file
        or no argument is a ValueError naming it."""
        path = os.path.join(self.dir, "passwd")
        with open(path, "w") as f:
            f.write(ALICE + "\n")
        plugin = PasswdAuthPlugin()
        self.assertTrue(verifyObject(IAuthPlugin, plugin))
        made = plugin.makeAuthenticator(MemoryReactorClock(), path)
        self.assertTrue(verifyObject(IAuthenticator, made))
        e = self.assertRaises(ValueError, plugin.makeAuthenticator, MemoryReactorClock(),
                              "/missing")
        self.assertEqual(str(e), "cannot read password file /missing: No such file or directory")
        self.assertIn("needs a password file",
                      str(self.assertRaises(ValueError, plugin.makeAuthenticator, None, "")))

    def test_reload_on_sighup(self) -> None:
        """BrokerService.reload (SIGHUP) re-reads the file; a broken file keeps the old users."""
        path = os.path.join(self.dir, "passwd")
        with open(path, "w") as f:
            f.write(ALICE + "\n")
        a = PasswordFileAuthenticator.from_file(path, run=at_once)
        reactor = MemoryReactorClock()
        service = BrokerService(reactor, MemoryStore(reactor), None, a)
        with open(path, "w") as f:
            f.write(CAROL + "\n")
        service.reload()
        self.assertEqual(self.successResultOf(a.authenticate(creds("carol", b"c3"))), "carol")
        self.failureResultOf(a.authenticate(creds("alice", b"secret1")), AuthenticationError)
        with open(path, "w") as f:
            f.write("broken\n")
        self.assertFalse(a.reload())
        self.assertEqual(self.successResultOf(a.authenticate(creds("carol", b"c3"))), "carol")
        self.flushLoggedErrors()


class ThreadTests(SecureBrokerTestCase):
    """The PBKDF2 runs in the reactor's thread pool, not on the reactor thread."""

    @inlineCallbacks
    def test_not_on_the_reactor_thread(self) -> Any:
        """With the real reactor, authenticate returns a Deferred not fired yet (the hash is
        being computed in a thread); it fires with the user name once the thread is done."""
        a = PasswordFileAuthenticator(parse_passwd(ALICE, "f"), reactor=self.reactor)
        d = a.authenticate(creds("alice", b"secret1"))
        self.assertFalse(d.called)
        self.assertEqual((yield d), "alice")
        d = a.authenticate(creds("alice", b"wrong"))
        self.assertFalse(d.called)
        yield self.assertFailure(d, AuthenticationError)


class EndToEndTests(SecureBrokerTestCase):
    """A broker with a mosquitto_passwd file: paho and raw CONNECTs, accepted and refused."""

    @inlineCallbacks
    def start_with_file(self) -> Any:
        path = made_by_mosquitto(temp_dir(self))
        a = PasswordFileAuthenticator.from_file(path, reactor=self.reactor)
        (port,) = yield self.start("tcp:0:interface=127.0.0.1", authenticator=a)
        return port

    @inlineCallbacks
    def test_paho_right_and_wrong_passwords(self) -> Any:
        """paho 3.1.1 and 5 connect with the right password; v5 gets 0x86 for a wrong one
        and for an unknown user."""
        import paho.mqtt.client as mqtt

        port = yield self.start_with_file()
        yield self.paho(port, "ok311", username="alice", password="secret1")
        yield self.paho(port, "ok5", protocol=mqtt.MQTTv5, username="bob",
                        password="pa:ss wörd")
        for user, password in (("alice", "wrong"), ("mallory", "secret1")):
            client = yield self.paho(port, f"no-{user}", connect=False, protocol=mqtt.MQTTv5,
                                     username=user, password=password)
            result = yield client.connect()
            self.assertEqual(result.rc, ReasonCode.BAD_USER_NAME_OR_PASSWORD)  # 0x86

    @inlineCallbacks
    def test_v311_return_codes(self) -> Any:
        """On MQTT 3.1.1 a wrong password or unknown user gets return code 4, no user name
        gets 5 (not authorized), and the connection is closed."""
        port = yield self.start_with_file()
        for username, password, code in (("alice", b"wrong", 4), ("mallory", b"x", 4),
                                         (None, None, 5), ("carol", b"c3", 0)):
            raw = yield connect_raw(self.reactor, port)
            self.addCleanup(raw.abort)
            raw.send(Connect("c311", 4, True, 0, None, username, password))
            connack = yield raw.expect(ConnAck)
            self.assertEqual(connack.reason_code, code, username)
            if code:
                yield raw.wait_closed()

    @inlineCallbacks
    def test_v5_no_user_name(self) -> Any:
        """An MQTT 5 CONNECT without a user name gets 0x87 (not authorized)."""
        port = yield self.start_with_file()
        raw = yield connect_raw(self.reactor, port, version=5)
        self.addCleanup(raw.abort)
        raw.send(Connect("c5", 5, True, 0, None, None, None))
        connack = yield raw.expect(ConnAck)
        self.assertEqual(connack.reason_code, ReasonCode.NOT_AUTHORIZED)


class TwistdTests(TwistdTestCase):
    """``twistd -n mqttbroker --auth passwd:...`` with a file that cannot be used."""

    @inlineCallbacks
    def test_one_line_errors(self) -> Any:
        """A missing file and a malformed line end twistd with one line and status 2."""
        bad = self.directory() / "passwd"
        bad.write_text(f"{ALICE}\nbob:$8$x$y\n")
        cases = [("passwd:/missing", "cannot read password file /missing"),
                 (f"passwd:{bad}", f"{bad}:2: unknown hash type $8$")]
        procs = [self.twistd("-n", "mqttbroker", "--listen", _listen(free_port()),
                             "--auth", arg) for arg, _ in cases]
        for (arg, message), proc in zip(cases, procs):
            code = yield self.ended(proc)
            self.assertEqual(code, 2, proc.text)
            line = self.assertOneLine(proc.text, "error", f"--auth '{arg}'", message)
            self.assertTrue(line.startswith("twistd mqttbroker: error: "), proc.text)
