"""The client library against real brokers over TCP: the same test case runs against our
broker (``OurBrokerClientTests``) and, by a subclass, a real Mosquitto process
(``MosquittoClientTests``).  Both check users against one password file written by the
real ``mosquitto_passwd``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import UNIXServerEndpoint, serverFromString
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from mqtt_twisted.auth.passwd import PasswordFileAuthenticator
from mqtt_twisted.client import ConnectError, MQTTClientProtocol, Will, connect_client
from mqtt_twisted.constants import PropertyId as P
from mqtt_twisted.testing import start_broker, stop_broker
from tests.certs import CA
from tests.redisserver import free_port

TIMEOUT = 10.0
USER, PASSWORD = "alice", "pw-alice"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def write_passwd(directory: str) -> str:
    """A password file for alice, written by the real mosquitto_passwd."""
    if not os.access(MOSQUITTO_PASSWD, os.X_OK):
        raise SkipTest("mosquitto_passwd is not installed (apt-get install mosquitto)")
    path = str(Path(directory) / "passwd")
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", path, USER, PASSWORD], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


class ClientTestsMixin:
    """What the client must do against any broker; ``start``/``stop`` provide one."""

    reactor = global_reactor
    #: The CONNACK code a broker gives a wrong password: (MQTT 3.1.1, MQTT 5).
    bad_password_codes: tuple[int, int] = (4, 0x86)

    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def make_certificates(self, directory: str) -> None:
        """A CA (alone in ``trust``, for the client's trustRoots), a server certificate
        for 127.0.0.1 and a client certificate."""
        self.ca = CA(directory)
        self.server_cert = self.ca.issue("server", server=True)
        self.client_cert = self.ca.issue("client-cert")
        self.trust = os.path.join(directory, "trust")
        os.mkdir(self.trust)
        shutil.copy(self.ca.cert_path, self.trust)

    @inlineCallbacks
    def test_tls_endpoint(self) -> Any:
        """A ``tls:`` client endpoint string with trust roots and a client certificate:
        the server is verified, QoS 1 goes through."""
        proto = yield connect_client(
            self.reactor, f"tls:127.0.0.1:{self.tls_port}:trustRoots={self.trust}:"
            f"certificate={self.client_cert.cert_path}:privateKey={self.client_cert.key_path}",
            "tls-client", version=5, username=USER, password=PASSWORD).addTimeout(
                TIMEOUT, self.reactor)
        self.addCleanup(self._close, proto)
        queue: DeferredQueue[Any] = DeferredQueue()
        yield self.wait(proto.subscribe("tls/t", 1, handler=queue.put))
        yield self.wait(proto.publish("tls/t", b"secret", 1))
        message = yield self.wait(queue.get())
        self.assertEqual(message.payload, b"secret")

    @inlineCallbacks
    def test_unix_endpoint(self) -> Any:
        """A ``unix:`` client endpoint string reaches the broker's unix socket."""
        proto = yield connect_client(self.reactor, f"unix:{self.socket_path}", "unix-client",
                                     username=USER, password=PASSWORD).addTimeout(
                                         TIMEOUT, self.reactor)
        self.addCleanup(self._close, proto)
        yield self.wait(proto.publish("unix/t", b"x", 2))

    @inlineCallbacks
    def client(self, client_id: str, version: int = 4, **options: Any) -> Any:
        options.setdefault("username", USER)
        options.setdefault("password", PASSWORD)
        proto = yield connect_client(self.reactor, self.endpoint(), client_id,
                                     version=version, **options).addTimeout(
                                         TIMEOUT, self.reactor)
        self.addCleanup(self._close, proto)
        return proto

    def _close(self, proto: MQTTClientProtocol) -> Deferred[None]:
        if proto.connected:
            proto.transport.abortConnection()
        return proto.whenClosed()

    def wait(self, d: Deferred[Any]) -> Deferred[Any]:
        return d.addTimeout(TIMEOUT, self.reactor)

    @inlineCallbacks
    def check_every_qos(self, version: int) -> Any:
        queue: DeferredQueue[Any] = DeferredQueue()
        sub = yield self.client(f"sub-v{version}", version)
        pub = yield self.client(f"pub-v{version}", version)
        granted = yield self.wait(sub.subscribe([(f"q/{q}", q) for q in range(3)],
                                                handler=queue.put))
        self.assertEqual(granted, [0, 1, 2])
        for qos in range(3):
            result = yield self.wait(pub.publish(f"q/{qos}", b"m%d" % qos, qos))
            self.assertEqual(result, None if qos == 0 else 0)
            message = yield self.wait(queue.get())
            self.assertEqual((message.topic, message.payload, message.publish.qos),
                             (f"q/{qos}", b"m%d" % qos, qos))

    def test_connect_v311(self) -> Any:
        """A v3.1.1 connect fires with CONNACK 0, session present 0."""
        return self._connect(4)

    def test_connect_v5(self) -> Any:
        """A v5 connect fires with CONNACK 0 and the broker's v5 properties."""
        return self._connect(5)

    @inlineCallbacks
    def _connect(self, version: int) -> Any:
        proto = yield self.client(f"c-v{version}", version)
        self.assertEqual((proto.connack.reason_code, proto.connack.session_present), (0, False))
        if version == 5:
            self.assertIsInstance(proto.connack.properties, dict)
        yield self.wait(proto.disconnect())
        self.assertFalse(proto.connected)

    def test_every_qos_v311(self) -> Any:
        """QoS 0, 1 and 2 out and back in over MQTT 3.1.1."""
        return self.check_every_qos(4)

    def test_every_qos_v5(self) -> Any:
        """QoS 0, 1 and 2 out and back in over MQTT 5."""
        return self.check_every_qos(5)

    @inlineCallbacks
    def test_v5_properties_arrive(self) -> Any:
        """v5 publish properties reach the subscriber."""
        queue: DeferredQueue[Any] = DeferredQueue()
        sub = yield self.client("props-sub", 5)
        yield self.wait(sub.subscribe("props/t", 1, handler=queue.put))
        pub = yield self.client("props-pub", 5)
        yield self.wait(pub.publish("props/t", "x", 1, properties={
            P.USER_PROPERTY: [("k", "v")], P.CONTENT_TYPE: "text/plain"}))
        message = yield self.wait(queue.get())
        self.assertEqual(message.publish.properties[P.USER_PROPERTY], [("k", "v")])
        self.assertEqual(message.publish.properties[P.CONTENT_TYPE], "text/plain")

    @inlineCallbacks
    def test_retained(self) -> Any:
        """A retained message reaches a later subscriber with the retain flag."""
        pub = yield self.client("ret-pub")
        yield self.wait(pub.publish("ret/t", b"kept", 1, retain=True))
        queue: DeferredQueue[Any] = DeferredQueue()
        sub = yield self.client("ret-sub", 5)
        yield self.wait(sub.subscribe("ret/#", 1, handler=queue.put))
        message = yield self.wait(queue.get())
        self.assertEqual((message.topic, message.payload, message.publish.retain),
                         ("ret/t", b"kept", True))
        yield self.wait(pub.publish("ret/t", b"", 1, retain=True))  # clear it

    @inlineCallbacks
    def test_will_on_abrupt_close(self) -> Any:
        """The will goes out when the client drops its socket without DISCONNECT, and
        not after a clean disconnect."""
        queue: DeferredQueue[Any] = DeferredQueue()
        watcher = yield self.client("will-watch")
        yield self.wait(watcher.subscribe("will/#", 1, handler=queue.put))
        polite = yield self.client("will-polite", will=Will("will/polite", b"no", 1))
        yield self.wait(polite.disconnect())
        rude = yield self.client("will-rude", 5, will=Will("will/rude", b"gone", 1))
        yield self.wait(rude.abort())
        message = yield self.wait(queue.get())
        self.assertEqual((message.topic, message.payload), ("will/rude", b"gone"))
        self.assertEqual(queue.pending, [])

    @inlineCallbacks
    def test_unsubscribe(self) -> Any:
        """After unsubscribe, messages on the filter stop; v5 gets UNSUBACK codes."""
        queue: DeferredQueue[Any] = DeferredQueue()
        sub = yield self.client("unsub", 5, on_message=queue.put)
        yield self.wait(sub.subscribe("u/a", 1))
        yield self.wait(sub.publish("u/a", b"1", 1))
        first = yield self.wait(queue.get())
        self.assertEqual(first.payload, b"1")
        codes = yield self.wait(sub.unsubscribe("u/a"))
        self.assertEqual(codes, [0])
        yield self.wait(sub.subscribe("u/marker", 1))
        yield self.wait(sub.publish("u/a", b"2", 1))
        yield self.wait(sub.publish("u/marker", b"m", 1))
        marker = yield self.wait(queue.get())
        self.assertEqual(marker.topic, "u/marker")  # "u/a" 2 never came before it

    @inlineCallbacks
    def test_persistent_session_resends(self) -> Any:
        """A QoS 1 publish cut off by a dropped connection completes on the next
        connection of the persistent session (resent with DUP), and reaches the
        subscriber."""
        queue: DeferredQueue[Any] = DeferredQueue()
        sub = yield self.client("resend-sub")
        yield self.wait(sub.subscribe("resend/t", 1, handler=queue.put))
        pub = yield self.client("resend-pub", clean_start=False)
        done = pub.publish("resend/t", b"again", 1)
        yield self.wait(pub.abort())  # before any PUBACK could arrive
        self.assertNoResult(done)
        again = yield connect_client(self.reactor, self.endpoint(), session=pub.session
                                     ).addTimeout(TIMEOUT, self.reactor)
        self.addCleanup(self._close, again)
        self.assertTrue(again.connack.session_present)
        code = yield self.wait(done)
        self.assertEqual(code, 0)
        message = yield self.wait(queue.get())
        self.assertEqual((message.topic, message.payload), ("resend/t", b"again"))
        yield self.wait(again.disconnect())
        clean = yield self.client("resend-pub")  # clean start: the session goes
        self.assertFalse(clean.connack.session_present)

    @inlineCallbacks
    def test_bad_credentials(self) -> Any:
        """A wrong password fails connect() with ConnectError carrying the broker's code,
        in v3.1.1 and v5."""
        for version, code in zip((4, 5), self.bad_password_codes, strict=True):
            d = connect_client(self.reactor, self.endpoint(), f"bad-v{version}",
                               version=version, username=USER, password="wrong")
            error = yield self.assertFailure(self.wait(d), ConnectError)
            self.assertEqual(error.reason_code, code, f"v{version}")


class OurBrokerClientTests(ClientTestsMixin, TestCase):
    """The client against our broker (in this process, on an ephemeral port)."""

    bad_password_codes = (4, 0x86)

    @inlineCallbacks
    def setUp(self) -> Any:
        directory = tempfile.mkdtemp(prefix="client-e2e-")
        self.addCleanup(shutil.rmtree, directory, True)
        authenticator = PasswordFileAuthenticator.from_file(
            write_passwd(directory), reactor=self.reactor)
        self.service, self.port = yield start_broker(self.reactor,
                                                     authenticator=authenticator)
        self.addCleanup(stop_broker, self.service)
        # Extra listeners on the same factory: a unix socket and TLS (no client
        # certificate requested: Twisted's ssl: server string cannot ask for one).
        self.socket_path = os.path.join(directory, "mqtt.sock")
        unix = yield UNIXServerEndpoint(self.reactor, self.socket_path).listen(
            self.service.test_factory)
        self.addCleanup(unix.stopListening)
        self.make_certificates(directory)
        tls = yield serverFromString(
            self.reactor, f"ssl:0:interface=127.0.0.1:privateKey={self.server_cert.key_path}:"
            f"certKey={self.server_cert.cert_path}").listen(self.service.test_factory)
        self.addCleanup(tls.stopListening)
        self.tls_port = tls.getHost().port


class MosquittoClientTests(ClientTestsMixin, TestCase):
    """The same tests against a real Mosquitto process."""

    # Mosquitto 2.0.11 answers a wrong password with "not authorized" (5, 0x87).
    bad_password_codes = (5, 0x87)

    @inlineCallbacks
    def setUp(self) -> Any:
        if not os.access(MOSQUITTO, os.X_OK):
            raise SkipTest("mosquitto is not installed (scripts/test installs it)")
        directory = tempfile.mkdtemp(prefix="client-mosquitto-")
        self.addCleanup(shutil.rmtree, directory, True)
        passwd = write_passwd(directory)
        self.port, self.tls_port = free_port(), free_port()
        self.socket_path = os.path.join(directory, "mqtt.sock")
        self.make_certificates(directory)
        conf = Path(directory) / "mosquitto.conf"
        # Run as root, Mosquitto switches to user "mosquitto", who cannot read our
        # temporary directory: stay root then.
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"{user}listener {self.port} 127.0.0.1\nallow_anonymous false\n"
                        f"password_file {passwd}\npersistence false\n"
                        f"listener 0 {self.socket_path}\n"
                        f"listener {self.tls_port} 127.0.0.1\ncafile {self.ca.cert_path}\n"
                        f"certfile {self.server_cert.cert_path}\n"
                        f"keyfile {self.server_cert.key_path}\nrequire_certificate true\n")
        process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], cwd=directory,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(self._stop, process)
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.tls_port)) == 0:
                    return
            yield deferLater(self.reactor, 0.05, lambda: None)
        self.fail(f"mosquitto did not listen on {self.port}")

    def _stop(self, process: subprocess.Popen) -> None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
