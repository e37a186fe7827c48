"""CoAP over DTLS (``coaps://``; ``coap=udp:...:dtlsKey=...:dtlsCert=...``) with libcoap's
OpenSSL client checking the listener's certificate: a publish reaching paho, 50 KiB in
Block1 pieces, a notification; plain CoAP on the DTLS port gets nothing and leaves no
state; key files that do not work are a one-line error."""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.adapters.listener import parse_listener
from mqtt_twisted.plugins.coap import coapAdapter

try:
    from tests.certs import CA
    from tests.coapbroker import CoapBrokerTestCase, request
    from tests.pahoclient import with_timeout
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from certs import CA  # type: ignore[no-redef]
    from coapbroker import CoapBrokerTestCase, request  # type: ignore[no-redef]
    from pahoclient import with_timeout  # type: ignore[no-redef]

OPENSSL_CLIENT = shutil.which("coap-client-openssl")
BIG = os.urandom(25600).hex().encode()


class DtlsTests(CoapBrokerTestCase):
    skip = None if OPENSSL_CLIENT else "coap-client-openssl is not installed (libcoap3-bin)"

    def setUp(self) -> Any:
        directory = self.mktemp()
        os.makedirs(directory)
        self.ca = CA(directory)
        server = self.ca.issue("localhost", server=True)
        self.coap_keys = {"dtlsKey": server.key_path, "dtlsCert": server.cert_path}
        return super().setUp()

    @inlineCallbacks
    def coaps(self, *args: str) -> Any:
        out, err, code = yield with_timeout(getProcessOutputAndValue(
            OPENSSL_CLIENT, ["-B", "10", "-R", self.ca.cert_path, *args],
            reactor=self.reactor), self.reactor, 20)
        return out, err, code

    def coaps_url(self, path: str) -> str:
        return f"coaps://127.0.0.1:{self.coap_port}{path}"

    @inlineCallbacks
    def test_publish_block1_and_observe(self) -> Any:
        sub = yield self.paho("sub")
        yield sub.subscribe(("sealed/#", 1))
        _, err, code = yield self.coaps("-m", "post", "-e", "hello",
                                        self.coaps_url("/ps/sealed/a?qos=1"))
        self.assertEqual(code, 0, err)
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("sealed/a", b"hello"))
        big = self.mktemp()
        with open(big, "wb") as f:
            f.write(BIG)
        _, err, code = yield self.coaps("-m", "post", "-b", "1024", "-f", big,
                                        self.coaps_url("/ps/sealed/big?qos=1"))
        self.assertEqual(code, 0, err)
        message = yield sub.next_message()
        self.assertEqual(message.payload, BIG)
        observer = self.spawn(OPENSSL_CLIENT, ["-B", "10", "-R", self.ca.cert_path, "-s", "3",
                                               "-m", "get", self.coaps_url("/ps/sealed/o")])
        yield self.wait_until(lambda: any(c.startswith("coap-")
                                          for c in self.broker.sessions))
        pub = yield self.paho("pub")
        yield pub.publish("sealed/o", b"note", 0)
        code = yield with_timeout(observer.ended, self.reactor, 20)
        self.assertEqual((code, observer.out.strip()), (0, b"note"), observer.err)

    @inlineCallbacks
    def test_plain_coap_gets_nothing(self) -> Any:
        dtls = self.coap_listener.protocol
        client = self.udp()
        client.transport.write(request(1, "/ps/a"))
        yield self.nothing(client, 0.5)
        self.assertEqual(len(dtls.peers), 0)


class DtlsKeyTests(SynchronousTestCase):
    def test_bad_files_are_one_line_errors(self) -> None:
        from mqtt_twisted.adapters.kit import check_listener

        for keys, expected in ((":dtlsKey=/nonexistent:dtlsCert=/nonexistent", "dtls"),
                               (":dtlsKey=/nonexistent", "go together")):
            settings = parse_listener(f"coap=udp:5684{keys}", "mqtt",
                                      {"coap": coapAdapter.options})
            e = self.assertRaises(ValueError, check_listener, coapAdapter, settings)
            self.assertIn(expected, str(e))
            self.assertNotIn("\n", str(e))
