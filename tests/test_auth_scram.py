"""The SCRAM user file (``--auth scram:FILE``): StoredKey/ServerKey lines in PostgreSQL's
format checked against RFC 7677's test vector, plain-text lines refused with the line
named, ``python -m mqtt_twisted.auth.scram`` (one line from a password on stdin, and
``--convert``), plain logins in the reactor's thread pool, twistd's one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from scramp import ScramClient, ScramMechanism
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.auth.scram import (
    METHOD,
    ScramAuthenticator,
    convert,
    make_secret,
    parse_secret,
    parse_users,
)
from mqtt_twisted.errors import AuthenticationError, ValidationError
from mqtt_twisted.plugins.builtin import ScramAuthPlugin
from mqtt_twisted.records import Credentials
from tests.certs import temp_dir
from tests.redisserver import free_port
from tests.securebroker import SecureBrokerTestCase
from tests.test_twistd_run import TwistdTestCase, _listen

#: RFC 7677 §3's user "user", password "pencil", salt and iterations, as a file line.
RFC_LINE = ("user:SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcX"
            "kuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")


def creds(username: str | None, password: bytes | None) -> Credentials:
    return Credentials("c1", username, password, None, "127.0.0.1:5", "mqtt")


def run_module(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mqtt_twisted.auth.scram", *args],
                          input=stdin, capture_output=True, text=True, timeout=60)


class FileTests(SynchronousTestCase):
    """What the file holds, and what is refused."""

    def test_rfc7677_vector(self) -> None:
        """The RFC's exchange against the keys of the file line gives the RFC's server
        signature: the line holds the right StoredKey and ServerKey."""
        secret = parse_users(RFC_LINE, "f")["user"]
        server = ScramMechanism(METHOD).make_server(
            lambda user: secret.auth_info(), s_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
        server.set_client_first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        self.assertEqual(server.get_server_first(), "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfux"
                                                    "FIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
        server.set_client_final("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                                "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
        self.assertEqual(server.get_server_final(),
                         "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        self.assertTrue(secret.verify(b"pencil"))
        self.assertFalse(secret.verify(b"pencil!"))
        self.assertEqual(secret.line("user"), RFC_LINE)
        self.assertNotIn("pencil", RFC_LINE)

    def test_exchange_and_plain_login(self) -> None:
        """A ScramClient logs in through the authenticator built from the file; plain
        CONNECT passwords are checked against StoredKey; unknown users are refused."""
        auth = ScramAuthenticator(parse_users(f"# users\n\n{RFC_LINE}\n", "f"))
        client = ScramClient([METHOD], "user", "pencil")
        exchange = auth.startExchange(METHOD, creds(None, None))
        first = self.successResultOf(exchange.step(client.get_client_first().encode()))
        client.set_server_first(first.data.decode())
        final = self.successResultOf(exchange.step(client.get_client_final().encode()))
        client.set_server_final(final.data.decode())
        self.assertEqual(final.identity, "user")
        self.assertEqual(self.successResultOf(auth.authenticate(creds("user", b"pencil"))),
                         "user")
        for name, password in (("user", b"wrong"), ("nobody", b"pencil"), (None, b"x"),
                               ("user", b"\xff")):
            self.failureResultOf(auth.authenticate(creds(name, password)), AuthenticationError)

    def test_refused_lines(self) -> None:
        """A plain-text password line is refused, naming the line and the way to convert;
        so are malformed secrets."""
        cases = [
            ("alice:secret", "f:1: expected user:SCRAM-SHA-256$", "--convert FILE"),
            ("a:SCRAM-SHA-256$4096:c2FsdA==", "f:1: a SCRAM secret is", ""),
            ("a:SCRAM-SHA-256$100:c2FsdA==$AA==:AA==", "iterations '100': at least 4096", ""),
            ("a:SCRAM-SHA-256$4096:!!$AA==:AA==", "the salt is not valid base64", ""),
            ("a:SCRAM-SHA-256$4096:c2FsdA==$AA==:AA==", "the StoredKey is 1 bytes", ""),
            (f"{RFC_LINE}\n{RFC_LINE}", "f:2: user 'user' is listed twice", ""),
            (":SCRAM-SHA-256$", "f:1: expected user:", ""),
        ]
        for text, message, hint in cases:
            e = self.assertRaises(ValidationError, parse_users, text, "f")
            self.assertIn(message, str(e), text)
            self.assertIn(hint, str(e))

    def test_plugin(self) -> None:
        """scram:FILE reads the file; a missing or plain-text file is a ValueError naming it."""
        directory = temp_dir(self)
        good, plain = os.path.join(directory, "good"), os.path.join(directory, "plain")
        with open(good, "w") as f:
            f.write(RFC_LINE + "\n")
        with open(plain, "w") as f:
            f.write("alice:secret\n")
        plugin = ScramAuthPlugin()
        self.assertIsInstance(plugin.makeAuthenticator(Clock(), good), ScramAuthenticator)
        e = self.assertRaises(ValueError, plugin.makeAuthenticator, Clock(), plain)
        self.assertIn(f"{plain}:1:", str(e))
        e = self.assertRaises(ValueError, plugin.makeAuthenticator, Clock(), "/missing")
        self.assertIn("cannot read SCRAM file /missing", str(e))
        self.assertRaises(ValueError, plugin.makeAuthenticator, Clock(), "")


class ReloadTests(SynchronousTestCase):
    """SIGHUP re-reads the file; a broken one leaves the old users in force."""

    def test_reload(self) -> None:
        path = os.path.join(temp_dir(self), "users")
        with open(path, "w") as f:
            f.write(RFC_LINE + "\n")
        auth = ScramAuthenticator.from_file(path)
        self.successResultOf(auth.authenticate(creds("user", b"pencil")))
        with open(path, "w") as f:
            f.write(make_secret("pw").line("sam") + "\n")
        self.assertTrue(auth.reload())
        self.failureResultOf(auth.authenticate(creds("user", b"pencil")), AuthenticationError)
        self.assertEqual(self.successResultOf(auth.authenticate(creds("sam", b"pw"))), "sam")
        with open(path, "w") as f:
            f.write("sam:plain\n")
        self.assertFalse(auth.reload())
        self.assertEqual(self.successResultOf(auth.authenticate(creds("sam", b"pw"))), "sam")
        self.assertIsNone(ScramAuthenticator({"a": "b"}).reload())


class CommandTests(SynchronousTestCase):
    """``python -m mqtt_twisted.auth.scram``."""

    def test_line_for_a_user(self) -> None:
        """USER with the password on stdin prints one line that logs that user in, and
        that holds no password; two runs salt differently."""
        out = run_module("alice", stdin="s3cret wörd\n")
        self.assertEqual(out.returncode, 0, out.stderr)
        (line,) = out.stdout.splitlines()
        self.assertTrue(line.startswith("alice:SCRAM-SHA-256$4096:"), line)
        self.assertNotIn("s3cret", line)
        secret = parse_users(line, "stdout")["alice"]
        self.assertTrue(secret.verify("s3cret wörd".encode()))
        again = run_module("alice", "--iterations", "5000", stdin="s3cret wörd\n").stdout
        self.assertIn("$5000:", again)
        self.assertNotEqual(parse_secret(again.split(":", 1)[1].strip()).salt, secret.salt)

    def test_convert(self) -> None:
        """--convert turns user:password lines into SCRAM lines, keeping comments, blank
        lines and lines already converted; the result parses and logs the users in."""
        path = os.path.join(temp_dir(self), "users")
        with open(path, "w") as f:
            f.write(f"# old file\n\nbob:hunter2\ncolon:a:b\n{RFC_LINE}\n")
        out = run_module("--convert", path)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertEqual(lines[:2], ["# old file", ""])
        self.assertEqual(lines[4], RFC_LINE)
        users = parse_users(out.stdout, "converted")
        self.assertTrue(users["bob"].verify(b"hunter2"))
        self.assertTrue(users["colon"].verify(b"a:b"))
        self.assertNotIn("hunter2", out.stdout)
        self.assertEqual(convert("# c\n"), "# c\n")

    def test_usage_errors(self) -> None:
        """No user, no password, both USER and --convert, too few iterations, an unreadable
        file: one error line and exit status 2."""
        cases: list[tuple[tuple[str, ...], str, str]] = [
            ((), "", "give either USER or --convert"),
            (("alice",), "", "no password"),
            (("alice", "--convert", "x"), "", "either"),
            (("alice", "--iterations", "10"), "pw\n", "at least 4096"),
            (("--convert", "/missing"), "", "/missing"),
            (("a:b",), "pw\n", "cannot be empty or hold ':'"),
        ]
        for args, stdin, needle in cases:
            out = run_module(*args, stdin=stdin)
            self.assertEqual(out.returncode, 2, args)
            self.assertIn(needle, out.stderr.splitlines()[-1], args)
            self.assertNotIn("Traceback", out.stderr)
            self.assertEqual(out.stdout, "")


class ThreadTests(SecureBrokerTestCase):
    """The plugin's authenticator checks plain passwords in the reactor's thread pool."""

    @inlineCallbacks
    def test_plain_login_off_the_reactor_thread(self) -> Any:
        path = os.path.join(temp_dir(self), "users")
        with open(path, "w") as f:
            f.write(make_secret("pw").line("sam") + "\n")
        auth = ScramAuthPlugin().makeAuthenticator(self.reactor, path)
        d = auth.authenticate(creds("sam", b"pw"))
        self.assertFalse(d.called)
        self.assertEqual((yield d), "sam")
        (port,) = yield self.start("tcp:0:interface=127.0.0.1", authenticator=auth,
                                   authorizer=auth)
        yield self.paho(port, "sam", username="sam", password="pw")


class TwistdTests(TwistdTestCase):
    """``--auth scram:FILE`` with a plain-text file stops twistd with one line."""

    @inlineCallbacks
    def test_plain_text_file(self) -> Any:
        plain = self.directory() / "users"
        plain.write_text("alice:secret\n")
        proc = self.twistd("-n", "mqttbroker", "--listen", _listen(free_port()),
                           "--auth", f"scram:{plain}")
        code = yield self.ended(proc)
        self.assertEqual(code, 2, proc.text)
        self.assertOneLine(proc.text, "error", f"--auth 'scram:{plain}'", f"{plain}:1:",
                           "plain-text passwords are not accepted")
