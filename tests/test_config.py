"""The YAML configuration file (issue 17): schema, errors with file and line, the command
line over the file, the reference table in docs/configuration.md, and SIGHUP.

Synchronous tests parse files with ``tap.Options``; the reload tests build the service on
a ``MemoryReactorClock``.  tests/test_config_twistd.py runs the real twistd.
"""

from __future__ import annotations

import shutil
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import yaml
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.config.keys import CLI_ONLY, KEYS, REPEATABLE
from mqtt_twisted.config.load import ConfigError, load_config
from mqtt_twisted.config.reference import reference, shipped, stale_sections
from mqtt_twisted.config.schema import option_specs
from mqtt_twisted.interfaces import IAdapter
from mqtt_twisted.plugins import plugins_by_name
from mqtt_twisted.tap import Options, makeService

ROOT = Path(__file__).resolve().parent.parent


def without_key(options_class: type) -> list[str]:
    """The options of ``options_class`` that no key of the file stands for."""
    keyed = {key.option for key in KEYS}
    return [option for option in option_specs(options_class)
            if option not in keyed and option not in CLI_ONLY]
SEED_EXAMPLE = """\
# Server configuration
server:
  listeners:
    - address: ":1883"
      protocol: mqtt
    - address: ":8883"
      protocol: mqtt
      tls:
        cert: /etc/mqtt/server.crt
        key: /etc/mqtt/server.key
    - address: ":8080"
      protocol: http
    - address: ":8081"
      protocol: ws
    - address: ":5683"
      protocol: coap

# Session configuration
session:
  max_expiry: 86400        # Maximum session expiry (seconds)
  max_offline_queue: 1000  # Max queued messages per session

# Storage configuration
storage:
  type: memory  # memory, etcd, redis

# Limits
limits:
  max_connections: 100000
  max_packet_size: 268435456  # 256MB
  max_subscriptions_per_client: 100
"""


class FileTestCase(SynchronousTestCase):
    """Writes configuration files into a directory of its own."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mqtt-twisted-config-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, text: str, name: str = "broker.yaml") -> str:
        path = self.dir / name
        path.write_text(textwrap.dedent(text))
        return str(path)

    def parse(self, text: str, *argv: str) -> Options:
        options = Options()
        options.parseOptions(["--config", self.write(text), *argv])
        return options

    def error(self, text: str, *argv: str) -> str:
        """The one-line-per-mistake message of a file that cannot be used."""
        e = self.assertRaises(ConfigError, self.parse, text, *argv)
        return str(e)


class KeyTableTests(SynchronousTestCase):
    """Every command-line option has a key of the file (a new option needs one line)."""

    def test_every_option_has_a_key(self) -> None:
        """Each option of tap.Options (parameters, flags, repeatable opt_ methods) is the
        option of a key in config/keys.py, or is command-line only for a stated reason."""
        self.assertEqual(without_key(Options), [],
                         "add a Key(...) line to mqtt_twisted/config/keys.py for each of "
                         "these options")

    def test_new_option_without_key_found(self) -> None:
        """An option added without a key (a parameter, a flag, a repeatable method) is
        found: the check above can fail."""
        class Grown(Options):
            optParameters = [*Options.optParameters, ["log-colour", None, "auto", "?"]]
            optFlags = [*Options.optFlags, ["quiet", None, "?"]]

            def opt_extra_listener(self, value: str) -> None:
                """?"""

        self.assertEqual(sorted(without_key(Grown)), ["extra-listener", "log-colour", "quiet"])

    def test_waiting_keys(self) -> None:
        """A key whose option the broker does not have yet is refused as unknown; once
        the option exists (the logging work's --log-level), the same file sets it."""
        path = Path(tempfile.mkdtemp(prefix="mqtt-twisted-config-"))
        self.addCleanup(shutil.rmtree, path, True)
        (path / "b.yaml").write_text("logging:\n  level: debug\n")
        adapters = plugins_by_name(IAdapter)
        if "log-level" not in option_specs(Options):
            e = self.assertRaises(ConfigError, load_config, str(path / "b.yaml"), Options,
                                  adapters)
            self.assertIn("unknown key", str(e))

        class WithLevel(Options):
            optParameters = [*Options.optParameters, ["log-level", None, "info", "Level."]]

        config = load_config(str(path / "b.yaml"), WithLevel, adapters)
        self.assertIn(("log-level", "debug"), config.arguments)


    def test_keys_unique(self) -> None:
        """No two keys share a path; repeatable options are list or listener keys."""
        paths = [key.path for key in KEYS]
        self.assertEqual(len(paths), len(set(paths)))
        for option in REPEATABLE:
            self.assertIn(option, {k.option for k in KEYS if k.kind in ("list", "listeners")})

    def test_live_keys_are_settings(self) -> None:
        """A key SIGHUP applies names a real BrokerSettings field."""
        from mqtt_twisted.core.settings import BrokerSettings

        fields = set(BrokerSettings.__dataclass_fields__)
        for key in KEYS:
            if key.live is not None:
                self.assertIn(key.live, fields, key.path)


class SeedExampleTests(FileTestCase):
    """Seed 002's example configuration is a valid file, meaning what it says."""

    def test_seed_example(self) -> None:
        """Its listeners become --listen values (TLS as ssl:, coap on udp:), its other keys
        the options they name."""
        config = load_config(self.write(SEED_EXAMPLE), Options, plugins_by_name(IAdapter))
        arguments = dict(config.arguments)
        listens = [text for option, text in config.arguments if option == "listen"]
        self.assertEqual(listens, [
            "mqtt=tcp:1883",
            "mqtt=ssl:8883:certKey=/etc/mqtt/server.crt:privateKey=/etc/mqtt/server.key",
            "http=tcp:8080", "ws=tcp:8081", "coap=udp:5683"])
        self.assertEqual(arguments["max-session-expiry"], "86400")
        self.assertEqual(arguments["max-queued"], "1000")
        self.assertEqual(arguments["store"], "memory")
        self.assertEqual(arguments["max-connections"], "100000")
        self.assertEqual(arguments["max-packet-size"], "268435456")
        self.assertEqual(arguments["max-subscriptions"], "100")

    def test_listener_forms(self) -> None:
        """endpoint strings, DTLS for coap over udp, TLS keys and paths with colons."""
        config = load_config(self.write("""\
            server:
              listeners:
                - {endpoint: "unix:/run/mqtt.sock"}
                - {protocol: coap, address: 5684, tls: {cert: c.pem, key: k.pem}}
                - {protocol: coap, endpoint: "tcp:5683"}
                - address: 8883
                  tls: {cert: "C:/a.pem", ca_certs: ca.pem, client_certs: optional,
                        identity_as_username: true, tls_minimum: 1.3}
            """), Options, plugins_by_name(IAdapter))
        self.assertEqual([text for option, text in config.arguments if option == "listen"], [
            "mqtt=unix:/run/mqtt.sock",
            "coap=udp:5684:dtlsCert=c.pem:dtlsKey=k.pem",
            "coap=tcp:5683",
            "mqtt=ssl:8883:certKey=C\\:/a.pem:caCerts=ca.pem:clientCerts=optional"
            ":identityAsUsername=yes:tlsMinimum=1.3"])

    def test_parsed_like_the_command_line(self) -> None:
        """A file gives the options the same values as the command line would."""
        options = self.parse("""\
            server:
              listeners:
                - address: "127.0.0.1:1883"
                - {protocol: ws, address: "[::1]:8080", path: /ws, max_connections: 7}
              sys_interval: 0
            session: {max_offline_queue: 5, queue_qos0: true, owner: fresh}
            limits: {max_packet_size: 4096, max_client_rate: 2.5}
            mqtt: {topic_aliases: lru}
            auth: {admin_users: [root, ops]}
            """)
        described = [s.describe() for s in options["listeners"]]
        self.assertEqual(described[0], "mqtt=tcp:1883:interface=127.0.0.1")
        self.assertEqual(options["listeners"][1].endpoint, r"tcp:8080:interface=\:\:1")
        self.assertEqual(options["listeners"][1].maxConnections, 7)
        self.assertEqual(options["listeners"][1].extra, {"path": "/ws"})
        self.assertEqual((options["max-queued"], options["queue-qos0"], options["session-owner"],
                          options["max-packet-size"], options["max-client-rate"],
                          options["topic-aliases"], options["sys-interval"],
                          options["admin-users"]),
                         (5, 1, "fresh", 4096, 2.5, "lru", 0.0, ["root", "ops"]))

    def test_empty_file(self) -> None:
        """An empty file (or comments only), or a section whose keys are all commented
        out, changes nothing."""
        self.assertEqual(self.parse("# nothing yet\n")["max-packet-size"], 1 << 20)
        self.assertEqual(self.parse("limits:\n  # max_packet_size: 5000\nsession:\n")
                         ["max-packet-size"], 1 << 20)

    def test_redis_store(self) -> None:
        """storage.url gives the store's address, storage.type its plugin."""
        options = self.parse("storage: {type: redis, url: 'redis://127.0.0.1:6390/2'}\n")
        self.assertEqual(options["store"], "redis://127.0.0.1:6390/2")


class OverrideTests(FileTestCase):
    """The command line overrides the file."""

    FILE = """\
        server:
          listeners: [{address: "127.0.0.1:1883"}, {protocol: ws, address: "127.0.0.1:8080"}]
        limits: {max_packet_size: 4096}
        auth: {admin_users: [root]}
        """

    def test_value(self) -> None:
        """A value given on the command line wins, before or after --config."""
        self.assertEqual(self.parse(self.FILE, "--max-packet-size", "9000")["max-packet-size"],
                         9000)
        options = Options()
        options.parseOptions(["--max-packet-size=9000", "--config", self.write(self.FILE)])
        self.assertEqual(options["max-packet-size"], 9000)
        self.assertEqual(self.parse(self.FILE)["max-packet-size"], 4096)

    def test_lists_replace(self) -> None:
        """--listen (and -l) on the command line replace every listener of the file; other
        lists likewise; without them the file's are used."""
        self.assertEqual([s.describe() for s in self.parse(self.FILE, "-l", "tcp:1999")
                          ["listeners"]], ["mqtt=tcp:1999"])
        self.assertEqual(len(self.parse(self.FILE)["listeners"]), 2)
        self.assertEqual(self.parse(self.FILE, "--admin-user", "x")["admin-users"], ["x"])


class ErrorTests(FileTestCase):
    """A file that cannot be used: file, line, key, what was expected."""

    def test_wrong_type(self) -> None:
        """The issue's own example: a word for a number."""
        path = str(self.dir / "broker.yaml")
        text = self.error("server:\n  sys_interval: 5\nlimits:\n  max_packet_size: big\n")
        self.assertEqual(text, f'{path}:4: limits.max_packet_size: expected an integer '
                               f'from 20 to 268435460, got "big"')

    def test_out_of_range_and_choices(self) -> None:
        """Bounds and choices come from the options themselves; every mistake is named,
        in the order of the lines."""
        text = self.error("""\
            session:
              max_inflight: 0
              owner: share
            mqtt:
              topic_aliases: yes
            """)
        lines = text.splitlines()
        self.assertEqual(len(lines), 3, text)
        self.assertIn(':2: session.max_inflight: expected an integer from 1 to 65535, got 0',
                      lines[0])
        self.assertIn(':3: session.owner: expected refuse or fresh, got "share"', lines[1])
        self.assertIn(':5: mqtt.topic_aliases: expected one of off, first, lru, got true',
                      lines[2])

    def test_unknown_keys(self) -> None:
        """An unknown key is named at its own line, with a did-you-mean when one is close
        (also for the command line's camelCase), else the known keys."""
        text = self.error("""\
            limits:
              max_packet_sise: 10
              maxTopicLevels: 3
            sesion: {}
            """)
        self.assertIn(""":2: limits.max_packet_sise: unknown key "max_packet_sise" (did you """
                      """mean 'max_packet_size'?)""", text)
        self.assertIn(":3: limits.maxTopicLevels: unknown key \"maxTopicLevels\" (did you mean "
                      "'max_topic_levels'?)", text)
        self.assertIn(":4: sesion: unknown key \"sesion\" (did you mean 'session'?)", text)

    def test_listener_keys_by_protocol(self) -> None:
        """A listener key of another adapter is unknown on this one; an item needs an
        address or an endpoint; the protocol is one of the adapters."""
        text = self.error("""\
            server:
              listeners:
                - address: 1883
                  path: /mqtt
                - protocol: ws
                  path: /mqtt
                - protocol: smtp
                  address: 25
                - protocol: ws
                  address: ":8080"
                  max_frame_size: lots
            """)
        self.assertIn(':4: server.listeners[0].path: unknown key "path"', text)
        self.assertEqual(text.count("listeners[0]"), 1, text)  # mqtt's, no other adapter's
        self.assertIn(":5: server.listeners[1]: expected a mapping with either address or "
                      "endpoint", text)
        self.assertIn(":7: server.listeners[2].protocol: expected one of ", text)
        self.assertIn(':11: server.listeners[3].max_frame_size: expected an integer >= 0, '
                      'got "lots"', text)

    def test_later_errors_name_the_line(self) -> None:
        """Mistakes found by --listen's own checks (a TLS file that is not there) and by
        the plugins name the file's line too."""
        text = str(self.assertRaises(usage.UsageError, self.parse, """\
            server:
              listeners:
                - address: 1883
                - address: 8883
                  tls: {cert: /nonexistent/cert.pem}
            """))
        self.assertIn("broker.yaml:4: server.listeners[1]: ", text)
        self.assertIn("/nonexistent/cert.pem", text)
        text = str(self.assertRaises(usage.UsageError, self.parse,
                                     "storage:\n  type: floppy\n"))
        self.assertIn("broker.yaml:1: storage: unknown store 'floppy'", text)

    def test_plugin_errors_name_the_line(self) -> None:
        """A plugin refusing its argument when the service is built (a password file that
        is not there) names the file's line; a command-line list that replaced the file's
        is named as given."""
        import io
        from contextlib import redirect_stderr

        options = self.parse("auth:\n  backends:\n    - anonymous\n    - passwd:/nonexistent\n",
                             "--auth", "passwd:/nonexistent")
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            self.assertRaises(SystemExit, makeService, options, MemoryReactorClock())
        self.assertIn("--auth 'passwd:/nonexistent': ", stderr.getvalue())
        options = self.parse("auth:\n  backends:\n    - passwd:/nonexistent\n")
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            self.assertRaises(SystemExit, makeService, options, MemoryReactorClock())
        self.assertIn("broker.yaml:3: auth.backends[0]: ", stderr.getvalue())
        self.assertIn("/nonexistent", stderr.getvalue())

    def test_yaml_syntax(self) -> None:
        """A YAML syntax error names its line."""
        text = self.error("limits:\n  max_packet_size: 10\n  bad: [1, 2\n")
        self.assertRegex(text, r"broker\.yaml:\d+: YAML syntax error: ")
        text = self.error("limits:\n  a: 1\n b: 2\n")
        self.assertIn("broker.yaml:3: YAML syntax error", text)

    def test_duplicate_key(self) -> None:
        """A key given twice is refused (YAML would let the last one win unseen)."""
        text = self.error("limits:\n  max_packet_size: 10000\n  max_packet_size: 20000\n")
        self.assertIn("broker.yaml:3: limits.max_packet_size: duplicate key", text)

    def test_not_a_mapping(self) -> None:
        """A file that is a list, or a section that is a number."""
        self.assertIn("broker.yaml:1: (top level): expected a mapping, got [",
                      self.error("- a\n- b\n"))
        self.assertIn("broker.yaml:1: limits: expected a mapping or null, got 5",
                      self.error("limits: 5\n"))

    def test_help_despite_the_file(self) -> None:
        """--help and --version answer even with a broken or missing file."""
        import io
        from contextlib import redirect_stdout

        for flag in ("--help", "--version"):
            with redirect_stdout(io.StringIO()) as out:
                self.assertRaises(SystemExit, Options().parseOptions,
                                  ["--config", str(self.dir / "nope.yaml"), flag])
            self.assertIn("mqtt", out.getvalue())

    def test_missing_file(self) -> None:
        """A file that is not there."""
        options = Options()
        e = self.assertRaises(ConfigError, options.parseOptions,
                              ["--config", str(self.dir / "nope.yaml")])
        self.assertEqual(str(e), f"{self.dir / 'nope.yaml'}: cannot read the configuration "
                                 f"file: No such file or directory")


class ReferenceTests(SynchronousTestCase):
    """docs/configuration.md's reference tables are the schema's."""

    def test_doc_matches_schema(self) -> None:
        """The generated sections of docs/configuration.md are what the schema gives now
        (run `python -m mqtt_twisted.config.reference --write` after adding a key)."""
        text = (ROOT / "docs" / "configuration.md").read_text()
        self.assertEqual(stale_sections(text, reference(Options, shipped(plugins_by_name(IAdapter)))),
                         [])

    def test_every_key_in_doc(self) -> None:
        """Each key of the table appears in the reference, with its option."""
        tables = "\n".join(reference(Options, shipped(plugins_by_name(IAdapter))).values())
        for key in KEYS:
            if key.option in option_specs(Options):
                self.assertIn(f"`{key.path}`", tables)
                self.assertIn(f"`--{key.option}`", tables)


class ExampleFileTests(SynchronousTestCase):
    """examples/broker.yaml loads and validates (test_config_twistd.py runs a broker)."""

    def test_example_validates(self) -> None:
        """The shipped example is a valid file with MQTT, TLS, WebSocket and HTTP listeners."""
        path = ROOT / "examples" / "broker.yaml"
        config = load_config(str(path), Options, plugins_by_name(IAdapter))
        listens = [text for option, text in config.arguments if option == "listen"]
        self.assertEqual([text.partition("=")[0] for text in listens][:4],
                         ["mqtt", "mqtt", "ws", "http"])
        self.assertTrue(listens[1].startswith("mqtt=ssl:"), listens[1])
        self.assertIsInstance(yaml.safe_load(path.read_text()), dict)


class ReloadTests(FileTestCase):
    """SIGHUP with --config: what can change is applied, the rest is named."""

    BASE = """\
        server:
          listeners: [{address: "127.0.0.1:1883"}]
        limits: {max_packet_size: 4096, max_connections: 50}
        """

    def start(self) -> tuple[Any, str]:
        path = self.write(self.BASE)
        options = Options()
        options.parseOptions(["--config", path])
        service = makeService(options, MemoryReactorClock())
        return service, path

    def reload(self, service: Any) -> list[str]:
        with capturedLogs() as events:
            service.reload()
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in events]

    def test_limits_applied_others_named(self) -> None:
        """A changed limit is applied to the running broker and logged with its old and new
        values; a changed listener or listener default is logged as needing a restart."""
        service, path = self.start()
        self.assertEqual(service.broker.settings.max_packet_size, 4096)
        Path(path).write_text(textwrap.dedent("""\
            server:
              listeners: [{address: "127.0.0.1:1883"}, {address: "127.0.0.1:1884"}]
            limits: {max_packet_size: 8192, max_connections: 60, max_subscriptions_per_client: 3}
            """))
        lines = self.reload(service)
        self.assertEqual(service.broker.settings.max_packet_size, 8192)
        self.assertEqual(service.broker.settings.max_subscriptions, 3)
        text = "\n".join(lines)
        self.assertIn("limits.max_packet_size 4096 -> 8192", text)
        self.assertIn("limits.max_subscriptions_per_client 1000 -> 3", text)
        self.assertIn("server.listeners changed in", text)
        self.assertIn("limits.max_connections changed in", text)
        self.assertIn("restart to apply", text)

    def test_connection_limits_applied(self) -> None:
        """A listener's own max_connections, and limits.max_connections for listeners
        without one, apply to the running listeners (the very settings their connection
        limits read); a listener key that cannot change live (path) needs a restart."""
        path = self.write("""\
            server:
              listeners:
                - {address: "127.0.0.1:1883"}
                - {protocol: ws, address: "127.0.0.1:8080", max_connections: 7}
            limits: {max_connections: 50}
            """)
        options = Options()
        options.parseOptions(["--config", path])
        service = makeService(options, MemoryReactorClock())
        running = options["listeners"]
        Path(path).write_text(textwrap.dedent("""\
            server:
              listeners:
                - {address: "127.0.0.1:1883"}
                - {protocol: ws, address: "127.0.0.1:8080", max_connections: 9}
            limits: {max_connections: 60}
            """))
        text = "\n".join(self.reload(service))
        self.assertEqual([s.maxConnections for s in running], [60, 9])
        mqtt, ws = service._listeners  # what their connection limits read at each accept
        self.assertIs(mqtt.mqtt_factory.limit.listener, running[0])
        self.assertIs(ws.ws_factory.limit.listener, running[1])
        self.assertIn("mqtt=tcp:1883:interface=127.0.0.1 max_connections 50 -> 60", text)
        self.assertIn("ws=tcp:8080:interface=127.0.0.1 max_connections 7 -> 9", text)
        self.assertNotIn("restart", text)
        Path(path).write_text(textwrap.dedent("""\
            server:
              listeners:
                - {address: "127.0.0.1:1883"}
                - {protocol: ws, address: "127.0.0.1:8080", max_connections: 5, path: /x}
            limits: {max_connections: 60}
            """))
        text = "\n".join(self.reload(service))
        self.assertIn("server.listeners changed in", text)
        self.assertEqual([s.maxConnections for s in running], [60, 9])

    def test_broken_file_changes_nothing(self) -> None:
        """A file broken between start and SIGHUP: an error naming its line, nothing
        applied."""
        service, path = self.start()
        Path(path).write_text("limits: {max_packet_size: 8192, max_topic_levels: many}\n")
        text = "\n".join(self.reload(service))
        self.assertIn("not reloaded", text)
        self.assertIn("broker.yaml:1: limits.max_topic_levels: expected an integer", text)
        self.assertEqual(service.broker.settings.max_packet_size, 4096)

    def test_command_line_still_wins(self) -> None:
        """A value given on the command line is not replaced by the file's on reload."""
        path = self.write(self.BASE)
        options = Options()
        options.parseOptions(["--config", path, "--max-packet-size", "5000"])
        service = makeService(options, MemoryReactorClock())
        Path(path).write_text(self.BASE.replace("4096", "8192").replace("        ", ""))
        self.reload(service)
        self.assertEqual(service.broker.settings.max_packet_size, 5000)

    def test_live_hook(self) -> None:
        """An option with a hook in LIVE_HOOKS (how --log-level will be made live) is
        applied through it: the hook gets the service and the new parsed value."""
        from mqtt_twisted.config.reload import LIVE_HOOKS

        calls: list[tuple[Any, Any]] = []
        LIVE_HOOKS["sys-interval"] = lambda service, value: calls.append((service, value))
        self.addCleanup(LIVE_HOOKS.pop, "sys-interval")
        service, path = self.start()
        Path(path).write_text(textwrap.dedent("""\
            server:
              listeners: [{address: "127.0.0.1:1883"}]
              sys_interval: 3
            limits: {max_packet_size: 4096, max_connections: 50}
            """))
        text = "\n".join(self.reload(service))
        self.assertEqual(calls, [(service, 3.0)])
        self.assertIn("server.sys_interval 10.0 -> 3.0", text)
        self.assertNotIn("restart", text)

    def test_log_level_live(self) -> None:
        """``logging.level`` changed in the file takes effect at SIGHUP, without a
        restart: the shared level filter moves from info to debug."""
        from twisted.logger import LogLevel

        from mqtt_twisted import logs

        service, path = self.start()
        self.addCleanup(logs.set_log_level, logs.set_log_level("info"))
        Path(path).write_text(textwrap.dedent(self.BASE) + "logging: {level: debug}\n")
        text = "\n".join(self.reload(service))
        self.assertIn("logging.level info -> debug", text)
        self.assertNotIn("restart", text)
        self.assertEqual(logs.set_log_level("info"), LogLevel.debug)

    def test_unchanged(self) -> None:
        """A reload of an unchanged file says there was nothing to apply."""
        service, _ = self.start()
        self.assertIn("nothing to apply", "\n".join(self.reload(service)))
