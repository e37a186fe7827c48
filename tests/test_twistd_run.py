"""``twistd mqttbroker`` run as an operator runs it, in a real child process.

Shutdown on SIGTERM/SIGINT (what clients see), start-ups that fail (one line and a
non-zero exit status, in the foreground and daemonized), twistd's traps (pidfile,
``-l`` before ``mqttbroker``, an empty ``--listen``) and usage errors (one line, no
help text).  Every broker listens on 127.0.0.1 on an ephemeral port and runs in a
directory of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.python.usage import UsageError
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mqtt_twisted._twistd import check_twistd_options
from mqtt_twisted.codec import Disconnect, Publish, SubAck, Subscribe, Subscription, Will
from mqtt_twisted.constants import ReasonCode
from tests.pahoclient import RawClient
from tests.pahov5 import PahoV5Client
from tests.redisserver import free_port
from tests.securebroker import ChildProcess, spawn, within
from tests.test_plugins import twistd_command

ROOT = Path(__file__).resolve().parent.parent

#: Seconds a twistd that should end by itself may take (start-up included).
ENDS_WITHIN = 15.0


class _Raw(RawClient):
    """A RawClient that keeps the reason its connection ended with."""

    reason: Any = None

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        super().connectionLost(reason)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def _listen(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


def _kill_daemon(pidfile: Path) -> None:
    """A daemonized twistd is not our child: end it through its pidfile, if still there."""
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


class TwistdTestCase(TestCase):
    """Starts ``twistd`` processes, each in a fresh directory, killed after the test."""

    timeout = 45

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor

    def directory(self) -> Path:
        path = tempfile.mkdtemp(prefix="mqtt-twisted-twistd-")
        self.addCleanup(shutil.rmtree, path, True)
        return Path(path)

    def twistd(self, *args: str, cwd: Path | None = None) -> ChildProcess:
        """``twistd ARGS`` in ``cwd`` (a new directory when not given)."""
        cwd = cwd or self.directory()
        proc = spawn(self, self.reactor, [*twistd_command(), *args], env=_env(), path=str(cwd))
        proc.cwd = cwd  # type: ignore[attr-defined]
        return proc

    @defer.inlineCallbacks
    def ended(self, proc: ChildProcess, seconds: float = ENDS_WITHIN) -> Any:
        """The exit code of ``proc``, which must end by itself within ``seconds``."""
        code = yield within(proc.ended, self.reactor, seconds,
                            f"twistd to exit by itself; it said:\n{proc.text}")
        return code

    def exits(self, argvs: list[list[str]], at_once: int = 4) -> Any:
        """``twistd ARGV`` for each of ``argvs``, at most ``at_once`` running at a time,
        each to its end: fires with a list of (process, exit code or the Failure).  Not all
        at once: sixteen twistd starting together took over ENDS_WITHIN on two busy cores
        (CI runs the suite on several workers), so the hang check fired on slow starts.
        Each still gets 60 s rather than ENDS_WITHIN: at a load average of 13, twistd
        printed its usage error and took over 15 s to exit (its imports, four at once)."""
        semaphore = defer.DeferredSemaphore(at_once)

        def one(argv: list[str]) -> Any:
            proc = self.twistd(*argv)
            return self.ended(proc, max(ENDS_WITHIN, 60.0)).addBoth(lambda code: (proc, code))

        return defer.gatherResults([semaphore.run(one, argv) for argv in argvs])

    @defer.inlineCallbacks
    def wait_for_port(self, port: int, proc: ChildProcess) -> Any:
        """Poll until something accepts TCP connections on ``port``."""
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port, timeout=2)
        deadline = time.monotonic() + ENDS_WITHIN
        while time.monotonic() < deadline:
            if proc.finished:
                raise AssertionError(f"twistd exited early:\n{proc.text}")
            try:
                client = yield endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
            except error.ConnectError:
                yield task.deferLater(self.reactor, 0.05, lambda: None)
                continue
            client.transport.loseConnection()
            return
        raise AssertionError(f"twistd did not listen on {port}:\n{proc.text}")

    @defer.inlineCallbacks
    def wait_serving(self, port: int, proc: ChildProcess) -> Any:
        """Until the broker answers a CONNECT: its reactor runs, its SIGTERM handler is
        in place.  A port that merely accepts is not enough: the listeners listen before
        ``reactor.run()``, and a SIGTERM then has its default action (no shutdown, the
        pidfile left: the flaky CI failure of test_explicit_pidfile_in_foreground)."""
        yield self.wait_for_port(port, proc)
        client = yield self.raw(port, 4)
        self.assertEqual((yield client.connect("serving")).reason_code, 0)
        client.transport.loseConnection()
        yield client.wait_closed()

    @defer.inlineCallbacks
    def raw(self, port: int, version: int) -> Any:
        client = yield TCP4ClientEndpoint(self.reactor, "127.0.0.1", port).connect(
            protocol.Factory.forProtocol(lambda: _Raw(version)))
        self.addCleanup(client.abort)
        return client

    def assertOneLine(self, text: str, needle: str, *parts: str) -> str:
        """Exactly one line of ``text`` holds ``needle``; it holds every one of ``parts``."""
        lines = [line for line in text.splitlines() if needle in line]
        self.assertEqual(len(lines), 1, text)
        for part in parts:
            self.assertIn(part, lines[0], text)
        self.assertNotIn("Traceback", text)
        return lines[0]


class ShutdownTests(TwistdTestCase):
    """Issue 11, item 10: what connected clients see when twistd is told to stop."""

    @defer.inlineCallbacks
    def stop_with(self, signum: int) -> Any:
        port = free_port()
        broker = self.twistd("-n", "mqttbroker", "--listen", _listen(port))
        yield self.wait_for_port(port, broker)

        paho = PahoV5Client(self.reactor, port, "paho-v5")
        self.addCleanup(paho.stop)
        connected = yield paho.connect()
        self.assertEqual(connected.rc, 0)
        raw5 = yield self.raw(port, 5)
        self.assertEqual((yield raw5.connect("raw-v5")).reason_code, 0)
        raw4 = yield self.raw(port, 4)
        will = Will("wills/raw-v4", b"gone", 1)
        self.assertEqual((yield raw4.connect("raw-v4", will=will)).reason_code, 0)
        watcher = yield self.raw(port, 4)
        yield watcher.connect("watcher")
        watcher.send(Subscribe(1, [Subscription("wills/#", 1)]))
        yield watcher.expect(SubAck)

        broker.transport.signalProcess(signum)  # type: ignore[attr-defined]

        gone = yield paho.disconnected
        self.assertTrue(gone.from_server, f"paho got no DISCONNECT: {gone!r}\n{broker.text}")
        self.assertEqual(gone.rc, ReasonCode.SERVER_SHUTTING_DOWN)
        packet = yield raw5.expect(Disconnect)
        self.assertEqual(packet.reason_code, ReasonCode.SERVER_SHUTTING_DOWN)
        for client in (raw5, raw4, watcher):
            yield client.wait_closed()
            # A FIN after what was written, not a reset that may discard it.
            self.assertTrue(client.reason.check(error.ConnectionDone), client.reason)
        # Shutdown is the server's doing: no will (docs/user-guide.md, "told to stop").
        self.assertEqual([p for p in watcher.packets.pending if isinstance(p, Publish)], [])
        yield self.ended(broker)
        self.assertEqual(broker.signal, signum, broker.text)
        self.assertIn("Server Shut Down.", broker.text)
        self.assertNotIn("Traceback", broker.text)

    def test_sigterm(self) -> Any:
        """On SIGTERM MQTT 5 clients (paho, raw) get DISCONNECT 0x8B, v3.1.1 a clean close, no will."""
        return self.stop_with(signal.SIGTERM)

    def test_sigint(self) -> Any:
        """SIGINT (Ctrl-C) stops the broker the same way as SIGTERM."""
        return self.stop_with(signal.SIGINT)

    @defer.inlineCallbacks
    def test_no_will_at_shutdown(self) -> Any:
        """At shutdown no will goes out: not to a connected subscriber, nor into its stored
        persistent session (checked after a restart on the same Redis)."""
        from tests.redisserver import RedisServer

        redis = RedisServer(self.reactor, str(self.directory()))
        yield redis.start()
        self.addCleanup(redis.stop)
        store = redis.url(prefix="will-test")
        port = free_port()
        broker = self.twistd("-n", "mqttbroker", "--listen", _listen(port), "--store", store)
        yield self.wait_for_port(port, broker)
        watcher = yield self.raw(port, 4)
        yield watcher.connect("watcher", clean=False)
        watcher.send(Subscribe(1, [Subscription("wills/#", 1)]))
        yield watcher.expect(SubAck)
        mortal = yield self.raw(port, 4)
        yield mortal.connect("mortal", will=Will("wills/mortal", b"gone", 1))

        broker.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        yield watcher.wait_closed()
        self.assertEqual([p for p in watcher.packets.pending if isinstance(p, Publish)], [])
        yield self.ended(broker)

        port = free_port()
        broker = self.twistd("-n", "mqttbroker", "--listen", _listen(port), "--store", store)
        yield self.wait_for_port(port, broker)
        watcher = yield self.raw(port, 4)
        self.assertTrue((yield watcher.connect("watcher", clean=False)).session_present)
        sender = yield self.raw(port, 4)
        yield sender.connect("sender")
        sender.send(Publish("wills/sentinel", b"last", 1, packet_id=1))
        # Anything queued for the session while the broker stopped comes before this.
        first = yield watcher.expect(Publish)
        self.assertEqual(first.topic, "wills/sentinel")
        broker.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        yield self.ended(broker)


class FailedStartTests(TwistdTestCase):
    """Issue 11, item 11: a broker that cannot start says why in one line and exits non-zero,
    so that a supervisor sees the failure (and restarts it)."""

    def port_in_use(self) -> int:
        port = self.reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def fails(self, *args: str) -> Any:
        """``twistd -n mqttbroker ARGS`` ends non-zero; fires with its output."""
        proc = self.twistd("-n", "mqttbroker", *args)
        code = yield self.ended(proc)
        self.assertIsNone(proc.signal, proc.text)
        self.assertNotEqual(code, 0, proc.text)
        return proc.text

    @defer.inlineCallbacks
    def test_port_in_use(self) -> Any:
        """A port in use: one line naming the listener and the reason, exit status 1."""
        port = self.port_in_use()
        text = yield self.fails("--listen", _listen(port))
        self.assertOneLine(text, "could not start", f"mqtt=tcp:{port}", "Address already in use")

    @defer.inlineCallbacks
    def test_address_not_on_this_machine(self) -> Any:
        """An interface address this machine does not have: one line, non-zero exit."""
        text = yield self.fails("--listen", f"tcp:{free_port()}:interface=10.255.255.1")
        self.assertOneLine(text, "could not start", "10.255.255.1", "Cannot assign")

    @defer.inlineCallbacks
    def test_unix_socket_in_missing_directory(self) -> Any:
        """A UNIX socket in a directory that does not exist: one line, no traceback."""
        path = self.directory() / "missing" / "mqtt.sock"
        text = yield self.fails("--listen", f"unix:{path}")
        self.assertOneLine(text, "could not start", f"unix:{path}", "No such file or directory")

    @defer.inlineCallbacks
    def test_redis_down(self) -> Any:
        """Redis unreachable at start: the documented wait (5 s), then one line and exit 1."""
        started = time.monotonic()
        text = yield self.fails("--listen", _listen(free_port()),
                                "--store", f"redis://127.0.0.1:{free_port()}/0")
        self.assertLess(time.monotonic() - started, 5 + ENDS_WITHIN / 2)
        self.assertOneLine(text, "could not start", "store", "did not answer in 5")

    @defer.inlineCallbacks
    def daemon(self, *args: str) -> Any:
        """Daemonized ``twistd`` (pidfile and log in a temporary directory): fires with
        (the parent's exit code, what the parent printed, the log file)."""
        cwd = self.directory()
        pidfile, logfile = cwd / "mqtt.pid", cwd / "mqtt.log"
        self.addCleanup(_kill_daemon, pidfile)
        proc = self.twistd(f"--pidfile={pidfile}", f"--logfile={logfile}", "mqttbroker", *args,
                           cwd=cwd)
        code = yield self.ended(proc)
        return code, proc.text, logfile

    @defer.inlineCallbacks
    def test_daemon_port_in_use(self) -> Any:
        """Daemonized, the parent exits non-zero with the reason; the log has the one line."""
        port = self.port_in_use()
        code, said, logfile = yield self.daemon("--listen", _listen(port))
        self.assertNotEqual(code, 0, said)
        self.assertIn("Address already in use", said)
        yield self.daemon_gone(logfile)
        self.assertOneLine(logfile.read_text(), "could not start", f"mqtt=tcp:{port}",
                           "Address already in use")

    @defer.inlineCallbacks
    def test_daemon_redis_down(self) -> Any:
        """Daemonized, the parent waits for the store and exits non-zero when it is down."""
        code, said, logfile = yield self.daemon(
            "--listen", _listen(free_port()),
            "--store", f"redis://127.0.0.1:{free_port()}/0?connect_timeout=1")
        self.assertNotEqual(code, 0, said)
        self.assertIn("did not answer", said)
        yield self.daemon_gone(logfile)
        self.assertOneLine(logfile.read_text(), "could not start", "store", "did not answer in 1")

    @defer.inlineCallbacks
    def test_daemon_started(self) -> Any:
        """Daemonized, the parent exits 0 once the broker listens; SIGTERM stops it."""
        port = free_port()
        code, said, logfile = yield self.daemon("--listen", _listen(port))
        self.assertEqual(code, 0, said)
        # Listening before the parent exited: one attempt, no retries.
        client = yield TCP4ClientEndpoint(self.reactor, "127.0.0.1", port).connect(
            protocol.Factory.forProtocol(protocol.Protocol))
        client.transport.loseConnection()
        os.kill(int((logfile.parent / "mqtt.pid").read_text()), signal.SIGTERM)
        yield self.daemon_gone(logfile)
        self.assertIn("Server Shut Down.", logfile.read_text())

    @defer.inlineCallbacks
    def daemon_gone(self, logfile: Path) -> Any:
        """Wait until the daemon has logged its last line and removed its pidfile."""
        pidfile = logfile.parent / "mqtt.pid"
        deadline = time.monotonic() + ENDS_WITHIN
        while time.monotonic() < deadline:
            if not pidfile.exists() and "Server Shut Down." in logfile.read_text():
                return
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        raise AssertionError(f"the daemon did not stop:\n{logfile.read_text()}")


class TrapTests(TwistdTestCase):
    """Issue 11, item 12: twistd's options that trap a broker operator fail loudly or work."""

    @defer.inlineCallbacks
    def stop(self, proc: ChildProcess) -> Any:
        proc.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        yield self.ended(proc)
        self.assertEqual(proc.signal, signal.SIGTERM, proc.text)

    @defer.inlineCallbacks
    def test_foreground_writes_no_pidfile(self) -> Any:
        """Two ``twistd -n`` brokers start from one directory: no twistd.pid stops the second."""
        cwd = self.directory()
        ports = [free_port(), free_port()]
        brokers = [self.twistd("-n", "mqttbroker", "--listen", _listen(port), cwd=cwd)
                   for port in ports]
        for port, broker in zip(ports, brokers):
            yield self.wait_serving(port, broker)
        self.assertEqual(sorted(os.listdir(cwd)), [])
        for broker in brokers:
            yield self.stop(broker)

    @defer.inlineCallbacks
    def test_explicit_pidfile_in_foreground(self) -> Any:
        """``-n --pidfile=FILE`` still writes FILE (and removes it at exit)."""
        cwd = self.directory()
        port = free_port()
        broker = self.twistd("-n", "--pidfile=mqtt.pid", "mqttbroker", "--listen", _listen(port),
                             cwd=cwd)
        yield self.wait_serving(port, broker)
        self.assertEqual(int((cwd / "mqtt.pid").read_text()),
                         broker.transport.pid)  # type: ignore[attr-defined]
        yield self.stop(broker)
        self.assertFalse((cwd / "mqtt.pid").exists())

    @defer.inlineCallbacks
    def test_twistd_l_is_logfile(self) -> Any:
        """``twistd -n -l tcp:PORT mqttbroker`` is refused with a hint, not a log file 'tcp:PORT'."""
        cwd = self.directory()
        port = free_port()
        # The --listen after mqttbroker keeps a broker that wrongly starts off port 1883.
        proc = self.twistd("-n", "-l", f"tcp:{port}", "mqttbroker",
                           "--listen", _listen(free_port()), cwd=cwd)
        code = yield self.ended(proc)
        self.assertNotEqual(code, 0, proc.text)
        self.assertOneLine(proc.text, "--logfile", "-l", f"tcp:{port}", "--listen")
        self.assertEqual(os.listdir(cwd), [])


class TwistdOptionTests(SynchronousTestCase):
    """check_twistd_options on twistd's own options, without a process."""

    def config(self, **values: Any) -> ServerOptions:
        config = ServerOptions()
        config.update(values)
        return config

    def test_pidfile_only_when_asked_in_the_foreground(self) -> None:
        """-n drops the default twistd.pid unless --pidfile (or an abbreviation) was given."""
        for argv, nodaemon, expected in (
                (["-n", "mqttbroker"], 1, ""),
                (["-n", "--pidfile", "twistd.pid", "mqttbroker"], 1, "twistd.pid"),
                (["-n", "--pid=twistd.pid", "mqttbroker"], 1, "twistd.pid"),
                (["-n", "mqttbroker", "--pidfile"], 1, ""),  # ours, not twistd's: no such option
                (["mqttbroker"], 0, "twistd.pid")):
            config = self.config(nodaemon=nodaemon, pidfile="twistd.pid")
            check_twistd_options(config, argv)
            self.assertEqual(config["pidfile"], expected, argv)

    def test_logfile_that_is_an_endpoint(self) -> None:
        """A log file named like a listener is refused; ordinary log files are not."""
        for logfile in ("tcp:1884", "ws=tcp:8080", "unix:/run/mqtt.sock", "ssl:8883"):
            e = self.assertRaises(UsageError, check_twistd_options,
                                  self.config(logfile=logfile), [])
            self.assertIn("--listen", str(e))
        for logfile in ("/var/log/mqtt.log", "-", "mqtt.log", None):
            check_twistd_options(self.config(logfile=logfile), [])


class UsageErrorTests(TwistdTestCase):
    """Issue 11, item 13: a usage error is one line naming the option and the bad value, a
    hint, and exit status 2; not twistd's whole --help."""

    @defer.inlineCallbacks
    def test_one_line_each(self) -> Any:
        """Bad numbers, values that cannot work, bad listeners, stores and auth arguments."""
        spare = _listen(free_port())  # where a broker that wrongly starts would listen
        cases: list[tuple[list[str], list[str], list[str]]] = [
            ([], ["--max-inflight", "abc"], ["--max-inflight: 'abc' is not an integer"]),
            ([], ["--sys-interval", "abc"], ["--sys-interval: 'abc' is not a number"]),
            ([], ["--connect-timeout", "-5"], ["--connect-timeout: '-5'", "negative"]),
            ([], ["--max-packet-size", "0"], ["--max-packet-size: '0'", "20.."]),
            ([], ["--persistent-session-expiry", "-1"], ["--persistent-session-expiry: '-1'"]),
            ([], ["--max-session-expiry", "-1"], ["--max-session-expiry: '-1'"]),
            ([], ["--max-inflight"], ["--max-inflight", "argument"]),
            ([], ["--slow-consumer-grace", "0"],
             ["--slow-consumer-grace: '0' must be at least 0.1"]),
            ([], ["--queue-full", "sometimes"],
             ["--queue-full: 'sometimes' must be drop or disconnect"]),
            ([], ["--listen", "tcp:notaport"], ["--listen 'tcp:notaport'", "notaport"]),
            ([], ["--listen", "mqtt="], ["--listen 'mqtt='", "no endpoint"]),
            ([], ["--listen", f"ws={spare}:origins="], ["--listen 'ws=", "origins="]),
            ([], ["--listen", f"http={spare}:replay=x"],
             ["--listen 'http=", "replay='x' is not an integer"]),
            ([], ["--store", "redis://x:notaport"], ["--store 'redis://x:notaport'", "port"]),
            ([], ["--auth", "nosuch"], ["--auth 'nosuch'", "unknown auth"]),
            ([], ["--auth", "jwt:"], ["--auth 'jwt:'", "secret="]),
            ([], ["--auth", "jwt:secret=short"], ["--auth 'jwt:secret=short'", "32 bytes"]),
            (["-l", "tcp:1884"], [], ["-l is --logfile", "--listen"]),
        ]
        argvs = [["-n", *before, "mqttbroker",
                  *([] if "--listen" in after else ["--listen", spare]), *after]
                 for before, after, _ in cases]
        results = yield self.exits(argvs)
        for (before, after, needles), (proc, code) in zip(cases, results, strict=True):
            lines = [line for line in proc.text.splitlines() if line.strip()]
            what = f"{before} mqttbroker {after} said:\n{proc.text}"
            self.assertEqual(code, 2, what)
            self.assertEqual(len(lines), 2, what)
            self.assertTrue(lines[0].startswith("twistd mqttbroker: error: "), what)
            for needle in needles:
                self.assertIn(needle, lines[0], what)
            self.assertEqual(lines[1], "Try 'twistd mqttbroker --help' for more information.")

    # Twenty twistd start-ups, four at a time: about 15 s on an idle machine, past the
    # class's 45 s at a load average of 14 (the test asserts no time).
    test_one_line_each.timeout = 180  # type: ignore[attr-defined]
