"""CoAP listener limits with real sockets: the observations one source address may
hold (``maxObservationsPerAddress``, over all its ports and client ids), and the CON
notifications a client id may have unacknowledged (``nstart``, RFC 7252 §4.7)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from mqtt_twisted.coap import message as m

try:
    from tests.coapbroker import CoapBrokerTestCase, request
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from coapbroker import CoapBrokerTestCase, request  # type: ignore[no-redef]


class PerAddressTests(CoapBrokerTestCase):
    coap_keys = {"maxObservationsPerAddress": "3", "maxObservations": "2"}

    @inlineCallbacks
    def ask(self, client: Any, data: bytes) -> Any:
        client.transport.write(data)
        answer = yield self.next(client)
        return m.code_text(answer.code), answer.payload

    @inlineCallbacks
    def test_observations_per_address(self) -> Any:
        """Two sockets of one host, two client ids: three observations in all, the
        fourth is 5.03 naming the limit; a re-registration is not a new one; a DELETE
        frees a place; the count goes back to nothing when the sessions end."""
        one, two = self.udp(), self.udp()
        for client, cid, topic, mid in ((one, "c1", "a", 1), (one, "c1", "b", 2),
                                        (two, "c2", "c", 3)):
            code, _ = yield self.ask(client, request(m.GET, f"/ps/{topic}", f"clientid={cid}",
                                                     mid=mid, observe=0))
            self.assertEqual(code, "2.05")
        code, why = yield self.ask(two, request(m.GET, "/ps/d", "clientid=c2", mid=4,
                                                observe=0))
        self.assertEqual((code, why), ("5.03", b"address 127.0.0.1 holds 3 observations "
                                               b"already"))
        self.assertEqual(set(self.broker.sessions["c2"].subscriptions), {"c"})
        code, _ = yield self.ask(two, request(m.GET, "/ps/c", "clientid=c2", mid=5,
                                              token=b"t2", observe=0))
        self.assertEqual(code, "2.05")  # the same observation again
        self.assertEqual(self.server.requests.per_address, {"127.0.0.1": 3})
        code, _ = yield self.ask(one, request(m.DELETE, "/ps/a", "clientid=c1", mid=6))
        self.assertEqual(code, "2.02")
        code, _ = yield self.ask(two, request(m.GET, "/ps/d", "clientid=c2", mid=7,
                                              observe=0))
        self.assertEqual(code, "2.05")
        for client, cid, topic, mid in ((one, "c1", "b", 8), (two, "c2", "c", 9),
                                        (two, "c2", "d", 10)):
            code, _ = yield self.ask(client, request(m.DELETE, f"/ps/{topic}",
                                                     f"clientid={cid}", mid=mid))
            self.assertEqual(code, "2.02")
        yield self.wait_until(lambda: not self.broker.sessions.keys() & {"c1", "c2"})
        self.assertEqual(self.server.requests.per_address, {})

    @inlineCallbacks
    def test_takeover_releases_the_count(self) -> Any:
        """Observations that end with their session (an MQTT client takes the client id
        over) free their address's places."""
        client = self.udp()
        for mid, topic in enumerate("xyz"):
            cid = "t1" if topic != "z" else "t2"
            code, _ = yield self.ask(client, request(m.GET, f"/ps/{topic}", f"clientid={cid}",
                                                     mid=mid, observe=0))
            self.assertEqual(code, "2.05")
        yield self.paho("t1")
        yield self.wait_until(lambda: self.server.requests.per_address == {"127.0.0.1": 1})


class WindowTests(CoapBrokerTestCase):
    """CON notifications wait for their ACKs, at most ``nstart`` at a time; the broker
    queues the rest for the session and sends them, in order, none lost, as ACKs
    come."""

    @inlineCallbacks
    def test_window(self) -> Any:
        window = self.server.requests.config.nstart
        self.assertEqual(window, int(self.coap_keys.get("nstart", "1")))
        self.server.retransmitter.ack_timeout = 30.0  # no resends during the test
        client = self.udp()
        client.transport.write(request(m.GET, "/ps/w", "clientid=slow", "qos=1", token=b"W",
                                       observe=0))
        yield self.next(client)
        pub = yield self.paho("pub")
        total = window + 24
        for n in range(total):
            yield pub.publish("w", b"%d" % n, 1)
        first = []
        for _ in range(window):
            first.append((yield self.next(client)))
        yield self.nothing(client, 0.3)  # the window is full
        payloads = [note.payload for note in first]
        while len(payloads) < total:
            for note in first:
                client.transport.write(m.encode(m.CoapMessage(m.ACK, m.EMPTY, note.mid)))
            first = [(yield self.next(client))]
            while client.received.pending:
                first.append((yield self.next(client)))
            self.assertLessEqual(len(first), window)
            payloads += [note.payload for note in first]
        self.assertEqual(payloads, [b"%d" % n for n in range(total)])


class WiderWindowTests(WindowTests):
    coap_keys = {"nstart": "8"}
