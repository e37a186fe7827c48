"""Issue 17, logging: ``--log-level``, ``--log-format text|json`` and what the broker logs.

The formats and the level filter on their own (mqtt_twisted/logs.py), the options under
twistd, then real ``twistd mqttbroker`` processes whose output is parsed: every JSON line
is an object with timestamp, level, namespace and event; a client's connect, disconnect
(normal, connection lost, keep alive, protocol error, takeover, shutdown), refusal and
authentication failure (no password in any line); text lines at info without the
debug-only lines, which ``--log-level debug`` adds; a Redis outage as two JSON lines.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.logger import Logger, LogLevel, capturedLogs
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mqtt_twisted import logs
from mqtt_twisted.codec import ConnAck, Connect, Disconnect
from tests.redisserver import free_port
from tests.test_auth_passwd import ALICE
from tests.test_twistd_run import TwistdTestCase, _kill_daemon, _listen

#: The password of ALICE's line; and one that is wrong. Neither may be in any log line.
PASSWORD, WRONG = b"secret1", b"not-the-password-8731"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
#: A QoS 3 PUBLISH: malformed [MQTT-3.3.1-4].
QOS3_PUBLISH = b"\x36\x03\x00\x01t"


def _events(namespace: str = "mqtt_twisted.test") -> tuple[Logger, list[dict]]:
    events: list[dict] = []
    return Logger(namespace=namespace, observer=events.append), events


class FormatTests(SynchronousTestCase):
    """One event, one line: JSON with its fields, or short text."""

    def test_json_line(self) -> None:
        """timestamp (ISO 8601 UTC), level, namespace, event text, then the fields."""
        log, events = _events()
        log.warn("{who} did {n} things", who="alice", n=3, data=b"\xffraw", namespace="mine",
                 items=[1, "two"], thing=object)
        line = logs.json_line(events[0])
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        parsed = json.loads(line)
        self.assertRegex(parsed["timestamp"], ISO_UTC)
        when = datetime.fromtimestamp(events[0]["log_time"], UTC)
        self.assertEqual(parsed["timestamp"][:19], when.strftime("%Y-%m-%dT%H:%M:%S"))
        self.assertEqual((parsed["level"], parsed["namespace"], parsed["event"]),
                         ("warn", "mqtt_twisted.test", "alice did 3 things"))
        self.assertEqual((parsed["who"], parsed["n"], parsed["items"]), ("alice", 3, [1, "two"]))
        self.assertEqual(parsed["data"], "\\xffraw")
        self.assertEqual(parsed["field_namespace"], "mine")  # a field cannot replace it
        self.assertIn("object", parsed["thing"])
        self.assertFalse([key for key in parsed if key.startswith("log_")], parsed)

    def test_failure_has_its_traceback(self) -> None:
        """A logged failure: the JSON line has a traceback field, the text line the traceback."""
        log, events = _events()
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            log.failure("it broke")
        parsed = json.loads(logs.json_line(events[0]))
        self.assertEqual((parsed["level"], parsed["event"]), ("critical", "it broke"))
        self.assertIn("ZeroDivisionError", parsed["traceback"])
        self.assertIn("ZeroDivisionError", logs.text_line(events[0]))

    def test_text_line(self) -> None:
        """Time, level, the namespace without mqtt_twisted. and the class, the text."""
        log, events = _events("mqtt_twisted.core.connection.MQTTConnection")
        log.info("Closing {client}", client="c1")
        line = logs.text_line(events[0])
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info  "
                               r"\[core\.connection\] Closing c1\n$")
        self.assertEqual(logs.short_namespace("twisted.web.server.Site"), "twisted.web.server")
        self.assertEqual(logs.short_namespace("mqtt_twisted.clients"), "clients")


class LevelTests(SynchronousTestCase):
    """The level filter: set at start, changed while running (the SIGHUP hook)."""

    def setUp(self) -> None:
        self.addCleanup(logs.set_log_level, "info")
        self.addCleanup(logs.set_log_format, "text")

    def test_filter_and_runtime_change(self) -> None:
        """At warn only warn and above are written; set_log_level('debug') lets debug in."""
        out = io.StringIO()
        observer = logs.observer(out, "warn", "json")
        log = Logger(namespace="mqtt_twisted.test", observer=observer)
        log.info("quiet")
        log.warn("loud")
        self.assertEqual([json.loads(line)["event"] for line in out.getvalue().splitlines()],
                         ["loud"])
        self.assertFalse(logs.debugging())
        self.assertEqual(logs.set_log_level("debug"), LogLevel.warn)
        self.assertTrue(logs.debugging())
        log.debug("detail")
        self.assertEqual(json.loads(out.getvalue().splitlines()[-1])["event"], "detail")
        with capturedLogs() as events:
            self.assertEqual(logs.set_log_level("info", announce=True), LogLevel.debug)
            logs.set_log_level("info", announce=True)  # no change: no line
        [changed] = events  # info (or the old level when higher): always written
        self.assertEqual((changed["action"], changed["old"], changed["new"],
                          changed["log_level"]), ("config_reload", "debug", "info",
                                                  LogLevel.info))
        logs.set_log_level("error")
        with capturedLogs() as events:
            logs.set_log_level("warn", announce=True)
        self.assertEqual(events[0]["log_level"], LogLevel.error)
        logs.set_log_format("text")
        log.error("now text")
        self.assertIn("error [test] now text", out.getvalue().splitlines()[-1])

    def test_a_turns_lines_are_written_together(self) -> None:
        """With a running reactor, a turn's info lines are one write and one flush
        when the turn ends; a warning goes at once with the lines before it; without
        a running reactor every line goes at once; shutdown writes what is left."""

        class Out(io.StringIO):
            writes = 0

            def write(self, text: str) -> int:
                self.writes += 1
                return super().write(text)

        class Reactor(task.Clock):
            running = True
            triggers: list[Any] = []

            def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> None:
                self.triggers.append((phase, event, f))

        out, reactor = Out(), Reactor()
        log = Logger(namespace="mqtt_twisted.test",
                     observer=logs.observer(out, "info", "text", reactor))
        log.info("one")
        log.info("two")
        self.assertEqual((out.getvalue(), out.writes), ("", 0))
        reactor.advance(0)
        self.assertEqual([line.split()[-1] for line in out.getvalue().splitlines()],
                         ["one", "two"])
        self.assertEqual(out.writes, 1)
        log.info("three")
        log.warn("four")
        self.assertEqual([line.split()[-1] for line in out.getvalue().splitlines()[-2:]],
                         ["three", "four"])
        self.assertEqual(out.writes, 2)
        reactor.advance(0)  # (nothing left for the turn's flush)
        self.assertEqual(out.writes, 2)
        log.info("five")
        [(phase, event, flush)] = reactor.triggers
        self.assertEqual((phase, event), ("after", "shutdown"))
        reactor.running = False
        flush()
        self.assertEqual((out.getvalue().split()[-1], out.writes), ("five", 3))
        log.info("six")  # not running: at once
        self.assertEqual((out.getvalue().split()[-1], out.writes), ("six", 4))

    def test_bad_values(self) -> None:
        """A level or format that does not exist is a ValueError naming the choices."""
        self.assertIn("debug, info, warn, error", str(self.assertRaises(
            ValueError, logs.parse_level, "loud")))
        self.assertIn("text or json", str(self.assertRaises(ValueError, logs.parse_format,
                                                            "xml")))
        self.assertEqual(logs.parse_level(" WARN "), LogLevel.warn)


class ClientEventTests(SynchronousTestCase):
    """The client events of a sans-IO broker (no process): the reasons a run of twistd
    does not show, and the level of adapters' sessions."""

    def setUp(self) -> None:
        from twisted.logger import globalLogPublisher

        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def clients(self, action: str) -> list[dict]:
        return [e for e in self.events if e.get("action") == action]

    def test_kicked(self) -> None:
        """DELETE /session's closeSession: the disconnect line says kicked (0x98)."""
        from mqtt_twisted.gateway import Gateway
        from mqtt_twisted.testing import FakeClient, make_broker

        broker, _ = make_broker()
        FakeClient(broker, 5).connect("victim")
        self.assertTrue(Gateway(broker).closeSession("victim", remove=True))
        [line] = self.clients("disconnect")
        self.assertEqual((line["client_id"], line["reason"], line["reason_code"],
                          line["log_level"]), ("victim", "kicked", 0x98, LogLevel.info))

    def test_adapter_sessions_at_debug(self) -> None:
        """An HTTP or CoAP session's open and close are debug lines (one per request, maybe)."""
        from mqtt_twisted.gateway import Gateway
        from mqtt_twisted.records import Credentials
        from mqtt_twisted.testing import make_broker

        logs.set_log_level("debug")  # (below the level, they are not even built)
        self.addCleanup(logs.set_log_level, "info")
        broker, _ = make_broker()
        gateway = Gateway(broker)
        creds = Credentials("poller", peer="10.0.0.9:4000", adapter="http")
        gateway.openSession("poller", _Sink(), True, creds)
        gateway.closeSession("poller")
        [opened], [closed] = self.clients("connect"), self.clients("disconnect")
        self.assertEqual((opened["adapter"], opened["peer"], opened["log_level"]),
                         ("http", "10.0.0.9:4000", LogLevel.debug))
        self.assertEqual((closed["reason"], closed["log_level"]), ("kicked", LogLevel.debug))


class _Sink:
    def deliver(self, message: Any, qos: int) -> bool:
        return True


class TwistdOptionsTests(SynchronousTestCase):
    """The options go in through twistd's own ``logger`` option."""

    def setUp(self) -> None:
        self.addCleanup(logs.set_log_level, "info")

    def parse(self, *argv: str) -> ServerOptions:
        config = ServerOptions()
        config.parseOptions(["-n", *argv[:argv.index("mqttbroker") + 1],
                             "--listen", _listen(free_port()), *argv[argv.index("mqttbroker")
                                                                      + 1:]])
        return config

    def test_logger_is_ours(self) -> None:
        """twistd's logger option is our observer's factory, built from our options."""
        config = self.parse("mqttbroker", "--log-level", "debug", "--log-format", "json")
        self.assertIs(config["logger"], logs.twistd_logger)
        self.assertEqual(config.subOptions["log-level"], "debug")
        self.assertEqual(config.subOptions["log-format"], "json")

    def test_own_logger_wins(self) -> None:
        """``twistd --logger NAME`` is left alone."""
        config = self.parse("--logger", "twisted.logger.globalLogPublisher", "mqttbroker")
        self.assertIsNot(config["logger"], logs.twistd_logger)


class TwistdLogTests(TwistdTestCase):
    """Real brokers; their output parsed."""

    def passwd(self) -> Path:
        path = self.directory() / "passwd"
        path.write_text(ALICE + "\n")
        return path

    @defer.inlineCallbacks
    def start(self, *args: str) -> Any:
        port = free_port()
        broker = self.twistd("-n", "mqttbroker", "--listen", _listen(port), *args)
        yield self.wait_for_port(port, broker)
        return port, broker

    @defer.inlineCallbacks
    def connect(self, port: int, client_id: str, version: int = 4, keep_alive: int = 0,
                username: str | None = None, password: bytes | None = None,
                clean: bool = True) -> Any:
        client = yield self.raw(port, version)
        client.send(Connect(client_id, version, clean, keep_alive, None, username, password))
        connack = yield client.expect(ConnAck)
        return client, connack

    @defer.inlineCallbacks
    def until(self, broker: Any, condition: Any, what: str) -> Any:
        for _ in range(200):
            if condition():
                return
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        raise AssertionError(f"timed out waiting for {what}:\n{broker.text}")

    def json_lines(self, broker: Any) -> list[dict]:
        """Every line of the output, each of which must be one JSON object."""
        lines = []
        for text in broker.text.splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                raise AssertionError(f"not a JSON line: {text!r}\n{broker.text}") from None
            self.assertIsInstance(line, dict)
            for key in ("timestamp", "level", "namespace", "event"):
                self.assertIn(key, line, text)
            self.assertRegex(line["timestamp"], ISO_UTC)
            lines.append(line)
        return lines

    def one(self, lines: list[dict], **fields: Any) -> dict:
        found = [line for line in lines if all(line.get(k) == v for k, v in fields.items())]
        self.assertEqual(len(found), 1, f"{fields}: {found}\n" + "\n".join(map(str, lines)))
        return found[0]

    @defer.inlineCallbacks
    def test_json_client_lines(self) -> Any:
        """Connects, refusals, an auth failure and six kinds of disconnect, as JSON lines."""
        http = free_port()
        port, broker = yield self.start("--log-format", "json", "--auth",
                                        f"passwd:{self.passwd()}", "--listen",
                                        f"http={_listen(http)}")
        status = yield self.curl("-u", f"alice:{WRONG.decode()}", "-X", "POST", "-d", "x",
                                 f"http://127.0.0.1:{http}/publish?topic=t")
        self.assertEqual(status, 401)
        good, connack = yield self.connect(port, "good", 5, 0, "alice", PASSWORD)
        self.assertEqual(connack.reason_code, 0)
        _, connack = yield self.connect(port, "intruder", 4, 0, "alice", WRONG)
        self.assertEqual(connack.reason_code, 4)  # v3: bad user name or password
        _, connack = yield self.connect(port, "", 4, 0, "alice", PASSWORD, clean=False)
        self.assertEqual(connack.reason_code, 2)  # v3: identifier rejected
        polite, _ = yield self.connect(port, "polite", 4, 0, "alice", PASSWORD)
        polite.send(Disconnect())
        yield polite.wait_closed()
        dropped, _ = yield self.connect(port, "dropped", 4, 0, "alice", PASSWORD)
        yield dropped.abort()
        rude, _ = yield self.connect(port, "rude", 5, 0, "alice", PASSWORD)
        rude.send_bytes(QOS3_PUBLISH)
        yield rude.wait_closed()
        sleepy, _ = yield self.connect(port, "sleepy", 4, 1, "alice", PASSWORD)
        again, _ = yield self.connect(port, "good", 4, 0, "alice", PASSWORD)  # takes over
        yield good.wait_closed()
        yield sleepy.wait_closed()  # 1.5 keep alive periods of silence
        broker.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        yield again.wait_closed()
        yield self.ended(broker)

        lines = self.json_lines(broker)
        self.assertNotIn(PASSWORD.decode(), broker.text)
        self.assertNotIn(WRONG.decode(), broker.text)
        start = self.one(lines, action="listener_start", adapter="mqtt")
        self.assertEqual((start["adapter"], start["endpoint"]),
                         ("mqtt", f"tcp:{port}:interface=127.0.0.1"))
        self.one(lines, action="listener_stop", listener=start["listener"])
        connect = self.one(lines, action="connect", client_id="good", protocol="5.0")
        self.assertEqual((connect["level"], connect["namespace"], connect["adapter"],
                          connect["user"], connect["clean"], connect["session"]),
                         ("info", "mqtt_twisted.clients", "mqtt", "alice", True, "clean"))
        self.assertRegex(connect["peer"], r"^127\.0\.0\.1:\d+$")
        over_http = self.one(lines, action="auth_failure", adapter="http")
        self.assertEqual((over_http["user"], over_http["reason_code"]), ("alice", 0x86))
        failed = self.one(lines, action="auth_failure", adapter="mqtt")
        self.assertEqual((failed["client_id"], failed["user"], failed["reason_code"],
                          failed["level"]), ("intruder", "alice", 0x86, "info"))
        self.assertNotIn("password", {key.lower() for key in failed})
        refused = self.one(lines, action="refuse")
        self.assertEqual(refused["reason_code"], 0x85)
        self.assertIn("client id", refused["why"])
        reasons = {line["client_id"]: (line["reason"], line["reason_code"])
                   for line in lines if line.get("action") == "disconnect"
                   and line["client_id"] != "good"}
        self.assertEqual(reasons, {
            "polite": ("normal", None), "dropped": ("connection lost", None),
            "rude": ("protocol error", 0x81), "sleepy": ("keepalive timeout", 0x8D)})
        self.assertEqual(
            [(line["reason"], line["reason_code"]) for line in lines
             if line.get("action") == "disconnect" and line["client_id"] == "good"],
            [("takeover", 0x8E), ("server shutdown", 0x8B)])
        takeover = self.one(lines, action="takeover")
        self.assertEqual((takeover["client_id"], takeover["old_peer"]),
                         ("good", connect["peer"]))

    @defer.inlineCallbacks
    def test_text_info_then_debug(self) -> Any:
        """Text at info: the connect line, no per-message or HTTP request lines; at debug
        both are there."""
        for level in ("info", "debug"):
            http = free_port()
            port, broker = yield self.start("--log-level", level,
                                            "--listen", f"http={_listen(http)}")
            client, _ = yield self.connect(port, "texter")
            client.send_bytes(b"\x30\x07\x00\x03t/1hi")  # QoS 0 PUBLISH t/1
            agent_done = yield self.http_get(http, "/openapi.json")
            self.assertEqual(agent_done, 200)
            client.send(Disconnect())
            yield client.wait_closed()
            broker.transport.signalProcess("TERM")  # type: ignore[attr-defined]
            yield self.ended(broker)
            text = broker.text
            self.assertRegex(text, r"\d\.\d{3}Z info  \[clients\] texter connected from "
                                   r"127\.0\.0\.1:\d+ \(MQTT 3\.1\.1 over mqtt, clean session, "
                                   r"keep alive 0 s\)\n")
            self.assertRegex(text, r"info  \[clients\] texter from 127\.0\.0\.1:\d+ "
                                   r"disconnected: normal\n")
            debug_lines = [line for line in text.splitlines()
                           if "Received PUBLISH from texter" in line
                           or '"GET /openapi.json" 200' in line]
            self.assertEqual(len(debug_lines), 0 if level == "info" else 2, text)
            if level == "info":
                self.assertEqual([line for line in text.splitlines()
                                  if line[:2] == "20" and line.split()[1] == "debug"], [], text)

    @defer.inlineCallbacks
    def http_get(self, port: int, path: str) -> Any:
        """curl's status code for GET ``path``."""

        code = yield self.curl(f"http://127.0.0.1:{port}{path}")
        return code

    @defer.inlineCallbacks
    def curl(self, *args: str) -> Any:
        """curl ARGS: the HTTP status code."""
        from twisted.internet.utils import getProcessOutput

        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed")
        code = yield getProcessOutput(curl, ["-s", "-o", "/dev/null", "-w", "%{http_code}",
                                             *args])
        return int(code)

    @defer.inlineCallbacks
    def test_warn_level(self) -> Any:
        """At warn: a warning (a connection over the listener's limit), not one info line."""
        # 2: the start-up probe's socket may not be released yet when "quiet" connects.
        port, broker = yield self.start("--log-level", "warn", "--max-connections", "2")
        client, _ = yield self.connect(port, "quiet")
        for _ in range(2):
            yield self.raw(port, 4)  # at least one too many: closed at once
        yield self.until(broker, lambda: "connections held on" in broker.text, "the refusal")
        client.send(Disconnect())
        yield client.wait_closed()
        broker.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        yield self.ended(broker)
        self.assertEqual(broker.signal, signal.SIGTERM)
        self.assertIn(" warn  [adapters.kit] Refusing a connection from 127.0.0.1:",
                      broker.text)
        levels = [line.split()[1] for line in broker.text.splitlines() if line[:2] == "20"]
        self.assertEqual(set(levels) - {"warn", "error", "critical"}, set(), broker.text)

    @defer.inlineCallbacks
    def test_usage_errors(self) -> Any:
        """A bad --log-level or --log-format, or a daemon logging to stdout: one line, exit 2."""
        cases = [(["-n", "mqttbroker", "--log-level", "loud"], "--log-level: 'loud'"),
                 (["-n", "mqttbroker", "--log-format", "xml"], "--log-format: 'xml'"),
                 (["--logfile=-", "mqttbroker"], "a daemon cannot log to stdout")]
        for args, needle in cases:
            proc = self.twistd(*args, "--listen", _listen(free_port()))
            code = yield self.ended(proc)
            self.assertEqual(code, 2, proc.text)
            self.assertOneLine(proc.text, "error:", needle)


class StartFailureTests(TwistdTestCase):
    """Start-up failures not covered by test_twistd_run: a missing certificate (in the
    foreground and daemonized: a usage error before any fork) and a failure in a JSON
    log file."""

    @defer.inlineCallbacks
    def test_missing_certificate(self) -> Any:
        """ssl: with a key file that is not there: one line naming it, exit 2, no files."""
        missing = self.directory() / "gone" / "key.pem"
        listen = f"ssl:{free_port()}:interface=127.0.0.1:privateKey={missing}"
        for before in (["-n"], ["--pidfile=mqtt.pid", "--logfile=mqtt.log"]):
            cwd = self.directory()
            proc = self.twistd(*before, "mqttbroker", "--listen", listen, cwd=cwd)
            code = yield self.ended(proc)
            self.assertEqual(code, 2, proc.text)
            self.assertOneLine(proc.text, "error:", str(missing), "No such file or directory")
            self.assertEqual(list(cwd.iterdir()), [])

    @defer.inlineCallbacks
    def test_daemon_json_failure(self) -> Any:
        """Daemonized with --log-format json and a port in use: the parent exits non-zero
        with the reason; the log file's lines are JSON, one of them the failure."""
        taken = self.reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        cwd = self.directory()
        pidfile, logfile = cwd / "mqtt.pid", cwd / "mqtt.log"
        self.addCleanup(_kill_daemon, pidfile)
        proc = self.twistd(f"--pidfile={pidfile}", f"--logfile={logfile}", "mqttbroker",
                           "--listen", _listen(port), "--log-format", "json", cwd=cwd)
        code = yield self.ended(proc)
        self.assertNotEqual(code, 0, proc.text)
        self.assertIn("Address already in use", proc.text)
        for _ in range(300):
            if logfile.exists() and "Server Shut Down." in logfile.read_text():
                break
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        lines = [json.loads(line) for line in logfile.read_text().splitlines()]
        failed = [line for line in lines if line.get("action") == "start_failed"]
        self.assertEqual(len(failed), 1, lines)
        self.assertEqual(failed[0]["level"], "critical")
        self.assertIn(f"listener mqtt=tcp:{port}", failed[0]["event"])
        self.assertIn("Address already in use", failed[0]["event"])
        self.assertNotIn("traceback", failed[0])


class JsonOutageTests(TwistdTestCase):
    """A Redis outage in JSON: one warn line, one recovery line with its duration."""

    @defer.inlineCallbacks
    def test_outage_two_lines(self) -> Any:
        """Redis stopped for 3 s under $SYS updates every 0.2 s and a connected client."""
        from tests.redisserver import RedisServer

        redis = RedisServer(self.reactor, str(self.directory()))
        yield redis.start()
        self.addCleanup(redis.stop)
        port = free_port()
        broker = self.twistd("-n", "mqttbroker", "--listen", _listen(port), "--log-format",
                             "json", "--sys-interval", "0.2", "--store",
                             redis.url() + "?timeout=1")
        yield self.wait_for_port(port, broker)
        client = yield self.raw(port, 4)
        yield client.connect("watcher", clean=False)
        yield task.deferLater(self.reactor, 0.5, lambda: None)
        before = len(broker.text.splitlines())
        yield redis.stop()
        yield task.deferLater(self.reactor, 3, lambda: None)
        yield redis.restart()
        for _ in range(400):
            if '"store_recovered"' in broker.text:
                break
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        lines = [json.loads(line) for line in broker.text.splitlines()[before:]]
        self.assertEqual([(line["action"], line["level"]) for line in lines],
                         [("store_outage", "warn"), ("store_recovered", "info")], broker.text)
        self.assertRegex(lines[0]["what"], r"^Redis at 127\.0\.0\.1:\d+$")
        self.assertGreaterEqual(lines[1]["seconds"], 2.5)
        self.assertGreaterEqual(lines[1]["reads"], 1)  # $SYS's retained count, at least
        broker.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        yield self.ended(broker)



class RankedPredicateTests(SynchronousTestCase):
    def test_same_answers_as_twisteds_predicate(self) -> None:
        """The level filter compares ranks (no NamedConstant ordering per line) and
        answers as Twisted's LogLevelFilterPredicate does, namespaces included."""
        from twisted.logger import LogLevelFilterPredicate

        levels = list(LogLevel.iterconstants())
        for default in levels:
            ours, theirs = logs._RankedPredicate(default), LogLevelFilterPredicate(default)
            for p in (ours, theirs):
                p.setLogLevelForNamespace("a.b", LogLevel.error)
            for level in [*levels, None]:
                for namespace in ("", "x", "a.b.c", "a"):
                    event = {"log_level": level, "log_namespace": namespace}
                    self.assertEqual(ours(event), theirs(event), (default, level, namespace))
            for level in levels:
                self.assertEqual(logs._RANK[level] >= logs._RANK[default], level >= default)
