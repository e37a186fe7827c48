"""``twistd mqttbroker --listen coap=udp:...`` in a real child process: the CoAP adapter
is found as a plugin, libcoap publishes through it to an MQTT subscriber, and the
broker stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue

try:
    from tests.coapbroker import COAP_CLIENT, NO_LIBCOAP
    from tests.pahoclient import PahoClient, with_timeout
    from tests.redisserver import free_port
    from tests.test_twistd_run import TwistdTestCase, _listen
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from coapbroker import COAP_CLIENT, NO_LIBCOAP  # type: ignore[no-redef]
    from pahoclient import PahoClient, with_timeout  # type: ignore[no-redef]
    from redisserver import free_port  # type: ignore[no-redef]
    from test_twistd_run import TwistdTestCase, _listen  # type: ignore[no-redef]


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwistdCoapTests(TwistdTestCase):
    skip = NO_LIBCOAP

    @defer.inlineCallbacks
    def test_coap_listeners_in_twistd(self) -> Any:
        mqtt_port, udp_port, tcp_port = free_port(), free_udp_port(), free_port()
        broker = self.twistd("-n", "--pidfile=", "mqttbroker", "--listen", _listen(mqtt_port),
                             "--listen", f"coap=udp:{udp_port}:interface=127.0.0.1",
                             "--listen", f"coap=tcp:{tcp_port}:interface=127.0.0.1")
        yield self.wait_for_port(tcp_port, broker)
        sub = PahoClient(self.reactor, mqtt_port, "sub")
        self.addCleanup(sub.stop)
        yield sub.connect()
        yield sub.subscribe(("dev/#", 1))
        for scheme, port in (("coap", udp_port), ("coap+tcp", tcp_port)):
            _, err, code = yield with_timeout(getProcessOutputAndValue(
                COAP_CLIENT, ["-B", "10", "-m", "post", "-e", scheme,
                              f"{scheme}://127.0.0.1:{port}/ps/dev/x?qos=1"],
                reactor=self.reactor), self.reactor, 20)
            self.assertEqual(code, 0, err)
            message = yield sub.next_message()
            self.assertEqual((message.topic, message.payload), ("dev/x", scheme.encode()))
        self.assertIn("Listening: coap=udp:", broker.text)
        broker.transport.signalProcess(signal.SIGTERM)  # type: ignore[attr-defined]
        yield self.ended(broker)  # (twistd ends by the signal it was sent: no exit code)
        self.assertIn("Server Shut Down.", broker.text)
        self.assertNotIn("Traceback", broker.text)
