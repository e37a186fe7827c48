"""MQTT over TLS: server certificates, client certificates and their identity, reload.

Real sockets and real peers (paho-mqtt, Python's ``ssl``, twistd); certificates
are made in each test by a CA of its own (``tests/certs.py``).
"""

from __future__ import annotations

import os
import socket
import ssl
import warnings
from typing import Any

from cryptography import x509
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mqtt_twisted.adapters import tls
from mqtt_twisted.codec import Connect, encode
from mqtt_twisted.errors import AuthenticationError
from mqtt_twisted.interfaces import IAuthenticator
from tests.certs import CA, replace_file, temp_dir
from tests.securebroker import SecureBrokerTestCase


def ssl_listener(server: Any, *keys: str, adapter: str = "mqtt") -> str:
    """``--listen`` value of a TLS listener on an ephemeral loopback port."""
    value = (f"{adapter}=ssl:0:interface=127.0.0.1:privateKey={server.key_path}"
             f":certKey={server.cert_path}")
    return ":".join([value, *keys])


@implementer(IAuthenticator)
class RecordingAuthenticator:
    """Lets in clients whose user name is in ``allowed``; remembers every Credentials."""

    def __init__(self, *allowed: str) -> None:
        self.allowed = set(allowed)
        self.seen: list[Any] = []

    def authenticate(self, credentials: Any) -> Any:
        from twisted.internet.defer import fail, succeed

        self.seen.append(credentials)
        if credentials.username in self.allowed:
            return succeed(credentials.username)
        return fail(AuthenticationError(f"{credentials.username!r} not allowed"))


def tls_exchange(port: int, ca: str, cert: str | None = None, key: str | None = None,
                 maximum: ssl.TLSVersion | None = None) -> tuple[bytes, str | None]:
    """(blocking) Handshake, send a CONNECT, read the answer; returns (bytes read, the
    server certificate's CN).  Raises ssl.SSLError / OSError when the server refuses."""
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    if maximum is not None:
        if maximum < ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client really offer TLS 1.1
            ctx.minimum_version = maximum
        ctx.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        der = sock.getpeercert(binary_form=True)
        name = tls.identity_of(x509.load_der_x509_certificate(der), "cn")
        sock.sendall(encode(Connect("raw-tls", 4, True, 0)))
        data = b""
        while len(data) < 4:
            chunk = sock.recv(4 - len(data))
            if not chunk:
                break
            data += chunk
        return data, name


def refused_then_garbage(port: int, ca: str) -> tuple[bytes, str, bytes]:
    """(blocking) A CONNECT the broker refuses, then: how the server ended TLS
    ('close_notify', or 'eof' for a bare TCP FIN), and what it does with non-TLS bytes
    sent after that (b'': it closed)."""
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost",
                            suppress_ragged_eofs=False) as sock:
        sock.sendall(encode(Connect("refused", 4, True, 0)))
        connack = b""
        while len(connack) < 4:
            chunk = sock.recv(4 - len(connack))
            if not chunk:
                break
            connack += chunk
        try:
            ending = "close_notify" if sock.recv(16) == b"" else "data"
        except ssl.SSLEOFError:
            ending = "eof"
        # Bytes that are no TLS record, on the socket under TLS: they make the server's
        # OpenSSL fail, and Twisted then closes the TCP connection.
        fd = sock.fileno()
        try:
            os.write(fd, b"\x00" * 16)
            after = os.read(fd, 64)
        except OSError:
            after = b""
        return connack, ending, after


def paho_attempt(port: int, ca: str, cert: str | None = None, key: str | None = None) -> str:
    """(blocking) One paho connection attempt over TLS: 'CONNACK <rc>', 'handshake: <error>'
    or 'lost: <paho error>'."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attempt",
                         reconnect_on_failure=False)
    client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    result: list[int] = []
    client.on_connect = lambda c, u, flags, rc, props: result.append(int(rc.value))
    try:
        client.connect("127.0.0.1", port, keepalive=10)
    except (ssl.SSLError, OSError) as e:
        return f"handshake: {e}"
    try:
        for _ in range(100):
            rc = client.loop(timeout=0.05)
            if result:
                return f"CONNACK {result[0]}"
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return f"lost: {mqtt.error_string(rc)}"
        return "no answer"
    finally:
        client.disconnect()
        sock = client.socket()
        if sock is not None:
            sock.close()


class TLSListenerTests(SecureBrokerTestCase):
    """paho-mqtt and Python's ssl against the mqtt adapter on ssl: endpoints."""

    def setUp(self) -> None:
        super().setUp()
        self.dir = temp_dir(self)
        self.ca = CA(self.dir)
        self.server = self.ca.issue("broker", server=True)

    @inlineCallbacks
    def test_paho_over_tls_without_client_certificate(self) -> None:
        """paho verifies the broker's certificate against the test CA and publishes/receives."""
        (port,) = yield self.start(ssl_listener(self.server))
        sub = yield self.paho(port, "sub", ca=self.ca.cert_path)
        self.assertEqual((yield sub.subscribe(("t/#", 1))), [1])
        pub = yield self.paho(port, "pub", ca=self.ca.cert_path)
        yield pub.publish("t/x", b"secret", 1)
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("t/x", b"secret"))


    @inlineCallbacks
    def test_refused_connect_ends_tls_with_close_notify(self) -> None:
        """A CONNECT refused over TLS ends with a TLS close_notify, not a bare FIN under
        TLS; bytes the client sends after it close the connection without an error.

        Twisted's TLS wrapper declares the interfaces of the TCP transport under it, so
        it looked half-closeable: the close shut the TCP write side under TLS, and the
        client's next bytes made Twisted close the TLS layer in the middle of
        ``_flushReceiveBIO`` ("Unhandled Error ... 'NoneType' object has no attribute
        'bio_read'", tests/test_config_twistd.py one run in three)."""
        auth = RecordingAuthenticator("alice")
        (port,) = yield self.start(ssl_listener(self.server), authenticator=auth)
        connack, ending, after = yield deferToThread(refused_then_garbage, port,
                                                     self.ca.cert_path)
        self.assertEqual(connack, b"\x20\x02\x00\x04")  # bad user name or password
        self.assertEqual(ending, "close_notify")
        self.assertEqual(after, b"")
        # (trial fails the test on the "Unhandled Error" the broker would log)

    @inlineCallbacks
    def test_tls_1_1_refused(self) -> None:
        """A client that offers TLS 1.1 at most fails the handshake: TLS 1.2 is the minimum."""
        (port,) = yield self.start(ssl_listener(self.server))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 is
            old = ssl.TLSVersion.TLSv1_1
        error = yield self.assertFailure(
            deferToThread(tls_exchange, port, self.ca.cert_path, maximum=old), ssl.SSLError)
        # The server's alert, not the client's own refusal to offer TLS 1.1.
        self.assertIn("PROTOCOL_VERSION", str(error))
        self.flushWarnings()  # Python's about setting TLS 1.1 on the client's context

    @inlineCallbacks
    def test_tls_minimum_1_3(self) -> None:
        """tlsMinimum=1.3 refuses a TLS 1.2 client and serves a TLS 1.3 one."""
        (port,) = yield self.start(ssl_listener(self.server, "tlsMinimum=1.3"))
        d = deferToThread(tls_exchange, port, self.ca.cert_path,
                          maximum=ssl.TLSVersion.TLSv1_2)
        yield self.assertFailure(d, ssl.SSLError, OSError)
        data, _ = yield deferToThread(tls_exchange, port, self.ca.cert_path)
        self.assertEqual(data, b"\x20\x02\x00\x00")  # CONNACK accepted

    @inlineCallbacks
    def test_client_certificate_identity_reaches_authenticator(self) -> None:
        """clientCerts=required: paho with a client certificate connects; the authenticator
        sees its CN as Credentials.certificateIdentity."""
        auth = RecordingAuthenticator("alice")
        client = self.ca.issue("device-7")
        (port,) = yield self.start(
            ssl_listener(self.server, f"caCerts={self.ca.cert_path}", "clientCerts=required"),
            authenticator=auth)
        yield self.paho(port, "c1", ca=self.ca.cert_path, cert=client.cert_path,
                        key=client.key_path, username="alice", password="pw")
        self.assertEqual([c.certificateIdentity for c in auth.seen], ["device-7"])
        self.assertEqual(auth.seen[0].username, "alice")

    @inlineCallbacks
    def test_required_client_certificate_refuses_client_without_one(self) -> None:
        """clientCerts=required: paho with no client certificate is refused in (TLS 1.2) or
        right after (TLS 1.3) the handshake, and never gets a CONNACK."""
        (port,) = yield self.start(
            ssl_listener(self.server, f"caCerts={self.ca.cert_path}", "clientCerts=required"))
        outcome = yield deferToThread(paho_attempt, port, self.ca.cert_path)
        self.assertTrue(outcome.startswith(("handshake", "lost")), outcome)
        client = self.ca.issue("ok")
        outcome = yield deferToThread(paho_attempt, port, self.ca.cert_path,
                                      client.cert_path, client.key_path)
        self.assertEqual(outcome, "CONNACK 0")

    @inlineCallbacks
    def test_client_certificate_from_another_ca_refused(self) -> None:
        """A client certificate signed by a CA not in caCerts fails the handshake."""
        other = CA(self.dir, "Other CA").issue("mallory")
        (port,) = yield self.start(
            ssl_listener(self.server, f"caCerts={self.ca.cert_path}", "clientCerts=optional"))
        try:
            data, _ = yield deferToThread(tls_exchange, port, self.ca.cert_path,
                                          other.cert_path, other.key_path)
        except (ssl.SSLError, OSError):
            data = b""
        self.assertEqual(data, b"")

    @inlineCallbacks
    def test_optional_client_certificate(self) -> None:
        """clientCerts=optional: clients with and without a certificate connect; only the
        first has a certificate identity."""
        auth = RecordingAuthenticator("u")
        client = self.ca.issue("sensor-1")
        (port,) = yield self.start(
            ssl_listener(self.server, f"caCerts={self.ca.cert_path}", "clientCerts=optional"),
            authenticator=auth)
        yield self.paho(port, "with", ca=self.ca.cert_path, cert=client.cert_path,
                        key=client.key_path, username="u")
        yield self.paho(port, "without", ca=self.ca.cert_path, username="u")
        self.assertEqual([c.certificateIdentity for c in auth.seen], ["sensor-1", None])

    @inlineCallbacks
    def test_identity_as_username(self) -> None:
        """identityAsUsername=yes: the certificate's identity replaces the CONNECT user name."""
        auth = RecordingAuthenticator("sensor-2")
        client = self.ca.issue("sensor-2")
        (port,) = yield self.start(
            ssl_listener(self.server, f"caCerts={self.ca.cert_path}", "identityAsUsername=yes"),
            authenticator=auth)
        yield self.paho(port, "c", ca=self.ca.cert_path, cert=client.cert_path,
                        key=client.key_path, username="someone-else")
        self.assertEqual(auth.seen[0].username, "sensor-2")

    @inlineCallbacks
    def test_identity_field_san_email(self) -> None:
        """certIdentity=san-email offers the certificate's first e-mail SAN."""
        auth = RecordingAuthenticator("u")
        client = self.ca.issue("x", emails=("ops@example.com",))
        (port,) = yield self.start(
            ssl_listener(self.server, f"caCerts={self.ca.cert_path}", "certIdentity=san-email"),
            authenticator=auth)
        yield self.paho(port, "c", ca=self.ca.cert_path, cert=client.cert_path,
                        key=client.key_path, username="u")
        self.assertEqual(auth.seen[0].certificateIdentity, "ops@example.com")

    @inlineCallbacks
    def test_reload_in_process(self) -> None:
        """BrokerService.reload() after the files are replaced: new connections get the new
        certificate, a connection opened before keeps working."""
        (port,) = yield self.start(ssl_listener(self.server))
        before = yield self.paho(port, "before", ca=self.ca.cert_path)
        _, name = yield deferToThread(tls_exchange, port, self.ca.cert_path)
        self.assertEqual(name, "broker")
        renewed = self.ca.issue("broker-renewed", server=True)
        replace_file(renewed.cert_path, self.server.cert_path)
        replace_file(renewed.key_path, self.server.key_path)
        _, name = yield deferToThread(tls_exchange, port, self.ca.cert_path)
        self.assertEqual(name, "broker")  # not re-read until told
        self.service.reload()
        _, name = yield deferToThread(tls_exchange, port, self.ca.cert_path)
        self.assertEqual(name, "broker-renewed")
        self.assertEqual((yield before.subscribe(("still/here", 0))), [0])

    @inlineCallbacks
    def test_reload_of_a_broken_pair_keeps_the_old_one(self) -> None:
        """A reload that reads a key not matching the certificate keeps the old pair."""
        (port,) = yield self.start(ssl_listener(self.server))
        other = self.ca.issue("other", server=True)
        replace_file(other.key_path, self.server.key_path)  # the key only: a mismatch
        self.service.reload()
        data, name = yield deferToThread(tls_exchange, port, self.ca.cert_path)
        self.assertEqual((data, name), (b"\x20\x02\x00\x00", "broker"))


class TLSConfigTests(SynchronousTestCase):
    """Parsing and checking of TLS listener keys, without sockets."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.ca = CA(self.dir)
        self.server = self.ca.issue("broker", server=True)

    def test_ssl_becomes_tcp(self) -> None:
        """ssl:PORT with files becomes tcp:PORT (interface, backlog kept) and a TLSConfig."""
        config, plain = tls.parse_tls(
            f"ssl:8883:interface=127.0.0.1:privateKey={self.server.key_path}:"
            f"certKey={self.server.cert_path}:backlog=7", {})
        self.assertEqual(plain, "tcp:8883:interface=127.0.0.1:backlog=7")
        assert config is not None
        self.assertEqual((config.privateKey, config.certKey, config.clientCerts,
                          config.tlsMinimum), (self.server.key_path, self.server.cert_path,
                                               "none", "1.2"))

    def test_plain_endpoint_untouched(self) -> None:
        """A tcp: endpoint has no TLS configuration."""
        self.assertEqual(tls.parse_tls("tcp:1883", {}), (None, "tcp:1883"))

    def test_tls_keys_need_ssl(self) -> None:
        """TLS keys on a tcp: endpoint are an error naming them."""
        e = self.assertRaises(ValueError, tls.parse_tls, "tcp:1883", {"caCerts": "ca.pem"})
        self.assertIn("caCerts need an ssl: endpoint", str(e))

    def test_ca_certs_alone_require_certificates(self) -> None:
        """caCerts without clientCerts means required (fail closed)."""
        config, _ = tls.parse_tls(f"ssl:1:privateKey={self.server.key_path}",
                                  {"caCerts": self.ca.cert_path})
        assert config is not None
        self.assertEqual(config.clientCerts, "required")

    def test_bad_values(self) -> None:
        """Bad clientCerts, certIdentity, tlsMinimum and identityAsUsername values name the key."""
        base = f"ssl:1:privateKey={self.server.key_path}"
        for extra, text in (({"clientCerts": "maybe"}, "clientCerts='maybe'"),
                            ({"clientCerts": "required"}, "needs caCerts"),
                            ({"certIdentity": "ou"}, "certIdentity='ou'"),
                            ({"tlsMinimum": "1.0"}, "tlsMinimum='1.0'"),
                            ({"identityAsUsername": "perhaps"}, "expected yes or no")):
            e = self.assertRaises(ValueError, tls.parse_tls, base, extra)
            self.assertIn(text, str(e))

    def test_unsupported_twisted_keys(self) -> None:
        """sslmethod= and caCertsDir= point to our own keys."""
        e = self.assertRaises(ValueError, tls.parse_tls, "ssl:1:sslmethod=TLSv1_METHOD", {})
        self.assertIn("tlsMinimum", str(e))

    def test_missing_file(self) -> None:
        """A missing certificate file is a ValueError naming it."""
        e = self.assertRaises(ValueError, tls.check_tls,
                              f"ssl:1:privateKey={self.server.key_path}:certKey=/nonexistent",
                              {})
        self.assertIn("/nonexistent", str(e))

    def test_mismatched_key(self) -> None:
        """A key that does not belong to the certificate is a ValueError naming both files."""
        other = self.ca.issue("other", server=True)
        e = self.assertRaises(ValueError, tls.check_tls,
                              f"ssl:1:privateKey={other.key_path}:"
                              f"certKey={self.server.cert_path}", {})
        self.assertIn("does not belong", str(e))

    def test_full_chain_in_cert_file(self) -> None:
        """A certificate file holding the leaf and its chain is accepted."""
        chain = self.server.cert_path + ".chain"
        with open(chain, "wb") as f:
            f.write(open(self.server.cert_path, "rb").read() + open(self.ca.cert_path, "rb").read())
        tls.check_tls(f"ssl:1:privateKey={self.server.key_path}:certKey={chain}", {})

    def test_identity_fields(self) -> None:
        """identity_of reads cn, dn, the SANs and the SHA-256 fingerprint."""
        cert = self.ca.issue("dev", dns=("dev.example",), emails=("a@example.com",),
                             uris=("spiffe://example/dev",)).cert
        self.assertEqual(tls.identity_of(cert, "cn"), "dev")
        self.assertEqual(tls.identity_of(cert, "dn"), "CN=dev,O=mqtt-twisted tests")
        self.assertEqual(tls.identity_of(cert, "san-dns"), "dev.example")
        self.assertEqual(tls.identity_of(cert, "san-email"), "a@example.com")
        self.assertEqual(tls.identity_of(cert, "san-uri"), "spiffe://example/dev")
        self.assertEqual(len(tls.identity_of(cert, "sha256") or ""), 64)
        self.assertIsNone(tls.identity_of(self.ca.cert, "san-dns"))


class TLSUsageErrorTests(SynchronousTestCase):
    """twistd mqttbroker refuses TLS listeners it cannot serve before anything starts."""

    def setUp(self) -> None:
        self.dir = temp_dir(self)
        self.ca = CA(self.dir)
        self.server = self.ca.issue("broker", server=True)

    def usage_error(self, listen: str) -> str:
        from twisted.python import usage

        from mqtt_twisted.tap import Options

        e = self.assertRaises(usage.UsageError, Options().parseOptions, ["--listen", listen])
        return str(e)

    def test_missing_ca_file(self) -> None:
        """A caCerts file that does not exist is a usage error naming it."""
        message = self.usage_error(f"ssl:8883:privateKey={self.server.key_path}:"
                                   f"certKey={self.server.cert_path}:caCerts=/no/ca.pem")
        self.assertIn("/no/ca.pem", message)

    def test_key_of_another_certificate(self) -> None:
        """A key that does not belong to the certificate is a usage error."""
        other = self.ca.issue("other", server=True)
        message = self.usage_error(f"ws=ssl:8443:privateKey={other.key_path}:"
                                   f"certKey={self.server.cert_path}")
        # Twisted's own ssl: parser sees it first ("... do not match").
        self.assertRegex(message, "do not match|does not belong")

    def test_tls_keys_on_tcp(self) -> None:
        """clientCerts on a tcp: listener is a usage error."""
        self.assertIn("need an ssl: endpoint", self.usage_error("tcp:1883:clientCerts=required"))


class SighupTests(SecureBrokerTestCase):
    """The real twistd mqttbroker re-reads its certificate on SIGHUP."""

    timeout = 60

    @inlineCallbacks
    def test_certificate_swap_and_sighup(self) -> None:
        """Files replaced, then SIGHUP to twistd: new connections get the new certificate, a
        paho client connected before keeps publishing and receiving."""
        import os
        import sys
        from pathlib import Path

        from tests.securebroker import SecurePaho, spawn, within

        directory = temp_dir(self)
        ca = CA(directory)
        server = ca.issue("broker", server=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        root = Path(__file__).resolve().parent.parent
        twistd = Path(sys.executable).with_name("twistd")
        command = [str(twistd)] if twistd.exists() else [
            sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
            "from twisted.scripts.twistd import run; run()"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
        broker = spawn(self, self.reactor, [
            *command, "-n", "--pidfile=", "mqttbroker", "--listen",
            f"ssl:{port}:interface=127.0.0.1:privateKey={server.key_path}"
            f":certKey={server.cert_path}"], env=env, path=directory)
        yield within(broker.seen("Listening: mqtt=ssl"), self.reactor, 20,
                     f"twistd to listen:\n{broker.text}")

        before = SecurePaho(self.reactor, port, "before", ca=ca.cert_path)
        self.addCleanup(before.stop)
        self.assertEqual((yield before.connect()).rc, 0)
        _, name = yield deferToThread(tls_exchange, port, ca.cert_path)
        self.assertEqual(name, "broker")

        renewed = ca.issue("broker-renewed", server=True)
        replace_file(renewed.cert_path, server.cert_path)
        replace_file(renewed.key_path, server.key_path)
        broker.transport.signalProcess("HUP")
        yield within(broker.seen("TLS certificate reloaded"), self.reactor, 10,
                     f"the reload:\n{broker.text}")
        _, name = yield deferToThread(tls_exchange, port, ca.cert_path)
        self.assertEqual(name, "broker-renewed")

        yield before.subscribe(("after/reload", 1))
        yield before.publish("after/reload", b"still here", 1)
        message = yield before.next_message()
        self.assertEqual(message.payload, b"still here")
        yield before.disconnect()

        broker.transport.signalProcess("TERM")
        yield within(broker.ended, self.reactor, 10, "twistd to exit")
        self.assertNotIn("Traceback", broker.text)
