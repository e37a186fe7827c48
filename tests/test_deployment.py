"""Issue 17, deployment: the systemd unit and the Dockerfile shipped in the checkout.

The unit parses (configparser, always; ``systemd-analyze verify`` where installed), runs
the broker in the foreground with restart on failure and the hardening options, and its
``Type=notify`` works: a real twistd tells a NOTIFY_SOCKET ``READY=1`` once it listens
and ``STOPPING=1`` when stopped.  The Dockerfile's RUN and CMD are the README's install
and run commands; the broker options of both parse.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mqtt_twisted._twistd import sd_notify
from mqtt_twisted.tap import Options
from tests.redisserver import free_port
from tests.securebroker import spawn
from tests.test_plugins import twistd_command
from tests.test_twistd_run import TwistdTestCase, _env, _listen

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "examples" / "systemd" / "mqtt-twisted.service"
DOCKERFILE = ROOT / "Dockerfile"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(UNIT.read_text(), str(UNIT))
    return parser


def broker_arguments(command: list[str]) -> list[str]:
    """What follows ``mqttbroker`` in a twistd command line."""
    return command[command.index("mqttbroker") + 1:]


class UnitFileTests(SynchronousTestCase):
    """examples/systemd/mqtt-twisted.service."""

    def test_parses_with_what_it_needs(self) -> None:
        """Sections, foreground twistd, restart on failure, reload by SIGHUP, hardening."""
        parsed = unit()
        self.assertEqual(set(parsed.sections()), {"Unit", "Service", "Install"})
        service = parsed["Service"]
        self.assertIn(service["Type"], ("notify", "simple"))
        command = shlex.split(service["ExecStart"])
        self.assertTrue(command[0].endswith("/twistd"), command)
        self.assertIn("-n", command[:command.index("mqttbroker")])  # foreground: no fork
        self.assertEqual(service["Restart"], "on-failure")
        self.assertIn("-HUP $MAINPID", service["ExecReload"])
        for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                           ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                           ("DynamicUser", "yes")):
            self.assertEqual(service.get(key), value, key)
        self.assertEqual(service["ReadWritePaths"], service["WorkingDirectory"])
        self.assertGreaterEqual(int(service["LimitNOFILE"]), 10_000 + 1024)
        self.assertEqual(parsed["Install"]["WantedBy"], "multi-user.target")

    def test_broker_options_parse(self) -> None:
        """The broker options of ExecStart are ones the broker takes."""
        options = Options()
        options.parseOptions(broker_arguments(shlex.split(unit()["Service"]["ExecStart"])))
        self.assertEqual(options["log-format"], "json")

    def test_systemd_analyze_verify(self) -> None:
        """``systemd-analyze verify`` finds nothing to say (the twistd path made real)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed (the configparser checks ran)")
        twistd = Path(twistd_command()[0])
        directory = Path(tempfile.mkdtemp(prefix="mqtt-twisted-unit-"))
        self.addCleanup(shutil.rmtree, directory, True)
        copy = directory / UNIT.name
        copy.write_text(UNIT.read_text().replace("/opt/mqtt-twisted/bin/twistd", str(twistd)))
        result = subprocess.run([analyze, "verify", "--man=no", str(copy)],
                                capture_output=True, text=True, timeout=60)
        said = (result.stdout + result.stderr).strip()
        self.assertEqual((result.returncode, said), (0, ""))
        # It can fail: a misspelt hardening key is reported.
        copy.write_text(copy.read_text().replace("NoNewPrivileges=", "NoNewPrivilegs="))
        result = subprocess.run([analyze, "verify", "--man=no", str(copy)],
                                capture_output=True, text=True, timeout=60)
        self.assertIn("NoNewPrivilegs", result.stdout + result.stderr)


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append(data)


class NotifyTests(TwistdTestCase):
    """``Type=notify``: what systemd's notify socket hears from a real twistd."""

    def notify_socket(self) -> tuple[str, _Datagrams]:
        path = str(self.directory() / "notify")
        listener = _Datagrams()
        port = self.reactor.listenUNIXDatagram(path, listener)
        self.addCleanup(port.stopListening)
        return path, listener

    def notified(self, path: str, *args: str) -> Any:
        """``twistd -n mqttbroker ARGS`` as systemd starts it: NOTIFY_SOCKET set."""
        return spawn(self, self.reactor, [*twistd_command(), "-n", "mqttbroker", *args],
                     env={**_env(), "NOTIFY_SOCKET": path}, path=str(self.directory()))

    def test_sd_notify_without_systemd(self) -> None:
        """No NOTIFY_SOCKET (not under systemd): nothing sent, False."""
        self.assertFalse(sd_notify("READY=1", {}))
        self.assertFalse(sd_notify("READY=1", {"NOTIFY_SOCKET": "relative"}))

    @defer.inlineCallbacks
    def test_ready_once_listening_then_stopping(self) -> Any:
        """READY=1 (and the listeners as STATUS) once the port listens; STOPPING=1 on SIGTERM."""
        path, heard = self.notify_socket()
        port = free_port()
        broker = self.notified(path, "--listen", _listen(port))
        yield self.wait_for_port(port, broker)
        for _ in range(100):
            if heard.received:
                break
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        self.assertEqual(len(heard.received), 1, broker.text)
        ready = heard.received[0].decode()
        self.assertTrue(ready.startswith("READY=1\n"), ready)
        self.assertIn(f"STATUS=Listening: mqtt=tcp:{port}", ready)
        broker.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        yield self.ended(broker)
        self.assertEqual(heard.received[1:], [b"STOPPING=1"])

    @defer.inlineCallbacks
    def test_no_ready_when_start_fails(self) -> Any:
        """A broker that cannot start never says READY=1 (systemd sees a failed start)."""
        path, heard = self.notify_socket()
        taken = self.reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        broker = self.notified(path, "--listen", _listen(taken.getHost().port))
        code = yield self.ended(broker)
        self.assertEqual(code, 1, broker.text)
        self.assertNotIn(b"READY=1", b"".join(heard.received))


class DockerfileTests(SynchronousTestCase):
    """The Dockerfile installs and runs the broker with the README's quick-start commands."""

    def instructions(self) -> list[tuple[str, str]]:
        text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
        found = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keyword, _, rest = line.partition(" ")
                found.append((keyword.upper(), rest.strip()))
        return found

    def readme_commands(self) -> list[str]:
        """The quick start's one line, ``pip install . && twistd -n mqttbroker ...``."""
        readme = (ROOT / "README.md").read_text()
        match = re.search(r"## Quick start.*?```sh\n(.*?)\n```", readme, re.S)
        assert match, "README.md has no quick-start command"
        return [part.strip() for part in match.group(1).split("&&")]

    def test_run_and_cmd_are_the_readmes(self) -> None:
        """RUN has the README's pip install; CMD (exec form) is its twistd command."""
        install, run = self.readme_commands()
        instructions = self.instructions()
        self.assertIn(("RUN", install), instructions)
        commands = [json.loads(rest) for keyword, rest in instructions if keyword == "CMD"]
        self.assertEqual(len(commands), 1)
        self.assertEqual(commands[0], shlex.split(run))
        options = Options()
        options.parseOptions(broker_arguments(commands[0]))

    def test_base_image_and_user(self) -> None:
        """A Python the package supports, not running as root, port 1883 exposed."""
        instructions = self.instructions()
        base = [rest for keyword, rest in instructions if keyword == "FROM"]
        self.assertEqual(len(base), 1)
        version = re.match(r"python:(\d+)\.(\d+)", base[0])
        assert version, base
        required = re.search(r'requires-python = ">=(\d+)\.(\d+)"',
                             (ROOT / "pyproject.toml").read_text())
        assert required
        self.assertGreaterEqual(tuple(map(int, version.groups())),
                                tuple(map(int, required.groups())))
        users = [rest for keyword, rest in instructions if keyword == "USER"]
        self.assertTrue(users and users[-1] not in ("root", "0"), users)
        self.assertIn(("EXPOSE", "1883"), instructions)
