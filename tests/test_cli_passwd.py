"""``mqtt-twisted passwd`` as ``mosquitto_passwd``: the file it writes is accepted by our
broker (a real ``twistd --auth passwd:FILE``) and by a real Mosquitto, and refused
passwords end ``pub``/``sub`` with mosquitto's exit codes (the CONNACK's code)."""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mqtt_twisted.auth.passwd import read_passwd
from tests.clitools import (
    MOSQUITTO,
    MOSQUITTO_PUB,
    Fixture,
    Mosquitto,
    cli,
    have,
    run,
    shared,
)
from tests.livebroker import LiveBroker

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


class PasswdFileTests(SynchronousTestCase):
    """The file operations, checked with the broker's own parser."""

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="cli-passwd-"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = str(self.directory / "passwd")

    def passwd(self, *args: str, stdin: bytes = b"", code: int = 0) -> bytes:
        result = cli("passwd", *args, stdin=stdin)
        self.assertEqual(result.returncode, code, result.stderr)
        self.assertNotIn(b"Traceback", result.stderr)
        return result.stderr

    def test_create_batch_and_stdin(self) -> None:
        """-c -b creates a 0600 file of $7$101 hashes; without -b the password comes
        from stdin (twice, as a terminal would ask); both verify."""
        self.passwd("-c", "-b", self.path, "alice", "pw-a")
        self.passwd(self.path, "bob", stdin=b"pw-b\npw-b\n")
        users = read_passwd(self.path)
        self.assertEqual(sorted(users), ["alice", "bob"])
        self.assertTrue(users["alice"].verify(b"pw-a"))
        self.assertTrue(users["bob"].verify(b"pw-b"))
        self.assertFalse(users["bob"].verify(b"pw-a"))
        self.assertEqual((users["alice"].kind, users["alice"].iterations), ("7", 101))
        self.assertEqual(stat.S_IMODE(Path(self.path).stat().st_mode), 0o600)

    def test_update_keeps_the_rest(self) -> None:
        """-b on an existing user replaces their line in place; comments and the other
        users (a file from the real mosquitto_passwd) stay."""
        if not have(MOSQUITTO_PASSWD):
            raise SkipTest("mosquitto_passwd is not installed")
        run([MOSQUITTO_PASSWD, "-c", "-b", self.path, "alice", "old"])
        run([MOSQUITTO_PASSWD, "-b", self.path, "carol", "pw-c"])
        with open(self.path, "a") as f:
            f.write("# a comment\n")
        before = Path(self.path).read_text().splitlines()
        self.passwd("-b", self.path, "alice", "new")
        after = Path(self.path).read_text().splitlines()
        self.assertEqual((after[1:], after[0][:6]), (before[1:], "alice:"))
        users = read_passwd(self.path)
        self.assertTrue(users["alice"].verify(b"new"))
        self.assertTrue(users["carol"].verify(b"pw-c"))

    def test_delete(self) -> None:
        """-D removes the user; an unknown user is a warning and exit 1."""
        self.passwd("-c", "-b", self.path, "alice", "a")
        self.passwd("-b", self.path, "bob", "b")
        self.passwd("-D", self.path, "alice")
        self.assertEqual(list(read_passwd(self.path)), ["bob"])
        err = self.passwd("-D", self.path, "alice", code=1)
        self.assertIn(b"not found", err)

    def test_update_plain_text(self) -> None:
        """-U hashes plain-text passwords in place; hashed lines and comments are kept."""
        self.passwd("-c", "-b", self.path, "alice", "a")
        hashed = Path(self.path).read_text()
        with open(self.path, "a") as f:
            f.write("# plain ones\nbob:b-plain\n")
        self.passwd("-U", self.path)
        text = Path(self.path).read_text()
        self.assertTrue(text.startswith(hashed + "# plain ones\nbob:$7$101$"), text)
        self.assertTrue(read_passwd(self.path)["bob"].verify(b"b-plain"))

    def test_sha512(self) -> None:
        """-H sha512 writes Mosquitto 1.6's $6$ hashes; -I sets PBKDF2's iterations."""
        self.passwd("-c", "-H", "sha512", "-b", self.path, "old", "o")
        self.passwd("-I", "1000", "-b", self.path, "new", "n")
        users = read_passwd(self.path)
        self.assertEqual((users["old"].kind, users["new"].iterations), ("6", 1000))
        self.assertTrue(users["old"].verify(b"o"))
        self.assertTrue(users["new"].verify(b"n"))

    def test_errors(self) -> None:
        """Mismatched passwords exit 2; an empty one, a ':' in the name, a missing file,
        bad arguments exit 1: one line each, the file untouched."""
        self.passwd("-c", "-b", self.path, "alice", "a")
        before = Path(self.path).read_bytes()
        self.assertIn(b"do not match", self.passwd(self.path, "bob", stdin=b"x\ny\n", code=2))
        self.assertIn(b"Empty password", self.passwd(self.path, "bob", stdin=b"", code=1))
        self.assertIn(b"':'", self.passwd("-b", self.path, "a:b", "x", code=1))
        self.assertIn(b"No such file", self.passwd("-b", self.path + "x", "a", "b", code=1))
        for argv in (["-b", self.path, "u"], ["-c", "-D", self.path, "u"], ["-U"],
                     ["-H", "md5", "-b", self.path, "u", "p"], [self.path]):
            err = self.passwd(*argv, code=1)
            self.assertEqual(len(err.splitlines()), 1, (argv, err))
        self.assertEqual(Path(self.path).read_bytes(), before)


def start_passwd_broker() -> Fixture:
    """A real twistd --auth passwd:FILE, the file written by mqtt-twisted passwd."""
    directory = tempfile.mkdtemp(prefix="cli-passwd-broker-")
    path = str(Path(directory) / "passwd")
    result = cli("passwd", "-c", "-b", path, "alice", "s3cret")
    assert result.returncode == 0, result.stderr
    return Fixture(directory, LiveBroker(Path(directory), "--auth", f"passwd:{path}"),
                   path=path)


class PasswdBrokerTests(SynchronousTestCase):
    """The file in real brokers: accepted users, refused passwords and their exit codes."""

    def setUp(self) -> None:
        fixture = shared("passwd", start_passwd_broker)
        self.broker, self.path = fixture.broker, fixture.path
        self.directory = Path(fixture.directory)

    def pub(self, port: int, *args: str) -> tuple[int, bytes]:
        result = cli("pub", "-h", "127.0.0.1", "-p", str(port), "-t", "t", "-m", "x",
                     "-q", "1", *args)
        return result.returncode, result.stderr

    def test_our_broker(self) -> None:
        """Our broker lets alice in with her password; a wrong one is CONNACK 4 (v3.1.1)
        / 0x86 = 134 (v5), and that is the exit code, as mosquitto_pub's."""
        port = self.broker.port
        self.assertEqual(self.pub(port, "-u", "alice", "-P", "s3cret"), (0, b""))
        code, err = self.pub(port, "-u", "alice", "-P", "wrong")
        self.assertEqual((code, err), (4, b"Connection error: Connection Refused: "
                                          b"bad user name or password\n"))
        code, err = self.pub(port, "-u", "alice", "-P", "wrong", "-V", "mqttv5")
        self.assertEqual((code, err), (0x86, b"Connection error: Bad User Name or Password\n"))
        result = cli("sub", "-h", "127.0.0.1", "-p", str(port), "-t", "t", "-u", "alice",
                     "-P", "wrong", "-V", "5")
        self.assertEqual(result.returncode, 0x86)

    def test_mosquitto(self) -> None:
        """A real Mosquitto reads the same file: alice in, a wrong password refused with
        its own codes (5 / 135), which our pub exits with too."""
        if not (have(MOSQUITTO) and have(MOSQUITTO_PUB)):
            raise SkipTest("mosquitto is not installed")
        directory = tempfile.mkdtemp(prefix="cli-mosquitto-")
        self.addCleanup(shutil.rmtree, directory, True)
        broker = Mosquitto(Path(directory), password_file=self.path)
        self.addCleanup(broker.stop)
        ok = run([MOSQUITTO_PUB, "-p", str(broker.port), "-u", "alice", "-P", "s3cret",
                  "-t", "t", "-m", "x"])
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertEqual(self.pub(broker.port, "-u", "alice", "-P", "s3cret"), (0, b""))
        self.assertEqual(self.pub(broker.port, "-u", "alice", "-P", "no")[0], 5)
        self.assertEqual(self.pub(broker.port, "-u", "alice", "-P", "no", "-V", "5")[0], 135)
