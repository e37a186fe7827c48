"""CoAP over TCP (RFC 8323, ``--listen coap=tcp:...``): the framing without I/O (vectors,
every length form, cut anywhere, hypothesis round trips, fuzzing), then libcoap's
``coap+tcp://`` client and aiocoap against a real broker, and a raw TCP socket for CSM,
Ping/Pong and Abort.
"""

from __future__ import annotations

import os
import random
import sys
import textwrap
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import tcp
from mqtt_twisted.coap.message import CoapFormatError, CoapMessage
from mqtt_twisted.coap.options import Block

try:
    from tests.coapbroker import COAP_CLIENT, NO_AIOCOAP, NO_LIBCOAP, CoapBrokerTestCase
    from tests.pahoclient import with_timeout
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from coapbroker import (  # type: ignore[no-redef]
        COAP_CLIENT,
        NO_AIOCOAP,
        NO_LIBCOAP,
        CoapBrokerTestCase,
    )
    from pahoclient import with_timeout  # type: ignore[no-redef]


def msg(code: int, token: bytes = b"", options: list[tuple[int, bytes]] | None = None,
        payload: bytes = b"") -> CoapMessage:
    return CoapMessage(m.CON, code, 0, token, options or [], payload)


class FramingTests(SynchronousTestCase):
    def test_vectors(self) -> None:
        # RFC 8323 figure 3/4 forms: Len nibble, TKL, code, token, options, payload.
        self.assertEqual(tcp.encode(msg(tcp.CSM)), bytes.fromhex("00e1"))
        self.assertEqual(tcp.encode(msg(m.GET, b"\x01", [(11, b"ps")])),
                         bytes.fromhex("31 01 01 b2") + b"ps")
        for size, head in ((12, "c0"), (13, "d000"), (268, "d0ff"), (269, "e00000"),
                           (65804, "e0ffff"), (65805, "f000000000")):
            data = tcp.encode(msg(m.POST, b"", [], b"x" * (size - 1)))
            self.assertEqual(data[:len(head) // 2].hex(), head, size)
            self.assertEqual(tcp.StreamDecoder(1 << 20).feed(data),
                             [msg(m.POST, b"", [], b"x" * (size - 1))])

    def test_cut_anywhere(self) -> None:
        messages = [msg(tcp.CSM, b"", [(2, b"\x04\x00")]), msg(m.GET, b"ab", [(11, b"ps")]),
                    msg(m.POST, b"c", [], b"y" * 300), msg(tcp.PING, b"p")]
        data = b"".join(tcp.encode(x) for x in messages)
        rng = random.Random(8323)
        for _ in range(50):
            decoder, out, pos = tcp.StreamDecoder(4096), [], 0
            while pos < len(data):
                step = rng.randint(1, 40)
                out += decoder.feed(data[pos:pos + step])
                pos += step
            self.assertEqual(out, messages)
            self.assertEqual(decoder.buffer, b"")

    def test_refusals(self) -> None:
        self.assertRaises(CoapFormatError, tcp.StreamDecoder(100).feed,
                          tcp.encode(msg(m.POST, b"", [], b"x" * 200)))
        # refused from the header alone: no need to wait for 200 bytes
        self.assertRaises(CoapFormatError, tcp.StreamDecoder(100).feed,
                          tcp.encode(msg(m.POST, b"", [], b"x" * 200))[:3])
        self.assertRaises(CoapFormatError, tcp.StreamDecoder(100).feed, b"\x09\x01")  # TKL 9
        self.assertRaises(CoapFormatError, tcp.StreamDecoder(100).feed, b"\x00\x20")  # 1.00
        self.assertRaises(CoapFormatError, tcp.StreamDecoder(100).feed, b"\x10\x01\xf1")

    def test_signals(self) -> None:
        csm = tcp.StreamDecoder(100).feed(tcp.encode(tcp.csm(5000)))[0]
        self.assertEqual((csm.code, csm.uint(tcp.MAX_MESSAGE_SIZE)), (tcp.CSM, 5000))
        self.assertEqual(csm.option(tcp.BLOCK_WISE_TRANSFER), b"")
        self.assertTrue(tcp.is_signal(tcp.ABORT))
        self.assertEqual(tcp.abort("why").payload, b"why")

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.builds(msg, st.one_of(st.integers(0, 31), st.integers(64, 191),
                                             st.integers(224, 255)),
                              st.binary(max_size=8),
                              st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=40)),
                                       max_size=5),
                              st.binary(max_size=400)), max_size=4))
    def test_round_trip(self, messages: list[CoapMessage]) -> None:
        for x in messages:
            x.options.sort(key=lambda o: o[0])
        data = b"".join(tcp.encode(x) for x in messages)
        self.assertEqual(tcp.StreamDecoder(1 << 16).feed(data), messages)

    @settings(max_examples=1000, deadline=None)
    @given(st.binary(max_size=80))
    def test_fuzz_only_typed_errors(self, data: bytes) -> None:
        decoder = tcp.StreamDecoder(64)
        try:
            out = decoder.feed(data)
        except CoapFormatError:
            return
        self.assertEqual(b"".join(tcp.encode(x) for x in out) + decoder.buffer, data)


class RawTCP(Protocol):
    def __init__(self) -> None:
        self.decoder = tcp.StreamDecoder(1 << 20)
        self.received: DeferredQueue[CoapMessage] = DeferredQueue()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        for x in self.decoder.feed(data):
            self.received.put(x)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def send(self, message: CoapMessage) -> None:
        self.transport.write(tcp.encode(message))


class TCPBrokerTestCase(CoapBrokerTestCase):
    transport = "tcp"

    @inlineCallbacks
    def raw(self) -> Any:
        client = RawTCP()
        yield connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.coap_port),
                              client)

        def close() -> Any:
            if not client.lost.called:
                client.transport.loseConnection()
            return client.lost

        self.addCleanup(close)
        return client

    def next(self, client: Any, timeout: float = 5) -> Deferred[CoapMessage]:
        return with_timeout(client.received.get(), self.reactor, timeout)


class RawTCPTests(TCPBrokerTestCase):
    @inlineCallbacks
    def test_csm_ping_and_requests(self) -> Any:
        client = yield self.raw()
        csm = yield self.next(client)
        self.assertEqual(csm.code, tcp.CSM)
        self.assertGreater(csm.uint(tcp.MAX_MESSAGE_SIZE), 1 << 20)
        client.send(tcp.csm(1152))
        client.send(msg(tcp.PING, b"pp"))
        pong = yield self.next(client)
        self.assertEqual((pong.code, pong.token), (tcp.PONG, b"pp"))
        request = msg(m.GET, b"g1").add(11, "ps").add(11, "none")
        client.send(request)
        answer = yield self.next(client)
        self.assertEqual((m.code_text(answer.code), answer.token), ("4.04", b"g1"))
        bad = msg(m.POST, b"g2").add(11, "ps").add(11, "x").add(9, b"")
        client.send(bad)
        answer = yield self.next(client)
        self.assertEqual((m.code_text(answer.code), answer.token), ("4.02", b"g2"))

    @inlineCallbacks
    def test_bert_block1(self) -> Any:
        """Over TCP a Block1 piece may be BERT (SZX 7, RFC 8323 §6): several 1024-byte
        units, numbered in units; the 2.31 echoes it; a BERT piece that is not a whole
        number of units is 4.00; over UDP SZX 7 stays 4.02 (tests/test_coap_codec)."""
        sub = yield self.paho("sub")
        yield sub.subscribe(("bert/#", 1))
        client = yield self.raw()
        yield self.next(client)
        client.send(tcp.csm(1 << 20))
        body = os.urandom(2048 + 2048 + 100)
        for num, more, piece in ((0, True, body[:2048]), (2, True, body[2048:4096]),
                                 (4, False, body[4096:])):
            request = msg(m.POST, b"b%d" % num).add(11, "ps").add(11, "bert").add(
                15, "qos=1").add(27, Block(num, more, 7).encode())
            request.payload = piece
            client.send(request)
            answer = yield self.next(client)
            self.assertEqual((m.code_text(answer.code), answer.token,
                              Block.decode(answer.option(27))),
                             ("2.31" if more else "2.04", b"b%d" % num, Block(num, more, 7)))
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("bert", body))
        request = msg(m.POST, b"odd").add(11, "ps").add(11, "bert").add(
            27, Block(0, True, 7).encode())
        request.payload = b"x" * 1500
        client.send(request)
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code), "4.00")

    @inlineCallbacks
    def test_no_csm_first_is_aborted(self) -> Any:
        client = yield self.raw()
        yield self.next(client)
        client.send(msg(m.GET, b"x").add(11, "ps").add(11, "a"))
        abort = yield self.next(client)
        self.assertEqual(abort.code, tcp.ABORT)
        self.assertIn(b"CSM", abort.payload)
        yield with_timeout(client.lost, self.reactor, 5)

    @inlineCallbacks
    def test_garbage_is_aborted(self) -> Any:
        client = yield self.raw()
        yield self.next(client)
        client.transport.write(b"\x0f\x01")  # TKL 15
        abort = yield self.next(client)
        self.assertEqual(abort.code, tcp.ABORT)
        yield with_timeout(client.lost, self.reactor, 5)

    @inlineCallbacks
    def test_observation_ends_with_the_connection(self) -> Any:
        client = yield self.raw()
        yield self.next(client)
        client.send(tcp.csm(1152))
        client.send(msg(m.GET, b"o").add(6, 0).add(11, "ps").add(11, "t")
                    .add(15, "clientid=tcp1"))
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code), "2.05")
        pub = yield self.paho("pub")
        yield pub.publish("t", b"over tcp", 1)
        note = yield self.next(client)
        self.assertEqual((note.token, note.payload), (b"o", b"over tcp"))
        self.assertGreater(note.uint(6), answer.uint(6))
        client.transport.loseConnection()
        yield self.wait_until(lambda: "tcp1" not in self.broker.sessions)


class LibcoapTCPTests(TCPBrokerTestCase):
    skip = NO_LIBCOAP

    @inlineCallbacks
    def test_post_get_observe(self) -> Any:
        sub = yield self.paho("sub")
        yield sub.subscribe(("tcp/#", 1))
        _, err, code = yield self.coap_client(
            "-m", "post", "-e", "hello", self.url("/ps/tcp/a?qos=1&retain=true"))
        self.assertEqual(code, 0, err)
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload, message.qos), ("tcp/a", b"hello", 1))
        out, err, code = yield self.coap_client("-m", "get", self.url("/ps/tcp/a"))
        self.assertEqual((out.strip(), code), (b"hello", 0), err)
        observer = self.spawn(COAP_CLIENT, ["-B", "10", "-s", "3", "-m", "get",
                                            self.url("/ps/tcp/%23?clientid=t1")])
        yield self.wait_until(lambda: "t1" in self.broker.sessions)
        pub = yield self.paho("pub")
        yield pub.publish("tcp/b", b"world", 0)
        code = yield with_timeout(observer.ended, self.reactor, 20)
        self.assertEqual(code, 0, observer.err)
        self.assertEqual(observer.out.replace(b"\n", b""), b"helloworld")
        yield self.wait_until(lambda: "t1" not in self.broker.sessions)


    @inlineCallbacks
    def test_each_qos_and_50_kib_both_ways(self) -> Any:
        """Over coap+tcp: a POST at each QoS reaches paho at that QoS; 50 KiB go in
        Block1 pieces to MQTT intact, and come back in Block2 pieces, as a GET answer
        and as a notification."""
        big = os.urandom(25600).hex().encode()  # 50 KiB of text (libcoap's -f wants no NULs)
        sub = yield self.paho("sub")
        yield sub.subscribe(("tq/#", 2))
        for qos in (0, 1, 2):
            _, err, code = yield self.coap_client(
                "-m", "post", "-e", f"q{qos}", self.url(f"/ps/tq/{qos}?qos={qos}"))
            self.assertEqual(code, 0, err)
            message = yield sub.next_message()
            self.assertEqual((message.topic, message.payload, message.qos),
                             (f"tq/{qos}", f"q{qos}".encode(), qos))
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(big)
        _, err, code = yield self.coap_client("-m", "post", "-b", "1024", "-f", path,
                                              self.url("/ps/tq/big?qos=1&retain=true"))
        self.assertEqual(code, 0, err)
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("tq/big", big))
        got = self.mktemp()
        _, err, code = yield self.coap_client("-m", "get", "-o", got, self.url("/ps/tq/big"))
        self.assertEqual(code, 0, err)
        with open(got, "rb") as f:
            self.assertEqual(f.read(), big)
        observed = self.mktemp()
        observer = self.spawn(COAP_CLIENT, ["-B", "10", "-s", "3", "-m", "get", "-o", observed,
                                            self.url("/ps/tq/stream?clientid=tb")])
        yield self.wait_until(lambda: "tb" in self.broker.sessions)
        pub = yield self.paho("pub")
        yield pub.publish("tq/stream", big[::-1], 1)
        code = yield with_timeout(observer.ended, self.reactor, 20)
        self.assertEqual(code, 0, observer.err)
        with open(observed, "rb") as f:
            self.assertEqual(f.read(), big[::-1])


class AiocoapTCPTests(TCPBrokerTestCase):
    skip = NO_AIOCOAP

    SCRIPT = textwrap.dedent("""\
        import asyncio, sys
        from aiocoap import Context, Message, POST, GET

        async def main(base):
            ctx = await Context.create_client_context()
            r = await ctx.request(Message(code=POST, uri=base + "/ps/aio/tcp?qos=1",
                                          payload=b"via tcp")).response
            print("POST", r.code, flush=True)
            r = await ctx.request(Message(code=GET, uri=base + "/ps/aio/none")).response
            print("GET", r.code, flush=True)
            await ctx.shutdown()

        asyncio.run(main(sys.argv[1]))
        """)

    @inlineCallbacks
    def test_publish(self) -> Any:
        sub = yield self.paho("sub")
        yield sub.subscribe(("aio/#", 1))
        script = self.mktemp()
        with open(script, "w") as f:
            f.write(self.SCRIPT)
        proc = self.spawn(sys.executable, [script, self.url("")])
        message = yield sub.next_message(20)
        self.assertEqual((message.topic, message.payload), ("aio/tcp", b"via tcp"))
        code = yield with_timeout(proc.ended, self.reactor, 20)
        self.assertEqual(code, 0, proc.err)
        self.assertEqual(proc.out.decode().splitlines(),
                         ["POST 2.04 Changed", "GET 4.04 Not Found"])


class TLSTests(TCPBrokerTestCase):
    """``coap=ssl:...`` (coaps+tcp): the same framing inside TLS, the certificate the
    listener's files name, ALPN ``coap`` agreed to."""

    transport = "ssl"

    def setUp(self) -> Any:
        from tests.certs import CA

        directory = self.mktemp()
        os.makedirs(directory)
        self.ca = CA(directory)
        server = self.ca.issue("localhost", server=True)
        self.coap_keys = {"privateKey": server.key_path, "certKey": server.cert_path}
        return super().setUp()

    @inlineCallbacks
    def test_publish_over_tls(self) -> Any:
        from twisted.internet.endpoints import wrapClientTLS
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        with open(self.ca.cert_path, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        options = optionsForClientTLS("localhost", trust, acceptableProtocols=[b"coap"])
        endpoint = wrapClientTLS(options,
                                 TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.coap_port))
        client = RawTCP()
        yield connectProtocol(endpoint, client)
        self.addCleanup(lambda: (client.transport.loseConnection(), client.lost)[1])
        sub = yield self.paho("sub")
        yield sub.subscribe(("secure/#", 1))
        csm = yield self.next(client)
        self.assertEqual(csm.code, tcp.CSM)
        self.assertEqual(client.transport.negotiatedProtocol, b"coap")  # RFC 8323 8.2
        client.send(tcp.csm(1152))
        client.send(msg(m.POST, b"s", [], b"sealed").add(11, "ps").add(11, "secure")
                    .add(11, "t").add(15, "qos=1"))
        answer = yield self.next(client)
        self.assertEqual((m.code_text(answer.code), answer.token), ("2.04", b"s"))
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("secure/t", b"sealed"))

    @inlineCallbacks
    def test_libcoap_openssl_client(self) -> Any:
        """libcoap's OpenSSL client over coaps+tcp, checking the certificate with our CA."""
        import shutil

        from twisted.internet.utils import getProcessOutputAndValue

        client = shutil.which("coap-client-openssl")
        if client is None:
            raise unittest.SkipTest("coap-client-openssl is not installed (libcoap3-bin)")
        sub = yield self.paho("sub")
        yield sub.subscribe(("secure/#", 1))
        _, err, code = yield with_timeout(getProcessOutputAndValue(client, [
            "-B", "10", "-R", self.ca.cert_path, "-m", "post", "-e", "over tls",
            f"coaps+tcp://127.0.0.1:{self.coap_port}/ps/secure/lib?qos=1"],
            reactor=self.reactor), self.reactor, 20)
        self.assertEqual(code, 0, err)
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("secure/lib", b"over tls"))


class TCPRateTests(TCPBrokerTestCase):
    """maxRequestRate over TCP (issue 15: request rate bounded over every transport)."""

    #: 2/s: a token comes back only every 0.5 s, longer than answering 60 requests takes
    #: even on a loaded machine (at 20/s one came back between two reads under trial in
    #: CI, and the 21st request was answered).
    coap_keys = {"maxRequestRate": "2"}

    @inlineCallbacks
    def test_requests_past_the_rate(self) -> Any:
        """60 GETs in one write with a rate of 2/s: the burst of 2 is answered, the
        rest get 4.29 with Max-Age 1, and the connection is not read for a second: a
        request sent meanwhile is answered only after it."""
        client = yield self.raw()
        yield self.next(client)
        client.send(tcp.csm(1152))
        client.transport.write(b"".join(tcp.encode(msg(m.GET, b"r%d" % n).add(11, "ps").add(
            11, "none")) for n in range(60)))
        # The refusal comes after this (reading the 60 answers may take most of the
        # second on a loaded machine, so the pause is timed from the burst, not from them).
        refused_at = self.reactor.seconds()
        answers = []
        for _ in range(60):
            answers.append((yield self.next(client)))
        codes = [m.code_text(a.code) for a in answers]
        self.assertEqual(codes, ["4.04"] * 2 + ["4.29"] * 58)
        self.assertEqual(answers[2].uint(14), 1)  # Max-Age
        client.send(msg(m.GET, b"later").add(11, "ps").add(11, "none"))
        later = yield self.next(client)
        self.assertEqual((m.code_text(later.code), later.token), ("4.04", b"later"))
        self.assertGreater(self.reactor.seconds() - refused_at, 0.8)  # not read meanwhile
