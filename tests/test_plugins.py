"""Interface contracts of every shipped implementation, and plugin discovery.

The discovery tests build a separate one-module distribution, install it into
a temporary directory (never into the running environment), and check that
both ``plugins_by_name`` and ``twistd mqttbroker --list-plugins`` find it.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import inspect
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementedBy
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

import mqtt_twisted
from mqtt_twisted import interfaces
from mqtt_twisted.adapters.listener import ListenerSettings
from mqtt_twisted.adapters.mqtt import MQTTAdapter
from mqtt_twisted.auth import AllowAnonymous
from mqtt_twisted.auth.scram import ScramAuthenticator
from mqtt_twisted.core.broker import Credentials
from mqtt_twisted.core.connection import MQTTConnection
from mqtt_twisted.core.session import Session
from mqtt_twisted.interfaces import (
    IAdapter,
    IAuthenticator,
    IAuthExchange,
    IAuthorizer,
    IAuthPlugin,
    IBrokerConnection,
    IBrokerService,
    IConnectionTransport,
    ICredentials,
    IEnhancedAuthenticator,
    IListenerSettings,
    ILock,
    IMessageSink,
    ISessionState,
    IStore,
    IStorePlugin,
)
from mqtt_twisted.plugins import plugins_by_name
from mqtt_twisted.plugins.builtin import AnonymousAuthPlugin, MemoryStorePlugin, ScramAuthPlugin
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore, StoredSession
from mqtt_twisted.testing import FakeTransport, make_broker

ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT = 60


def twistd_command() -> list[str]:
    """The ``twistd`` of the running interpreter's environment."""
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    found = shutil.which("twistd")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
            "from twisted.scripts.twistd import run; run()"]


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing text output, with a time limit."""
    return subprocess.run(args, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
                          check=False, **kwargs)  # type: ignore[call-overload]


def private_dir(case: SynchronousTestCase) -> str:
    """A temporary directory removed after the test (under pytest mktemp() is in the checkout)."""
    path = tempfile.mkdtemp(prefix="mqtt-twisted-test-")
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


class ContractTests(SynchronousTestCase):
    """verifyObject for every implementation the project ships."""

    def test_mqtt_adapter(self) -> None:
        """MQTTAdapter provides IAdapter."""
        self.assertTrue(verifyObject(IAdapter, MQTTAdapter()))

    def test_websocket_adapter(self) -> None:
        """WebSocketAdapter provides IAdapter and is found as the 'ws' plugin."""
        from mqtt_twisted.adapters.websocket import WebSocketAdapter

        self.assertTrue(verifyObject(IAdapter, WebSocketAdapter()))
        self.assertIsInstance(plugins_by_name(IAdapter)["ws"], WebSocketAdapter)

    def test_jwt_auth_plugin(self) -> None:
        """JWTAuthPlugin provides IAuthPlugin; its JWTAuthenticator both IAuthenticator and
        IAuthorizer."""
        from mqtt_twisted.auth.jwt import JWTAuthenticator
        from mqtt_twisted.plugins.jwt import JWTAuthPlugin

        plugin = plugins_by_name(IAuthPlugin)["jwt"]
        self.assertIsInstance(plugin, JWTAuthPlugin)
        self.assertTrue(verifyObject(IAuthPlugin, plugin))
        auth = plugin.makeAuthenticator(Clock(), "secret=0123456789abcdef0123456789abcdef")
        self.assertIsInstance(auth, JWTAuthenticator)
        self.assertTrue(verifyObject(IAuthenticator, auth))
        self.assertTrue(verifyObject(IAuthorizer, auth))

    def test_memory_store_plugin(self) -> None:
        """MemoryStorePlugin provides IStorePlugin, and makes an IStore."""
        plugin = MemoryStorePlugin()
        self.assertTrue(verifyObject(IStorePlugin, plugin))
        self.assertTrue(verifyObject(IStore, plugin.makeStore(Clock(), "")))

    def test_anonymous_auth_plugin(self) -> None:
        """AnonymousAuthPlugin provides IAuthPlugin, and makes an IAuthenticator."""
        plugin = AnonymousAuthPlugin()
        self.assertTrue(verifyObject(IAuthPlugin, plugin))
        self.assertTrue(verifyObject(IAuthenticator, plugin.makeAuthenticator(Clock(), "")))

    def test_scram_auth_plugin(self) -> None:
        """ScramAuthPlugin, its authenticator and its exchanges provide their interfaces."""
        users = Path(private_dir(self)) / "users"
        from mqtt_twisted.auth.scram import make_secret

        users.write_text(make_secret("secret").line("alice") + "\n")
        plugin = ScramAuthPlugin()
        self.assertTrue(verifyObject(IAuthPlugin, plugin))
        auth = plugin.makeAuthenticator(Clock(), str(users))
        self.assertIsInstance(auth, ScramAuthenticator)
        self.assertTrue(verifyObject(IEnhancedAuthenticator, auth))
        self.assertTrue(verifyObject(IAuthorizer, auth))
        exchange = auth.startExchange(auth.methods[0], Credentials("c", "alice"))
        self.assertTrue(verifyObject(IAuthExchange, exchange))

    def test_memory_store(self) -> None:
        """MemoryStore provides IStore."""
        self.assertTrue(verifyObject(IStore, MemoryStore(Clock())))

    def test_memory_store_lock(self) -> None:
        """The lock MemoryStore.acquireLock fires with provides ILock."""
        locks: list[object] = []
        MemoryStore(Clock()).acquireLock("c", 1.0).addCallback(locks.append)
        self.assertEqual(len(locks), 1)
        self.assertTrue(verifyObject(ILock, locks[0]))

    def test_allow_anonymous(self) -> None:
        """AllowAnonymous provides both IAuthenticator and IAuthorizer."""
        auth = AllowAnonymous()
        self.assertTrue(verifyObject(IAuthenticator, auth))
        self.assertTrue(verifyObject(IAuthorizer, auth))

    def test_broker_service(self) -> None:
        """The gateway BrokerService hands adapters provides IBrokerService."""
        clock = Clock()
        service = BrokerService(clock, MemoryStore(clock))
        self.assertTrue(verifyObject(IBrokerService, service.gateway))

    def test_mqtt_connection(self) -> None:
        """MQTTConnection provides IBrokerConnection."""
        broker, _ = make_broker()
        conn = broker.build_connection(FakeTransport(), "peer")
        self.assertIsInstance(conn, MQTTConnection)
        self.assertTrue(verifyObject(IBrokerConnection, conn))

    def test_session(self) -> None:
        """Session provides ISessionState."""
        self.assertTrue(verifyObject(ISessionState, Session("c")))

    def test_stored_session(self) -> None:
        """StoredSession provides ISessionState."""
        self.assertTrue(verifyObject(ISessionState, StoredSession("c")))

    def test_listener_settings(self) -> None:
        """ListenerSettings provides IListenerSettings."""
        self.assertTrue(verifyObject(IListenerSettings, ListenerSettings("mqtt", "tcp:1883")))

    def test_fake_transport(self) -> None:
        """testing.FakeTransport provides IConnectionTransport."""
        self.assertTrue(verifyObject(IConnectionTransport, FakeTransport()))

    def test_credentials(self) -> None:
        """core.broker.Credentials provides ICredentials."""
        self.assertTrue(verifyObject(ICredentials, Credentials("c", "user", b"pw")))

    def test_http_adapters(self) -> None:
        """The http and auto adapters provide IAdapter, and getPlugins finds both."""
        from mqtt_twisted.adapters.detect import DetectAdapter
        from mqtt_twisted.adapters.http import HTTPAdapter

        found = plugins_by_name(IAdapter)
        self.assertIsInstance(found["http"], HTTPAdapter)
        self.assertIsInstance(found["auto"], DetectAdapter)
        self.assertTrue(verifyObject(IAdapter, found["http"]))
        self.assertTrue(verifyObject(IAdapter, found["auto"]))
        self.assertTrue(verifyObject(IAdapter, DetectAdapter(dict)))

    def test_http_subscription(self) -> None:
        """An HTTP subscription provides IMessageSink (and IPushProducer for twisted.web)."""
        from types import SimpleNamespace

        from twisted.internet.interfaces import IPushProducer
        from twisted.internet.testing import StringTransport

        from mqtt_twisted.adapters._httpapi import SubscribeRequest
        from mqtt_twisted.adapters.http import Subscription, build_site

        clock = Clock()
        site = build_site(clock, BrokerService(clock, MemoryStore(clock)),
                          ListenerSettings("http", "tcp:0"))
        request = SimpleNamespace(channel=SimpleNamespace(transport=StringTransport()))
        stream = Subscription(site.bridge, request, SubscribeRequest(), None, None)
        self.assertTrue(verifyObject(IMessageSink, stream))
        self.assertTrue(verifyObject(IPushProducer, stream))

    def test_adapter_hooks(self) -> None:
        """Every shipped adapter provides the optional hooks it has (IStreamAdapter's
        buildFactory, IListenerChecker's checkListener), and its listener service
        IReloadableListener; the kit's DatagramListener does too."""
        from mqtt_twisted.adapters.detect import DetectAdapter
        from mqtt_twisted.adapters.http import HTTPAdapter
        from mqtt_twisted.adapters.kit import DatagramListener
        from mqtt_twisted.adapters.websocket import WebSocketAdapter
        from mqtt_twisted.interfaces import (
            IListenerChecker,
            IReloadableListener,
            IStreamAdapter,
        )

        clock = Clock()
        service = BrokerService(clock, MemoryStore(clock))
        for adapter in (MQTTAdapter(), WebSocketAdapter(), HTTPAdapter(),
                        DetectAdapter(lambda: plugins_by_name(IAdapter))):
            self.assertTrue(verifyObject(IStreamAdapter, adapter))
            self.assertTrue(verifyObject(IListenerChecker, adapter))
            listener = adapter.buildListener(clock, service, "tcp:0",
                                             ListenerSettings(adapter.name, "tcp:0"))
            self.assertTrue(verifyObject(IReloadableListener, listener))
        self.assertTrue(verifyObject(IReloadableListener,
                                     DatagramListener(clock, "udp:0", object())))

    def test_builtin_plugins_found(self) -> None:
        """getPlugins finds the built-in adapter, store and auth plugins, each verifying."""
        for interface, name in ((IAdapter, "mqtt"), (IStorePlugin, "memory"),
                                (IAuthPlugin, "anonymous"), (IAuthPlugin, "passwd")):
            found = plugins_by_name(interface)
            self.assertIn(name, found)
            self.assertTrue(verifyObject(interface, found[name]))

    def test_every_implementation_is_covered(self) -> None:
        """Every class in mqtt_twisted declaring one of our interfaces has a contract test."""
        covered = {
            "mqtt_twisted.adapters.mqtt.MQTTAdapter",
            "mqtt_twisted.adapters.websocket.WebSocketAdapter",
            "mqtt_twisted.plugins.jwt.JWTAuthPlugin",
            "mqtt_twisted.auth.jwt.JWTAuthenticator",
            "mqtt_twisted.plugins.builtin.MemoryStorePlugin",
            "mqtt_twisted.plugins.builtin.AnonymousAuthPlugin",
            "mqtt_twisted.store.memory.MemoryStore",
            "mqtt_twisted.store.memory.StoredSession",
            "mqtt_twisted.store.memory._HeldLock",
            # verifyObject in tests/test_store_contract.py and tests/test_store_redis.py:
            "mqtt_twisted.plugins.builtin.RedisStorePlugin",
            "mqtt_twisted.store.redis.RedisStore",
            "mqtt_twisted.store._redislock.RedisLock",
            # verifyObject in tests/test_store_contract.py and tests/test_store_etcd.py:
            "mqtt_twisted.plugins.builtin.EtcdStorePlugin",
            "mqtt_twisted.store.etcd.EtcdStore",
            "mqtt_twisted.store._etcdlock.EtcdLock",
            "mqtt_twisted.auth.AllowAnonymous",
            "mqtt_twisted.gateway.Gateway",
            "mqtt_twisted.core.connection.MQTTConnection",
            "mqtt_twisted.core.session.Session",
            "mqtt_twisted.adapters.listener.ListenerSettings",
            "mqtt_twisted.testing.FakeTransport",
            # verifyObject in tests/test_fake_service.py:
            "mqtt_twisted.testing.fake_service.FakeBrokerService",
            "mqtt_twisted.testing.fake_service.FakeBrokerConnection",
            "mqtt_twisted.records.Credentials",
            "mqtt_twisted.plugins.builtin.ScramAuthPlugin",
            "mqtt_twisted.auth.scram.ScramAuthenticator",
            "mqtt_twisted.auth.scram._ScramExchange",
            # verifyObject in tests/test_client_features.py (test_scram_against_server_exchange):
            "mqtt_twisted.client.auth.ScramClientAuth",
            # verifyObject in tests/test_auth_passwd.py (test_plugin):
            "mqtt_twisted.plugins.builtin.PasswdAuthPlugin",
            "mqtt_twisted.auth.passwd.PasswordFileAuthenticator",
            # verifyObject in tests/test_auth_acl.py (test_verify):
            "mqtt_twisted.auth.acl.AclAuthorizer",
            "mqtt_twisted.auth.acl.AllAuthorizers",
            # verifyObject in tests/test_auth_chain.py (test_verify):
            "mqtt_twisted.auth.chain.AuthChain",
            "mqtt_twisted.auth.chain._ChainExchange",
            "mqtt_twisted.adapters.http.HTTPAdapter",
            # verifyObject in tests/test_metrics.py (test_interfaces):
            "mqtt_twisted.adapters.metrics.MetricsAdapter",
            "mqtt_twisted.admin.BrokerAdmin",
            "mqtt_twisted.adapters._httpstream.Subscription",
            "mqtt_twisted.adapters.detect.DetectAdapter",
            # verifyObject of the optional hooks in test_adapter_hooks:
            "mqtt_twisted.adapters.tls.StreamListener",
            "mqtt_twisted.adapters.kit.DatagramListener",
            # verifyObject and the store contract in tests/test_sys_retained.py:
            "mqtt_twisted.store.overlay.SysRetainedOverlay",
            # verifyObject in tests/test_core_router.py:
            "mqtt_twisted.core.router.LocalRouter",
            # verifyObject in tests/test_cluster_router.py:
            "mqtt_twisted.cluster.router.ClusterRouter",
            # verifyObject (ISessionLink) in tests/test_gateway.py:
            "mqtt_twisted.core.virtual.VirtualConnection",
            # verifyObject in tests/test_coap_udp.py (PluginTests.test_interfaces):
            "mqtt_twisted.adapters.coap.CoapAdapter",
            "mqtt_twisted.adapters._coapobserve.CoapClient",
            # verifyObject (IMessageSink) in tests/test_bridge.py:
            "mqtt_twisted.bridge.bridge.Bridge",
        }
        ours = {value for value in vars(interfaces).values()
                if isinstance(value, InterfaceClass) and value.__module__ == interfaces.__name__}
        self.assertIn(IStore, ours)
        found = set()
        for info in pkgutil.walk_packages(mqtt_twisted.__path__, "mqtt_twisted."):
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if (inspect.isclass(value) and value.__module__ == module.__name__
                        and ours.intersection(implementedBy(value).flattened())):
                    found.add(f"{value.__module__}.{value.__qualname__}")
        self.assertEqual(sorted(found - covered), [],
                         "add a verifyObject test for these and list them in `covered`")


def _write_dropin_distribution(source: Path) -> None:
    """A distribution shipping one adapter as a drop-in module of mqtt_twisted.plugins."""
    plugins = source / "mqtt_twisted" / "plugins"
    plugins.mkdir(parents=True)
    (source / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=61", "wheel"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "mqtt-twisted-echo-test"
        version = "1.0"
        description = "An echo adapter for mqtt-twisted (plugin discovery test)"

        [tool.setuptools]
        # A drop-in module: no __init__.py in mqtt_twisted/ or mqtt_twisted/plugins/.
        packages = ["mqtt_twisted.plugins"]
        """))
    (plugins / "echo_test.py").write_text(textwrap.dedent('''\
        """An adapter that echoes every byte back: mqtt-twisted finds it by itself."""

        from twisted.application.internet import StreamServerEndpointService
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.protocol import Factory, Protocol
        from zope.interface import implementer

        from mqtt_twisted.interfaces import IAdapter


        class Echo(Protocol):
            def dataReceived(self, data):
                self.transport.write(data)


        @implementer(IAdapter)
        class EchoAdapter:
            name = "echo-test"
            description = "echoes bytes back (a third-party plugin)"
            defaultEndpoint = "tcp:7007"
            options = {}

            def buildListener(self, reactor, broker, endpointDescription, settings):
                endpoint = serverFromString(reactor, endpointDescription)
                return StreamServerEndpointService(endpoint, Factory.forProtocol(Echo))


        echoAdapter = EchoAdapter()
        '''))


@functools.cache
def dropin_site() -> tuple[Path, Path]:
    """Build the drop-in distribution's wheel and install it into a private directory.

    Returns (site directory, wheel).  Built once per test run; removed at exit.
    """
    work = Path(tempfile.mkdtemp(prefix="mqtt-twisted-dropin-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    source, wheels, site = work / "src", work / "wheels", work / "site"
    _write_dropin_distribution(source)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip"]
    built = run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", str(wheels), str(source)], env=env)
    if built.returncode:
        raise AssertionError(f"building the plugin wheel failed:\n{built.stdout}{built.stderr}")
    (wheel,) = wheels.glob("*.whl")
    installed = run([*pip, "install", "--no-deps", "--no-index", "--target", str(site),
                     str(wheel)], env=env)
    if installed.returncode:
        raise AssertionError(f"installing the plugin wheel failed:\n"
                             f"{installed.stdout}{installed.stderr}")
    return site, wheel


def dropin_env(site: Path) -> dict[str, str]:
    """The environment of a process that sees the drop-in site directory and this checkout."""
    path = [str(site), str(ROOT)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


_DISCOVER = """\
import json
from zope.interface.verify import verifyObject
from mqtt_twisted.interfaces import IAdapter
from mqtt_twisted.plugins import plugins_by_name
from mqtt_twisted.tap import Options, makeService
from twisted.internet.testing import MemoryReactorClock

found = plugins_by_name(IAdapter)
echo = found["echo-test"]
verifyObject(IAdapter, echo)
options = Options()
options.parseOptions(["--listen", "echo-test=tcp:7007", "--listen", "tcp:1883"])
reactor = MemoryReactorClock()
service = makeService(options, reactor)
service.startService()
print(json.dumps({
    "adapters": sorted(found),
    "module": __import__(type(echo).__module__, fromlist=["x"]).__file__,
    "listeners": [[s.adapter, s.endpoint] for s in options["listeners"]],
    "listening": [[port, f.protocol.__name__] for port, f, _, _ in reactor.tcpServers],
}))
"""


class DiscoveryTests(SynchronousTestCase):
    """A plugin module installed by another distribution is found without configuration."""

    def test_wheel_is_a_dropin(self) -> None:
        """The plugin wheel ships its module with no __init__.py that would shadow ours."""
        _, wheel = dropin_site()
        names = set(zipfile.ZipFile(wheel).namelist())
        self.assertIn("mqtt_twisted/plugins/echo_test.py", names)
        self.assertNotIn("mqtt_twisted/__init__.py", names)
        self.assertNotIn("mqtt_twisted/plugins/__init__.py", names)

    def test_plugins_by_name_finds_dropin(self) -> None:
        """plugins_by_name(IAdapter) lists the installed echo-test adapter beside 'mqtt'; it listens."""
        import json

        site, _ = dropin_site()
        result = run([sys.executable, "-c", _DISCOVER], env=dropin_env(site),
                     cwd=tempfile.gettempdir())
        self.assertEqual(result.returncode, 0, result.stderr)
        report = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertIn("mqtt", report["adapters"])
        self.assertIn("echo-test", report["adapters"])
        self.assertTrue(Path(report["module"]).is_relative_to(site), report["module"])
        self.assertEqual(report["listeners"], [["echo-test", "tcp:7007"], ["mqtt", "tcp:1883"]])
        self.assertEqual(report["listening"], [[7007, "Echo"], [1883, "MQTTStreamProtocol"]])

    def test_twistd_lists_dropin(self) -> None:
        """twistd -n mqttbroker --list-plugins lists the drop-in adapter and the built-ins."""
        site, _ = dropin_site()
        result = run([*twistd_command(), "-n", "mqttbroker", "--list-plugins"],
                     env=dropin_env(site), cwd=tempfile.gettempdir())
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        lines = [line.split() for line in result.stdout.splitlines()]
        names = {words[0] for words in lines if words}
        self.assertTrue({"echo-test", "mqtt", "memory", "anonymous"} <= names, result.stdout)

    def test_dropin_absent_without_its_path(self) -> None:
        """Without the drop-in directory on sys.path, echo-test is not found (no leak)."""
        self.assertNotIn("echo-test", plugins_by_name(IAdapter))


class TwistdPluginTests(SynchronousTestCase):
    """The ``twistd mqttbroker`` plugin is installed the way Twisted needs it."""

    def test_no_init_in_twisted_plugins(self) -> None:
        """twisted/ and twisted/plugins/ have no __init__.py (it would hide Twisted's plugins)."""
        self.assertTrue((ROOT / "twisted" / "plugins" / "mqttbroker_plugin.py").exists())
        self.assertFalse((ROOT / "twisted" / "plugins" / "__init__.py").exists())
        self.assertFalse((ROOT / "twisted" / "__init__.py").exists())

    def test_twistd_help_lists_mqttbroker(self) -> None:
        """Run from outside the checkout, twistd --help lists the mqttbroker command."""
        result = run([*twistd_command(), "--help"], cwd=tempfile.gettempdir())
        self.assertEqual(result.returncode, 0, result.stderr)
        commands = [line.split()[0] for line in result.stdout.split("Commands:", 1)[1]
                    .splitlines() if line.startswith("    ") and line.split()]
        self.assertIn("mqttbroker", commands)
        self.assertIn("web", commands)  # Twisted's own plugins are still visible

    def test_mqttbroker_help_documents_options(self) -> None:
        """twistd -n mqttbroker --help documents --listen, --store and --auth."""
        result = run([*twistd_command(), "-n", "mqttbroker", "--help"],
                     cwd=tempfile.gettempdir())
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--listen=", "--store=", "--auth=", "--list-plugins", "[ADAPTER=]ENDPOINT"):
            self.assertIn(option, result.stdout)
