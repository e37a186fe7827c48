"""``mqtt-twisted pub`` / ``sub`` against real brokers and beside the real Mosquitto tools:
our pub -> mosquitto_sub and mosquitto_pub -> our sub, every QoS, v5 user properties,
retained messages, ``-F`` formats (byte for byte as mosquitto_sub prints them), ``-C``/``-W``
exit codes, TLS with ``--cafile``, ``-L`` URLs.  The same tests run against our broker (a
real ``twistd``, ``OurBrokerCliTests``) and a real Mosquitto (``MosquittoCliTests``).
Usage errors and the console script need no broker (``CliUsageTests``)."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.certs import CA
from tests.clitools import (
    CLI,
    MOSQUITTO,
    MOSQUITTO_PUB,
    MOSQUITTO_SUB,
    TIMEOUT,
    Subscriber,
    cli,
    free_port,
    have,
    run,
    shared,
    start_mosquitto,
    start_ours,
)
from tests.test_twistd_run import _env


class CliTestsMixin:
    """What pub and sub must do against any broker; subclasses' setUp give one (shared by the run)."""

    port: int
    tls_port: int
    ca_path: str

    def sub(self, *args: str, tool: str = "ours") -> Subscriber:
        # stdbuf: mosquitto_sub's stdout is block-buffered on a pipe, its SUBACK line too.
        command = ["stdbuf", "-oL", MOSQUITTO_SUB] if tool == "mosquitto" else [sys.executable, "-m",
                                                               "mqtt_twisted.cli", "sub"]
        return Subscriber([*command, "-p", str(self.port), "-h", "127.0.0.1", "-d", *args])

    def our_pub(self, *args: str, stdin: bytes = b"") -> None:
        result = cli("pub", "-h", "127.0.0.1", "-p", str(self.port), *args, stdin=stdin)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, b"")  # no progress line when stderr is no terminal

    def mosquitto_pub(self, *args: str, stdin: bytes = b"") -> None:
        result = run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(self.port), *args],
                     stdin=stdin)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_our_pub_to_mosquitto_sub_every_qos(self) -> None:
        """Our pub at QoS 0, 1, 2 (v3.1.1 and v5) reaches mosquitto_sub at that QoS."""
        for version in ("mqttv311", "mqttv5"):
            for qos in "012":
                topic = f"cli/ours/{version}/{qos}"
                sub = self.sub("-t", topic, "-q", qos, "-C", "1", "-V", version,
                               "-F", "%t %q %p", tool="mosquitto")
                self.our_pub("-t", topic, "-m", f"hello {qos}", "-q", qos, "-V", version)
                code, lines, err = sub.finish()
                self.assertEqual((code, lines), (0, [f"{topic} {qos} hello {qos}".encode()]),
                                 err)

    def test_mosquitto_pub_to_our_sub_every_qos(self) -> None:
        """mosquitto_pub at QoS 0, 1, 2 (v3.1.1 and v5) reaches our sub at that QoS."""
        for version in ("mqttv311", "mqttv5"):
            for qos in "012":
                topic = f"cli/theirs/{version}/{qos}"
                sub = self.sub("-t", "cli/theirs/#", "-q", qos, "-C", "1", "-V", version,
                               "-F", "%t %q %p")
                self.mosquitto_pub("-t", topic, "-m", f"hi {qos}", "-q", qos, "-V", version)
                code, lines, err = sub.finish()
                self.assertEqual((code, lines), (0, [f"{topic} {qos} hi {qos}".encode()]), err)

    def test_user_properties_both_ways(self) -> None:
        """-D publish user-property travels from our pub to mosquitto_sub, and from
        mosquitto_pub to our sub (%P and %j show them)."""
        sub = self.sub("-t", "cli/props", "-C", "1", "-V", "mqttv5", "-F", "%P",
                       tool="mosquitto")
        self.our_pub("-t", "cli/props", "-m", "x", "-V", "5", "-D", "publish",
                     "user-property", "site", "north", "-D", "publish", "user-property",
                     "unit", "C", "-D", "publish", "content-type", "text/plain")
        self.assertEqual(sub.finish()[:2], (0, [b"site:north unit:C"]))
        sub = self.sub("-t", "cli/props2", "-C", "1", "-V", "5", "-F", "%P|%C|%j")
        self.mosquitto_pub("-t", "cli/props2", "-m", "y", "-V", "mqttv5", "-D", "publish",
                           "user-property", "k", "v", "-D", "publish", "content-type", "ct")
        code, lines, _ = sub.finish()
        self.assertEqual(code, 0)
        props, ctype, text = lines[0].split(b"|", 2)
        self.assertEqual((props, ctype), (b"k:v", b"ct"))
        self.assertEqual(json.loads(text)["properties"],
                         {"user-properties": {"k": "v"}, "content-type": "ct"})

    def test_retained_and_R(self) -> None:
        """A retained message from our pub is delivered with %r 1 to a later sub; -R hides
        it, so that sub times out (-W: exit 27, 'Timed out')."""
        self.our_pub("-t", "cli/retained", "-m", "kept", "-r", "-q", "1")
        result = cli("sub", "-p", str(self.port), "-h", "127.0.0.1", "-t", "cli/retained",
                     "-C", "1", "-F", "%r %p")
        self.assertEqual((result.returncode, result.stdout), (0, b"1 kept\n"), result.stderr)
        result = cli("sub", "-p", str(self.port), "-h", "127.0.0.1", "-t", "cli/retained",
                     "-R", "-W", "1")
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (27, b"", b"Timed out\n"))
        result = cli("sub", "-p", str(self.port), "-h", "127.0.0.1", "-t", "cli/#",
                     "-T", "cli/retained", "-W", "1")
        self.assertEqual((result.returncode, result.stdout), (27, b""))  # -T filtered it out
        result = cli("sub", "-p", str(self.port), "-h", "127.0.0.1", "-t", "cli/retained",
                     "--retained-only", "-C", "1", "-F", r"%I|%U|@Y@@\t%p")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout.decode(), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}"
                                                 r"\|\d{10}\.\d{9}\|\d{4}@\tkept\n$")
        self.our_pub("-t", "cli/retained", "-n", "-r")  # clear it

    def test_formats_as_mosquitto_sub(self) -> None:
        """For the same v5 message, our sub prints what mosquitto_sub prints: -v, -N, and
        -F with every field that does not depend on the time; %j equal but for "tst"."""
        self.mosquitto_pub("-t", "cli/fmt", "-m", '{"t": 21.5}', "-r", "-q", "1", "-V", "5",
                           "-D", "publish", "user-property", "a", "b", "-D", "publish",
                           "response-topic", "cli/reply", "-D", "publish",
                           "correlation-data", "c1", "-D", "publish",
                           "payload-format-indicator", "1")
        self.addCleanup(self.mosquitto_pub, "-t", "cli/fmt", "-n", "-r")
        formats = [["-v"], ["-v", "-N"], ["-F", r"%t|%p|%q|%r|%l|%x|%X|%P|%R|%D|%F|%%|\t@@"],
                   ["-F", "%J"], ["-F", "%j"]]
        for fmt in formats:
            args = ["-h", "127.0.0.1", "-p", str(self.port), "-t", "cli/fmt", "-C", "1",
                    "-V", "mqttv5", *fmt]
            theirs = run([MOSQUITTO_SUB, *args])
            ours = cli("sub", *args)
            self.assertEqual(ours.returncode, 0, ours.stderr)
            if fmt[-1].startswith("%j") or fmt[-1] == "%J":
                a, b = json.loads(ours.stdout), json.loads(theirs.stdout)
                self.assertRegex(a.pop("tst"), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\+0000$")
                b.pop("tst")
                self.assertEqual(a, b, fmt)
            else:
                self.assertEqual(ours.stdout, theirs.stdout, fmt)

    def test_count_and_timeout(self) -> None:
        """-C 2 exits 0 after the second message; -W exits 27 when nothing comes."""
        sub = self.sub("-t", "cli/count", "-C", "2", "-W", "15")
        self.our_pub("-t", "cli/count", "-l", stdin=b"one\n\nthree\nfour")
        code, lines, _ = sub.finish()
        self.assertEqual((code, lines), (0, [b"one", b""]))
        result = cli("sub", "-p", str(self.port), "-t", "cli/nothing", "-W", "0.5")
        self.assertEqual((result.returncode, result.stderr), (27, b"Timed out\n"))

    def test_pub_lines_and_stdin(self) -> None:
        """-l sends one message per line (an empty line too, the last one without its
        newline); -s sends all of stdin, bytes as they are; -f a file."""
        sub = self.sub("-t", "cli/lines", "-C", "6", "-F", "%x", "-q", "1")
        self.our_pub("-t", "cli/lines", "-q", "1", "-l", stdin=b"a\n\nb\r\nc")
        self.our_pub("-t", "cli/lines", "-s", stdin=b"\xff\x00\n")
        path = Path(self.directory) / "payload.bin"
        path.write_bytes(b"file\n")
        self.our_pub("-t", "cli/lines", "-f", str(path))
        code, lines, _ = sub.finish()
        self.assertEqual((code, lines), (0, [b"61", b"", b"620d", b"63", b"ff000a",
                                             b"66696c650a"]))

    def test_persistent_session(self) -> None:
        """sub -c -i ID -q 1 -E subscribes and leaves; a QoS 1 message published meanwhile
        is delivered when the same sub comes back (v3.1.1 -c, and v5 -c with -x)."""
        for version in ("mqttv311", "mqttv5"):
            topic = f"cli/persistent/{version}"
            args = ["-h", "127.0.0.1", "-p", str(self.port), "-t", topic, "-q", "1", "-c",
                    "-i", f"cli-persistent-{version}", "-V", version, "-x", "60"]
            result = cli("sub", *args, "-E")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.our_pub("-t", topic, "-m", "while away", "-q", "1")
            result = cli("sub", *args, "-C", "1", "-W", "10")
            self.assertEqual((result.returncode, result.stdout), (0, b"while away\n"),
                             (version, result.stderr))

    def test_tls_cafile(self) -> None:
        """--cafile turns TLS on: pub and sub reach the TLS listener and verify it; a
        CA that did not sign the server's certificate is an error line, exit 1."""
        port = str(self.tls_port)
        sub = Subscriber([sys.executable, "-m", "mqtt_twisted.cli", "sub", "-h", "127.0.0.1",
                          "-p", port, "--cafile", self.ca_path, "-t", "cli/tls", "-C", "1",
                          "-d"])
        result = cli("pub", "-h", "127.0.0.1", "-p", port, "--cafile", self.ca_path,
                     "-t", "cli/tls", "-m", "secret", "-q", "2")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sub.finish()[:2], (0, [b"secret"]))
        other = CA(self.directory, "Other CA")
        result = cli("pub", "-h", "127.0.0.1", "-p", port, "--cafile", other.cert_path,
                     "-t", "cli/tls", "-m", "x")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertNotIn(b"Traceback", result.stderr)

    def test_url(self) -> None:
        """-L mqtt://host:port/topic names host, port and topic for pub and sub."""
        url = f"mqtt://127.0.0.1:{self.port}/cli/url/t"
        sub = Subscriber([sys.executable, "-m", "mqtt_twisted.cli", "sub", "-L", url,
                          "-C", "1", "-v", "-d"])
        result = cli("pub", "-L", url, "-m", "via url")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sub.finish()[:2], (0, [b"cli/url/t via url"]))


class OurBrokerCliTests(CliTestsMixin, SynchronousTestCase):
    """Against our broker: a real ``twistd -n mqttbroker`` with a TLS listener."""

    def setUp(self) -> None:
        self.fixture = shared("ours", start_ours)
        self.__dict__.update(vars(self.fixture))

    def test_progress_line_on_a_terminal(self) -> None:
        """pub -l with stderr on a terminal rewrites a progress line (count, rate) every
        second of a long run, and ends it with a newline."""
        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        proc = subprocess.Popen([*CLI, "pub", "-h", "127.0.0.1", "-p", str(self.port), "-l",
                                 "-t", "cli/progress", "-q", "1"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=slave, env=_env())
        os.close(slave)
        seen = b""

        def read_for(seconds: float) -> bytes:
            # Read while the process runs: once it exits, Linux may drop what is unread.
            got = b""
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                if select.select([master], [], [], left)[0]:
                    try:
                        got += os.read(master, 65536)
                    except OSError:  # EIO: the other side is closed
                        break
            return got

        sent = 0
        deadline = time.monotonic() + TIMEOUT
        while b"msg/s" not in seen and time.monotonic() < deadline:  # a long run: > 1 s
            proc.stdin.write(b"line\n" * 100)
            proc.stdin.flush()
            sent += 100
            seen += read_for(0.5)
        proc.stdin.close()
        seen += read_for(1.5)
        self.assertEqual(proc.wait(TIMEOUT), 0)
        self.assertRegex(seen, rb"\r\d+ messages, [\d,]+ msg/s, \d+ in flight ")
        self.assertIn(b"\r%d messages, " % sent, seen)  # the last one counts them all
        self.assertTrue(seen.endswith(b"\r\n") or seen.endswith(b"\n"), seen)

    def test_interrupted(self) -> None:
        """Ctrl-C (SIGINT) ends a waiting sub and a pub -l still reading its stdin: exit 0,
        nothing on stderr (no 'connection closed', no interpreter abort)."""
        def start(*args: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [*CLI, *args, "-h", "127.0.0.1", "-p", str(self.port), "-d"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        sub = start("sub", "-t", "cli/interrupt")
        pub = start("pub", "-t", "cli/interrupt", "-l")
        pub.stdin.write(b"one\n")
        pub.stdin.flush()
        for proc, line in ((sub, b"received SUBACK"), (pub, b"sending PUBLISH")):
            out = b""
            while line not in out:  # running, and past its CONNECT
                ready = select.select([proc.stdout], [], [], TIMEOUT)[0]
                self.assertTrue(ready, out)
                out += os.read(proc.stdout.fileno(), 4096)
            proc.send_signal(signal.SIGINT)
        for proc in (sub, pub):
            self.assertEqual(proc.wait(TIMEOUT), 0)
            self.assertEqual(proc.stderr.read(), b"")
            proc.stdin.close()
            proc.stdout.close()
            proc.stderr.close()

    def test_no_unhandled_errors(self) -> None:
        """Nothing the tools sent made the broker log an unhandled error."""
        self.assertEqual(self.broker.unhandled(), [])


class MosquittoCliTests(CliTestsMixin, SynchronousTestCase):
    """The same against a real Mosquitto."""

    def setUp(self) -> None:
        if not (have(MOSQUITTO) and have(MOSQUITTO_SUB) and have(MOSQUITTO_PUB)):
            raise SkipTest("mosquitto and mosquitto-clients are not installed")
        self.fixture = shared("mosquitto", start_mosquitto)
        self.__dict__.update(vars(self.fixture))

    def test_client_certificate(self) -> None:
        """--cert/--key: a listener that requires a client certificate lets pub in with
        one; without one the handshake fails: exit 1, one error line."""
        args = ["pub", "-h", "127.0.0.1", "-p", str(self.cert_port), "--cafile", self.ca_path,
                "-t", "cli/cert", "-m", "x", "-q", "1"]
        result = cli(*args, "--cert", self.client_cert.cert_path,
                     "--key", self.client_cert.key_path)
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        result = cli(*args)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)


class CliUsageTests(SynchronousTestCase):
    """Bad command lines: one line on stderr, exit 1, no traceback; no broker needed."""

    BAD = [
        ["pub", "-t", "a"],                                  # no message
        ["pub", "-m", "x"],                                  # no topic
        ["pub", "-t", "a/#", "-m", "x"],                     # wildcard in a topic name
        ["pub", "-t", "a", "-m", "x", "-n"],                 # two message sources
        ["pub", "-t", "a", "-m", "x", "-q", "3"],
        ["pub", "-t", "a", "-m", "x", "-V", "6"],
        ["pub", "-t", "a", "-m", "x", "-p", "70000"],
        ["pub", "-t", "a", "-m", "x", "-D", "publish", "no-such-property", "1"],
        ["pub", "-t", "a", "-m", "x", "-D", "publish", "message-expiry-interval", "soon"],
        ["pub", "-t", "a", "-m", "x", "-D", "connect", "content-type", "x"],
        ["pub", "-t", "a", "-m", "x", "-D", "publish"],
        ["pub", "-t", "a", "-f", "/nonexistent/file"],
        ["pub", "-t", "a", "-m", "x", "--cafile", "/nonexistent/ca.pem"],
        ["pub", "-t", "a", "-m", "x", "--cert", "c.pem"],
        ["pub", "-L", "http://host/topic", "-m", "x"],
        ["pub", "-L", "mqtt://host:99999/t", "-m", "x"],
        ["pub", "-L", "mqtt://host", "-m", "x"],
        ["pub", "-t", "a", "-m", "x", "--no-such-option"],
        ["sub"],                                             # no topic
        ["sub", "-t", "a/#/b"],
        ["sub", "-t", "a", "-F", "%z"],
        ["sub", "-t", "a", "-F", "\\z"],
        ["sub", "-t", "a", "-C", "-1"],
        ["sub", "-t", "a", "-c"],                            # persistent without -i
        ["nosuchcommand"],
    ]

    def test_usage_errors(self) -> None:
        """Every bad command line is one line on stderr and exit code 1."""
        for argv in self.BAD:
            result = cli(*argv)
            self.assertEqual(result.returncode, 1, (argv, result.stderr))
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, (argv, result.stderr))
            self.assertTrue(result.stderr.startswith(b"Error: "), (argv, result.stderr))
            self.assertEqual(result.stdout, b"", argv)

    def test_connection_refused(self) -> None:
        """No broker listening: one error line, exit 1, as mosquitto_pub."""
        result = cli("pub", "-h", "127.0.0.1", "-p", str(free_port()), "-t", "a", "-m", "x")
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"refused", result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        result = cli("sub", "-h", "127.0.0.1", "-p", str(free_port()), "-t", "a", "--quiet")
        self.assertEqual((result.returncode, result.stderr), (1, b""))

    def test_help(self) -> None:
        """--help prints the options with mosquitto's letters; -h is the host, not help."""
        result = cli("sub", "--help")
        self.assertEqual(result.returncode, 0)
        for option in (b"-h HOST", b"-F FMT", b"-W SECONDS", b"--cafile"):
            self.assertIn(option, result.stdout)

    def test_console_script_installed(self) -> None:
        """`pip install -e .` installed the `mqtt-twisted` console script beside this
        Python, and it runs."""
        script = shutil.which("mqtt-twisted", path=os.path.dirname(sys.executable))
        if script is None:
            self.fail(f"no mqtt-twisted console script beside {sys.executable}: "
                      "pip install -e . (pyproject [project.scripts])")
        result = run([script, "--help"])
        self.assertEqual(result.returncode, 0)
        self.assertIn(b"pub", result.stdout)
