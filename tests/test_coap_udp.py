"""CoAP over UDP end to end (``--listen coap=udp:...``): libcoap's ``coap-client-notls`` and
aiocoap (in a subprocess) against a real broker, paho-mqtt on the MQTT side, and a raw
UDP socket for what no well-behaved client sends (malformed datagrams, duplicates,
unknown critical options, RSTs).
"""

from __future__ import annotations

import sys
import textwrap
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mqtt_twisted.adapters._coapobserve import CoapClient
from mqtt_twisted.adapters.listener import parse_listener
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.core import inspection
from mqtt_twisted.interfaces import IDatagramAdapter, IListenerChecker, IMessageSink
from mqtt_twisted.plugins.coap import coapAdapter

try:
    from tests.coapbroker import (
        COAP_CLIENT,
        NO_AIOCOAP,
        NO_LIBCOAP,
        CoapBrokerTestCase,
        request,
    )
    from tests.pahoclient import with_timeout
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from coapbroker import (  # type: ignore[no-redef]
        COAP_CLIENT,
        NO_AIOCOAP,
        NO_LIBCOAP,
        CoapBrokerTestCase,
        request,
    )
    from pahoclient import with_timeout  # type: ignore[no-redef]


class LibcoapTests(CoapBrokerTestCase):
    """libcoap's coap-client-notls against the broker."""

    skip = NO_LIBCOAP

    @inlineCallbacks
    def test_post_reaches_paho_at_each_qos(self) -> Any:
        sub = yield self.paho("sub")
        yield sub.subscribe(("sensors/#", 2))
        for qos in (0, 1, 2):
            _, err, code = yield self.coap_client(
                "-m", "post", "-e", f"reading {qos}", self.url(f"/ps/sensors/t{qos}?qos={qos}"))
            self.assertEqual(code, 0, err)
            message = yield sub.next_message()
            self.assertEqual((message.topic, message.payload, message.qos),
                             (f"sensors/t{qos}", f"reading {qos}".encode(), qos))

    @inlineCallbacks
    def test_retained_post_then_get_and_mqtt(self) -> Any:
        _, err, code = yield self.coap_client(
            "-m", "put", "-e", "on", self.url("/ps/lights/hall?retain=true&qos=1"))
        self.assertEqual(code, 0, err)
        out, err, code = yield self.coap_client("-m", "get", self.url("/ps/lights/hall"))
        self.assertEqual((out.strip(), code), (b"on", 0), err)
        sub = yield self.paho("late")
        yield sub.subscribe(("lights/#", 0))
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload, message.retain),
                         ("lights/hall", b"on", True))

    @inlineCallbacks
    def test_get_without_retained_is_404(self) -> Any:
        out, err, _ = yield self.coap_client("-m", "get", self.url("/ps/nothing/here"))
        self.assertIn(b"4.04", out + err)
        out, err, _ = yield self.coap_client("-m", "get", self.url("/elsewhere"))
        self.assertIn(b"4.04", out + err)
        out, err, _ = yield self.coap_client("-m", "post", "-e", "x", self.url("/ps/a?qos=5"))
        self.assertIn(b"4.00", out + err)

    @inlineCallbacks
    def test_observe_gets_mqtt_publishes(self) -> Any:
        """coap-client -s observes a wildcard filter: the retained message first, then
        what paho publishes at QoS 0 (NON) and 1 (CON); on leaving, its session ends."""
        pub = yield self.paho("pub")
        yield pub.publish("obs/first", b"retained", 1, True)
        observer = self.spawn(COAP_CLIENT, ["-B", "10", "-s", "3", "-m", "get",
                                            self.url("/ps/obs/%23?clientid=dev1&qos=1")])
        yield self.wait_until(lambda: inspection.session_info(self.broker, "dev1") is not None
                              and "obs/#" in self.broker.sessions["dev1"].subscriptions)
        yield pub.publish("obs/a", b"zero", 0)
        yield pub.publish("obs/b", b"one", 1)
        code = yield with_timeout(observer.ended, self.reactor, 20)
        self.assertEqual(code, 0, observer.err)
        self.assertEqual(observer.out.replace(b"\n", b""), b"retainedzeroone")
        yield self.wait_until(lambda: inspection.session_info(self.broker, "dev1") is None)


class AiocoapTests(CoapBrokerTestCase):
    """aiocoap in a subprocess: publishes, then observes."""

    skip = NO_AIOCOAP

    SCRIPT = textwrap.dedent("""\
        import asyncio, sys
        from aiocoap import Context, Message, POST, GET

        async def main(base):
            ctx = await Context.create_client_context()
            r = await ctx.request(Message(code=POST, uri=base + "/ps/from/aiocoap?qos=1",
                                          payload=b"hi mqtt")).response
            print("POST", r.code, flush=True)
            obs = Message(code=GET, uri=base + "/ps/to/aiocoap?clientid=aio", observe=0)
            req = ctx.request(obs)
            first = await req.response
            print("REGISTERED", first.code, first.opt.observe, flush=True)
            async for note in req.observation:
                print("NOTE", note.payload.decode(), flush=True)
                break
            req.observation.cancel()
            await ctx.shutdown()

        asyncio.run(main(sys.argv[1]))
        """)

    @inlineCallbacks
    def test_publish_and_observe(self) -> Any:
        sub = yield self.paho("sub")
        yield sub.subscribe(("from/#", 1))
        script = self.mktemp()
        with open(script, "w") as f:
            f.write(self.SCRIPT)
        proc = self.spawn(sys.executable, [script, f"coap://127.0.0.1:{self.coap_port}"])
        message = yield sub.next_message(20)
        self.assertEqual((message.topic, message.payload, message.qos),
                         ("from/aiocoap", b"hi mqtt", 1))
        yield self.wait_until(lambda: b"REGISTERED" in proc.out)
        pub = yield self.paho("pub")
        yield pub.publish("to/aiocoap", b"hello coap", 1)
        code = yield with_timeout(proc.ended, self.reactor, 20)
        self.assertEqual(code, 0, proc.err)
        lines = proc.out.decode().splitlines()
        self.assertEqual(lines[0], "POST 2.04 Changed")
        self.assertTrue(lines[1].startswith("REGISTERED 2.05 Content"), lines)
        self.assertEqual(lines[2], "NOTE hello coap")


    WILDCARD = textwrap.dedent("""\
        import asyncio, sys
        from aiocoap import Context, Message, GET

        async def main(base):
            ctx = await Context.create_client_context()
            req = ctx.request(Message(code=GET, uri=base + "/ps/wild/%2B?clientid=w",
                                      observe=0))
            first = await req.response
            print("REGISTERED", "/".join(first.opt.location_path),
                  first.payload.decode(), flush=True)
            seen = 0
            async for note in req.observation:
                print("NOTE", "/".join(note.opt.location_path), note.payload.decode(),
                      flush=True)
                seen += 1
                if seen == 2:
                    break
            req.observation.cancel()
            await ctx.shutdown()

        asyncio.run(main(sys.argv[1]))
        """)

    @inlineCallbacks
    def test_wildcard_notifications_name_their_topic(self) -> Any:
        """An observer of ``wild/+`` learns each message's topic from the Location-Path
        options (``ps``, then the topic's levels), the retained one in the registration
        answer included."""
        pub = yield self.paho("pub")
        yield pub.publish("wild/kept", b"r", 1, True)
        script = self.mktemp()
        with open(script, "w") as f:
            f.write(self.WILDCARD)
        proc = self.spawn(sys.executable, [script, f"coap://127.0.0.1:{self.coap_port}"])
        yield self.wait_until(lambda: b"REGISTERED" in proc.out, 20)
        yield pub.publish("wild/a", b"1", 1)
        yield pub.publish("wild/b", b"2", 0)
        code = yield with_timeout(proc.ended, self.reactor, 20)
        self.assertEqual(code, 0, proc.err)
        self.assertEqual(proc.out.decode().splitlines(), [
            "REGISTERED ps/wild/kept r", "NOTE ps/wild/a 1", "NOTE ps/wild/b 2"])


    REREGISTER = textwrap.dedent("""\
        import asyncio, sys
        from aiocoap import Context, Message, GET

        async def first_note(req):
            async for note in req.observation:
                return note.payload.decode()

        async def main(uri):
            ctx = await Context.create_client_context()
            req = ctx.request(Message(code=GET, uri=uri, observe=0))
            print("R1", (await req.response).code, flush=True)
            print("N1", await first_note(req), flush=True)
            gone = await ctx.request(Message(code=GET, uri=uri, observe=1)).response
            print("D", gone.code, gone.opt.observe, flush=True)
            sys.stdin.readline()  # the test saw the session end
            again = ctx.request(Message(code=GET, uri=uri, observe=0))
            print("R2", (await again.response).code, flush=True)
            print("N2", await first_note(again), flush=True)
            await ctx.shutdown()

        asyncio.run(main(sys.argv[1]))
        """)

    @inlineCallbacks
    def test_observe_deregister_reregister(self) -> Any:
        """aiocoap observes, deregisters with Observe 1 (the session ends with its only
        observation; the answer is the plain GET's, 4.04 with no retained message),
        registers again and gets the next message."""
        script = self.mktemp()
        with open(script, "w") as f:
            f.write(self.REREGISTER)
        proc = self.spawn(sys.executable, [
            script, f"coap://127.0.0.1:{self.coap_port}/ps/again/t?clientid=again&qos=1"])
        yield self.wait_until(lambda: b"R1" in proc.out, 20)
        self.assertEqual(list(self.broker.sessions["again"].subscriptions), ["again/t"])
        pub = yield self.paho("pub")
        yield pub.publish("again/t", b"one", 1)
        yield self.wait_until(lambda: b"D " in proc.out)
        yield self.wait_until(lambda: "again" not in self.broker.sessions)
        proc.transport.write(b"go\n")
        yield self.wait_until(lambda: b"R2" in proc.out)
        self.assertEqual(list(self.broker.sessions["again"].subscriptions), ["again/t"])
        yield pub.publish("again/t", b"two", 1)
        code = yield with_timeout(proc.ended, self.reactor, 20)
        self.assertEqual(code, 0, proc.err)
        self.assertEqual(proc.out.decode().splitlines(), [
            "R1 2.05 Content", "N1 one", "D 4.04 Not Found None", "R2 2.05 Content",
            "N2 two"])


class RawUDPTests(CoapBrokerTestCase):
    """What a raw socket can send: the broker answers each with the RFC's answer."""

    coap_keys = {"maxPayload": "64", "maxObservations": "2"}

    @inlineCallbacks
    def test_malformed_con_is_reset_others_ignored(self) -> Any:
        client = self.udp()
        client.transport.write(bytes.fromhex("4901 0102") + b"123456789")  # TKL 9
        answer = yield self.next(client)
        self.assertEqual((answer.type, answer.code, answer.mid), (m.RST, m.EMPTY, 0x0102))
        client.transport.write(bytes.fromhex("5101 0103 aa f1"))  # NON, bad option nibble
        client.transport.write(b"\x40")  # too short to say anything
        yield self.nothing(client)

    @inlineCallbacks
    def test_ping_is_reset(self) -> Any:
        client = self.udp()
        client.transport.write(bytes.fromhex("40000777"))
        answer = yield self.next(client)
        self.assertEqual((answer.type, answer.mid), (m.RST, 0x777))

    @inlineCallbacks
    def test_unknown_critical_option_is_bad_option(self) -> Any:
        client = self.udp()
        msg = m.decode(request(m.POST, "/ps/a", payload=b"x", mid=5))
        msg.add(9, b"?")
        client.transport.write(m.encode(msg))
        answer = yield self.next(client)
        self.assertEqual((answer.type, m.code_text(answer.code), answer.mid, answer.token),
                         (m.ACK, "4.02", 5, b"t1"))
        self.assertIn(b"option 9", answer.payload)

    @inlineCallbacks
    def test_codes(self) -> Any:
        client = self.udp()
        cases = [(request(m.PATCH, "/ps/a", mid=1), "4.05"),
                 (request(m.POST, "/ps/a", payload=b"x" * 65, mid=2), "4.13"),
                 (request(m.POST, "/ps/$SYS/x", mid=3), "4.03"),
                 (request(m.DELETE, "/ps/a", mid=4), "4.04"),
                 (request(m.POST, "/ps/a", "qos=1", mid=5, mtype=m.NON), "2.04")]
        for data, code in cases:
            client.transport.write(data)
            answer = yield self.next(client)
            self.assertEqual(m.code_text(answer.code), code, answer)
        self.assertEqual(answer.type, m.NON)  # a NON request gets a NON response

    @inlineCallbacks
    def test_duplicate_con_publishes_once(self) -> Any:
        sub = yield self.paho("sub")
        yield sub.subscribe(("dup/#", 1))
        client = self.udp()
        data = request(m.POST, "/ps/dup/x", "qos=1", payload=b"once", mid=0x4242)
        client.transport.write(data)
        first = yield self.next(client)
        client.transport.write(data)
        second = yield self.next(client)
        self.assertEqual(first, second)
        self.assertEqual((first.type, m.code_text(first.code)), (m.ACK, "2.04"))
        message = yield sub.next_message()
        self.assertEqual(message.payload, b"once")
        yield sub.no_message(0.3)

    @inlineCallbacks
    def test_observe_delete_and_reset(self) -> Any:
        """Observe registers (2.05 with Observe), notifications follow (CON at QoS 1),
        DELETE ends one observation, an RST to a notification the other, and the
        session closes with the last one; a third observation is over the limit."""
        client = self.udp()
        client.transport.write(request(m.GET, "/ps/o/a", "clientid=raw", mid=1, token=b"A",
                                       observe=0))
        client.transport.write(request(m.GET, "/ps/o/b", "clientid=raw", "qos=1", mid=2,
                                       token=b"B", observe=0))
        client.transport.write(request(m.GET, "/ps/o/c", "clientid=raw", mid=3, token=b"C",
                                       observe=0))
        answers = {}
        for _ in range(3):
            answer = yield self.next(client)
            answers[answer.token] = answer
        self.assertEqual(m.code_text(answers[b"A"].code), "2.05")
        self.assertIsNotNone(answers[b"A"].uint(opt.OBSERVE))
        self.assertEqual(m.code_text(answers[b"C"].code), "5.03")  # maxObservations=2
        self.assertEqual(set(self.broker.sessions["raw"].subscriptions), {"o/a", "o/b"})
        pub = yield self.paho("pub")
        yield pub.publish("o/a", b"n1", 0)
        yield pub.publish("o/b", b"n2", 1)
        notes = [(yield self.next(client)), (yield self.next(client))]
        notes.sort(key=lambda n: n.token)
        self.assertEqual([(n.token, n.type, n.payload) for n in notes],
                         [(b"A", m.NON, b"n1"), (b"B", m.CON, b"n2")])
        self.assertGreater(notes[0].uint(opt.OBSERVE), answers[b"A"].uint(opt.OBSERVE))
        # an observer of a single topic is not told the topic again
        self.assertEqual([n.option(opt.LOCATION_PATH) for n in notes], [None, None])
        client.transport.write(m.encode(m.CoapMessage(m.ACK, m.EMPTY, notes[1].mid)))
        client.transport.write(request(m.DELETE, "/ps/o/a", "clientid=raw", mid=4))
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code), "2.02")
        self.assertEqual(set(self.broker.sessions["raw"].subscriptions), {"o/b"})
        yield pub.publish("o/b", b"n3", 0)
        note = yield self.next(client)
        client.transport.write(m.encode(m.CoapMessage(m.RST, m.EMPTY, note.mid)))
        yield self.wait_until(lambda: "raw" not in self.broker.sessions)
        self.assertEqual(self.server.retransmitter.pending, {})


class PluginTests(unittest.SynchronousTestCase):
    def test_interfaces(self) -> None:
        verifyObject(IDatagramAdapter, coapAdapter)
        verifyObject(IListenerChecker, coapAdapter)
        verifyObject(IMessageSink, CoapClient(object(), "c"))  # type: ignore[arg-type]

    def test_bad_keys_and_endpoints(self) -> None:
        from mqtt_twisted.adapters.kit import check_listener

        e = self.assertRaises(ValueError, parse_listener, "coap=udp:5683:maxObservations=0",
                              "mqtt", {"coap": coapAdapter.options})
        self.assertIn("maxObservations", str(e))
        bad = parse_listener("coap=udp:99999", "mqtt", {"coap": coapAdapter.options})
        e = self.assertRaises(ValueError, check_listener, coapAdapter, bad)
        self.assertIn("0..65535", str(e))
        bad = parse_listener("coap=tcp:notaport", "mqtt", {"coap": coapAdapter.options})
        self.assertRaises(ValueError, check_listener, coapAdapter, bad)
        e = self.assertRaises(ValueError, parse_listener, "coap=udp:5683:blockSize=1000",
                              "mqtt", {"coap": coapAdapter.options})
        self.assertIn("blockSize", str(e))
        for good in ("coap=udp:5683", "coap=tcp:5683:interface=127.0.0.1"):
            check_listener(coapAdapter, parse_listener(good, "mqtt",
                                                       {"coap": coapAdapter.options}))


class UsageTests(unittest.SynchronousTestCase):
    """``--listen coap=...`` mistakes are one-line usage errors, as for any listener."""

    def test_usage_errors(self) -> None:
        from twisted.python import usage

        from mqtt_twisted import tap

        cases = {"coap=udp:abc": "the port must be 0..65535",
                 "coap=udp:5683:blockSize=100": "blockSize='100' is not a power of two",
                 "coap=udp:5683:heartbeat=-1": "heartbeat='-1'",
                 "coap=udp:5683:nstart=0": "nstart='0' must be at least 1",
                 "coap=udp:5683:maxObservationsPerAddress=x":
                     "maxObservationsPerAddress='x' is not an integer",
                 "coap=ssl:5684:privateKey=/nonexistent": "No such file"}
        for value, expected in cases.items():
            e = self.assertRaises(usage.UsageError, tap.Options().parseOptions,
                                  ["--listen", value])
            self.assertIn(expected, str(e))
            self.assertNotIn("\n", str(e))
        options = tap.Options()
        options.parseOptions(["--listen", "coap=udp:5683", "--listen", "coap=tcp:5683"])


class AiocoapQoSAndContentFormatTests(CoapBrokerTestCase):
    """aiocoap (a subprocess) publishes at QoS 0, 1 and 2 with a Content-Format, which a
    paho MQTT 5 subscriber gets as the message's QoS and Content Type; a retained MQTT 5
    message with a Content Type is read back by aiocoap with its Content-Format."""

    skip = NO_AIOCOAP

    SCRIPT = textwrap.dedent("""\
        import asyncio, sys
        from aiocoap import Context, Message, POST, GET

        async def main(base):
            ctx = await Context.create_client_context()
            for qos in (0, 1, 2):
                m = Message(code=POST, uri=base + f"/ps/cf/{qos}?qos={qos}",
                            payload=b'{"q": %d}' % qos)
                m.opt.content_format = 50
                r = await ctx.request(m).response
                print("POST", qos, r.code, flush=True)
            r = await ctx.request(Message(code=GET, uri=base + "/ps/cf/back")).response
            print("GET", r.code, int(r.opt.content_format), r.payload.decode(), flush=True)
            await ctx.shutdown()

        asyncio.run(main(sys.argv[1]))
        """)

    @inlineCallbacks
    def test_each_qos_and_content_format(self) -> Any:
        from tests.pahov5 import PahoV5Client

        sub = PahoV5Client(self.reactor, self.mqtt_port, "cf-sub")
        self.addCleanup(sub.stop)
        yield sub.connect()
        yield sub.subscribe(("cf/+", 2))
        pub = PahoV5Client(self.reactor, self.mqtt_port, "cf-pub")
        self.addCleanup(pub.stop)
        yield pub.connect()
        yield pub.publish("cf/back", b"[1]", 1, True, {"ContentType": "application/json"})
        back = yield sub.next_message()
        self.assertEqual(back.topic, "cf/back")
        script = self.mktemp()
        with open(script, "w") as f:
            f.write(self.SCRIPT)
        proc = self.spawn(sys.executable, [script, f"coap://127.0.0.1:{self.coap_port}"])
        got = []
        for _ in range(3):
            got.append((yield sub.next_message(20)))
        self.assertEqual(sorted((m.topic, m.qos, m.payload, m.prop("ContentType"))
                                for m in got),
                         [(f"cf/{q}", q, b'{"q": %d}' % q, "application/json")
                          for q in (0, 1, 2)])
        code = yield with_timeout(proc.ended, self.reactor, 20)
        self.assertEqual(code, 0, proc.err)
        lines = proc.out.decode().splitlines()
        self.assertEqual(lines[:3], [f"POST {q} 2.04 Changed" for q in (0, 1, 2)])
        self.assertEqual(lines[3], "GET 2.05 Content 50 [1]")
