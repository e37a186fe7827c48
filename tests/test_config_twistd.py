"""``twistd mqttbroker --config FILE`` as an operator runs it (issue 17).

A bad file ends twistd before anything listens (exit status 2, one line per mistake with
file, line and key); the shipped examples/broker.yaml, pointed at test ports and
certificates, serves paho over MQTT, TLS and WebSocket and curl over HTTP; SIGHUP
re-reads the file, a password file and a TLS certificate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest

from tests.certs import CA, replace_file
from tests.redisserver import free_port
from tests.securebroker import SecurePaho, within
from tests.test_tls import tls_exchange
from tests.test_twistd_run import ROOT, TwistdTestCase

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def passwd(path: Path, *users: tuple[str, str]) -> None:
    """A password file written by the real mosquitto_passwd."""
    if MOSQUITTO_PASSWD is None:
        raise SkipTest("mosquitto_passwd is not installed (apt-get install mosquitto)")
    path.unlink(missing_ok=True)
    for i, (user, password) in enumerate(users):
        subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(path), user,
                        password], check=True, capture_output=True)


class BadFileTests(TwistdTestCase):
    """A file that cannot be used: one line per mistake, exit status 2, nothing listens."""

    @defer.inlineCallbacks
    def refused(self, text: str | None, *needles: str, daemon: bool = False) -> Any:
        """Run twistd with ``text`` as broker.yaml (None: no file); the exit status is 2,
        the output names every needle and the broker never listened."""
        port = free_port()
        cwd = self.directory()
        if text is not None:
            (cwd / "broker.yaml").write_text(text.replace("PORT", str(port)))
        twistd = ["--logfile=twistd.log"] if daemon else ["-n"]
        proc = self.twistd(*twistd, "mqttbroker", "--config", "broker.yaml", cwd=cwd)
        code = yield self.ended(proc)
        self.assertEqual(code, 2, proc.text)
        for needle in needles:
            self.assertIn(needle, proc.text)
        self.assertNotIn("Listening", proc.text)
        self.assertNotIn("Traceback", proc.text)
        self.assertIn("Try 'twistd mqttbroker --help'", proc.text)
        self.assertFalse((cwd / "twistd.pid").exists())

    def test_wrong_type(self) -> None:
        """The issue's example, word for word."""
        return self.refused(
            "server:\n  listeners:\n    - address: '127.0.0.1:PORT'\n"
            "limits:\n  max_packet_size: big\n",
            'twistd mqttbroker: error: broker.yaml:5: limits.max_packet_size: expected an '
            'integer from 20 to 268435460, got "big"')

    def test_unknown_key(self) -> None:
        """An unknown key, with a suggestion."""
        return self.refused(
            "server:\n  listeners: [{address: '127.0.0.1:PORT'}]\nsession:\n  max_expirey: 5\n",
            "broker.yaml:4: session.max_expirey: unknown key \"max_expirey\" (did you mean "
            "'max_expiry'?)")

    def test_yaml_syntax(self) -> None:
        """A YAML syntax error, with its line."""
        return self.refused("server:\n  listeners: [{address: '127.0.0.1:PORT'}\n",
                            "broker.yaml:3: YAML syntax error")

    def test_daemon(self) -> None:
        """Without -n the file is read before twistd daemonizes: the mistake reaches the
        terminal, and the exit status is 2 (no pidfile is left)."""
        return self.refused("limits:\n  max_packet_size: big\n",
                            "broker.yaml:2: limits.max_packet_size: expected an integer",
                            daemon=True)

    def test_missing_file(self) -> None:
        """No such file."""
        return self.refused(None, "broker.yaml: cannot read the configuration file: No such "
                                  "file or directory")

    def test_missing_certificate(self) -> None:
        """A TLS listener whose certificate is not there: the listener's line."""
        return self.refused(
            "server:\n  listeners:\n    - address: '127.0.0.1:PORT'\n"
            "      tls: {cert: missing.pem}\n",
            "broker.yaml:3: server.listeners[0]: ", "missing.pem")


class ExampleBrokerTests(TwistdTestCase):
    """examples/broker.yaml, with test ports, certificates and users, serves its clients."""

    timeout = 90

    def example(self, cwd: Path) -> tuple[Path, dict[str, int], CA]:
        """The example with its listeners on 127.0.0.1 and free ports, a test CA's server
        certificate, and a password file and ACL of the test's."""
        config = yaml.safe_load((ROOT / "examples" / "broker.yaml").read_text())
        ca = CA(str(cwd))
        server = ca.issue("broker", server=True)
        ports: dict[str, int] = {}
        for item in config["server"]["listeners"]:
            kind = "tls" if "tls" in item else item.get("protocol", "mqtt")
            ports[kind] = free_port()
            item["address"] = f"127.0.0.1:{ports[kind]}"
            if "tls" in item:
                item["tls"].update(cert=server.cert_path, key=server.key_path)
        passwd(cwd / "passwd", ("alice", "secret1"))
        (cwd / "acl").write_text("user alice\ntopic readwrite #\n")
        config["auth"]["backends"] = [f"passwd:{cwd / 'passwd'}"]
        config["auth"]["acl_file"] = str(cwd / "acl")
        path = cwd / "broker.yaml"
        path.write_text(yaml.safe_dump(config))
        return path, ports, ca

    @defer.inlineCallbacks
    def test_example_serves_paho_and_curl(self) -> Any:
        """MQTT, TLS and WebSocket paho clients and curl on the HTTP bridge, all with the
        password file's user, reach one subscriber; a wrong password is refused; the
        metrics listener's scrape counts it all (issue 17's "Done when")."""
        cwd = self.directory()
        path, ports, ca = self.example(cwd)
        proc = self.twistd("-n", "--pidfile=", "mqttbroker", "--config", str(path), cwd=cwd)
        yield within(proc.seen("Listening: http="), self.reactor, 20,
                     f"twistd to listen:\n{proc.text}")

        def paho(port: int, client_id: str, **kwargs: Any) -> SecurePaho:
            client = SecurePaho(self.reactor, port, client_id, username="alice",
                                password=kwargs.pop("password", "secret1"), **kwargs)
            self.addCleanup(client.stop)
            return client

        subscriber = paho(ports["mqtt"], "sub")
        self.assertEqual((yield subscriber.connect()).rc, 0)
        yield subscriber.subscribe(("example/#", 1))
        tls = paho(ports["tls"], "tls", ca=ca.cert_path)
        self.assertEqual((yield tls.connect()).rc, 0)
        ws = paho(ports["ws"], "ws", transport="websockets", path="/mqtt")
        self.assertEqual((yield ws.connect()).rc, 0)
        yield tls.publish("example/tls", b"over tls", qos=1)
        yield ws.publish("example/ws", b"over ws", qos=1)
        out, err, code = yield getProcessOutputAndValue(
            "curl", ["-sS", "-u", "alice:secret1", "-X", "POST", "--data-binary", "over http",
                     f"http://127.0.0.1:{ports['http']}/publish?topic=example/http&qos=1"],
            env=dict(os.environ))
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["topic"], "example/http")
        got = yield subscriber.collect(3)
        self.assertEqual(sorted((m.topic, m.payload) for m in got),
                         [("example/http", b"over http"), ("example/tls", b"over tls"),
                          ("example/ws", b"over ws")])
        wrong = paho(ports["mqtt"], "wrong", password="nope")
        self.assertNotEqual((yield wrong.connect()).rc, 0)
        # The metrics listener, scraped as Prometheus would and parsed by its own parser:
        # the three QoS 1 messages above are counted.
        out, err, code = yield getProcessOutputAndValue(
            "curl", ["-sS", f"http://127.0.0.1:{ports['metrics']}/metrics"],
            env=dict(os.environ))
        self.assertEqual(code, 0, err)
        families = {f.name: f for f in text_string_to_metric_families(out.decode())}
        received = {s.labels["qos"]: s.value for s in
                    families["mqtt_messages_received"].samples
                    if s.name == "mqtt_messages_received_total"}
        self.assertEqual(received["1"], 3)
        refusals = {s.labels["reason"]: s.value for s in
                    families["mqtt_connect_refusals"].samples
                    if s.name == "mqtt_connect_refusals_total"}
        self.assertGreaterEqual(refusals.get("bad_user_name_or_password", 0)
                                + refusals.get("not_authorized", 0), 1)


class SighupTests(TwistdTestCase):
    """SIGHUP with --config: files re-read, limits applied, the rest named."""

    timeout = 90

    @defer.inlineCallbacks
    def test_password_certificate_and_limits(self) -> Any:
        """After the password file, the certificate and the file change and SIGHUP: the new
        password works and the old one not, a new TLS connection gets the new certificate,
        the new packet limit is logged as applied and the added listener as needing a
        restart."""
        cwd = self.directory()
        ca = CA(str(cwd))
        server = ca.issue("broker", server=True)
        passwd(cwd / "passwd", ("alice", "old-password"))
        port, tls_port, extra_port = free_port(), free_port(), free_port()
        base = {
            "server": {"listeners": [
                {"address": f"127.0.0.1:{port}"},
                {"address": f"127.0.0.1:{tls_port}",
                 "tls": {"cert": server.cert_path, "key": server.key_path}}]},
            "auth": {"backends": [f"passwd:{cwd / 'passwd'}"]},
            "limits": {"max_packet_size": 4096},
        }
        path = cwd / "broker.yaml"
        path.write_text(yaml.safe_dump(base))
        proc = self.twistd("-n", "--pidfile=", "mqttbroker", "--config", str(path), cwd=cwd)
        yield within(proc.seen(f"Listening: mqtt=ssl:{tls_port}"), self.reactor, 20,
                     f"twistd to listen:\n{proc.text}")
        _, name = yield deferToThread(tls_exchange, tls_port, ca.cert_path)
        self.assertEqual(name, "broker")

        renewed = ca.issue("broker-renewed", server=True)
        replace_file(renewed.cert_path, server.cert_path)
        replace_file(renewed.key_path, server.key_path)
        passwd(cwd / "passwd", ("alice", "new-password"))
        base["limits"]["max_packet_size"] = 8192
        base["server"]["listeners"].append({"address": f"127.0.0.1:{extra_port}"})
        path.write_text(yaml.safe_dump(base))
        proc.transport.signalProcess("HUP")
        yield within(proc.seen("restart to apply"), self.reactor, 10,
                     f"the reload:\n{proc.text}")
        self.assertIn("limits.max_packet_size 4096 -> 8192", proc.text)
        self.assertIn("server.listeners changed in", proc.text)
        self.assertIn("TLS certificate reloaded", proc.text)

        _, name = yield deferToThread(tls_exchange, tls_port, ca.cert_path)
        self.assertEqual(name, "broker-renewed")
        new = SecurePaho(self.reactor, port, "new", username="alice", password="new-password")
        self.addCleanup(new.stop)
        self.assertEqual((yield new.connect()).rc, 0)
        old = SecurePaho(self.reactor, port, "old", username="alice", password="old-password")
        self.addCleanup(old.stop)
        self.assertNotEqual((yield old.connect()).rc, 0)
        self.assertNotIn("Traceback", proc.text)
