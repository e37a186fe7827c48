"""Block-wise transfers (RFC 7959): the sans-IO stores on a Clock, then 50 KiB bodies
through libcoap and aiocoap both ways (Block1 into MQTT, Block2 out of it) and the
refusals a raw socket provokes (4.08 out of order, 4.13 with Size1, 4.02 past the end).
"""

from __future__ import annotations

import os
import sys
import textwrap
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.coap import blockwise
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.coap.mapping import CoapError
from mqtt_twisted.coap.options import Block

try:
    from tests.coapbroker import COAP_CLIENT, NO_AIOCOAP, NO_LIBCOAP, CoapBrokerTestCase, request
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

BIG = (os.urandom(25600).hex()).encode()  # 50 KiB of text (libcoap's -e/-f want no NULs)
KEY = (("127.0.0.1", 1), (b"ps", b"t"), ())


class StoreTests(SynchronousTestCase):
    def test_cut(self) -> None:
        payload = bytes(range(100))
        self.assertEqual(blockwise.cut(payload, 0, 1), (payload[:32], Block(0, True, 1)))
        self.assertEqual(blockwise.cut(payload, 3, 1), (payload[96:], Block(3, False, 1)))
        e = self.assertRaises(CoapError, blockwise.cut, payload, 4, 1)
        self.assertEqual(e.code, m.BAD_OPTION)
        self.assertEqual(blockwise.szx_for(1024), 6)
        self.assertRaises(ValueError, blockwise.szx_for, 1000)

    def test_reassembly(self) -> None:
        r = blockwise.Reassembly(Clock(), 1000, 100)
        self.assertIsNone(r.add(KEY, Block(0, True, 1), b"a" * 32, None))
        self.assertIsNone(r.add(KEY, Block(1, True, 1), b"b" * 32, None))
        self.assertEqual(r.add(KEY, Block(2, False, 1), b"c", None), b"a" * 32 + b"b" * 32 + b"c")
        self.assertEqual((len(r), r.size), (0, 0))

    def test_reassembly_refusals(self) -> None:
        clock = Clock()
        r = blockwise.Reassembly(clock, 100, 64)

        def code(*args: Any) -> int:
            return self.assertRaises(CoapError, r.add, KEY, *args).code

        self.assertEqual(code(Block(0, True, 1), b"a" * 32, 65), m.REQUEST_ENTITY_TOO_LARGE)
        self.assertEqual(code(Block(1, True, 1), b"a" * 32, None), m.REQUEST_ENTITY_INCOMPLETE)
        self.assertEqual(code(Block(0, True, 1), b"a" * 31, None), m.BAD_REQUEST)
        r.add(KEY, Block(0, True, 1), b"a" * 32, None)
        r.add(KEY, Block(1, True, 1), b"a" * 32, None)
        self.assertEqual(code(Block(2, True, 1), b"a" * 32, None), m.REQUEST_ENTITY_TOO_LARGE)
        self.assertEqual(len(r), 0)  # a refused body is forgotten
        r.add(KEY, Block(0, True, 1), b"a" * 32, None)
        other = (("127.0.0.1", 2), (b"ps", b"t"), ())
        r.add(other, Block(0, True, 1), b"a" * 32, None)
        third = (("127.0.0.1", 3), (b"ps", b"t"), ())
        e = self.assertRaises(CoapError, r.add, third, Block(0, True, 2), b"a" * 64, None)
        self.assertEqual(e.code, m.SERVICE_UNAVAILABLE)  # 100 bytes for the listener
        clock.advance(blockwise.LIFETIME + 1)
        self.assertEqual(code(Block(1, False, 1), b"x", None), m.REQUEST_ENTITY_INCOMPLETE)

    def test_representations(self) -> None:
        clock = Clock()
        reps = blockwise.Representations(clock, 100)
        etag = reps.store(KEY, b"x" * 60)
        self.assertEqual(reps.get(KEY), (etag, b"x" * 60))
        reps.store(("other",), b"y" * 60)  # over 100 bytes: the oldest goes
        self.assertIsNone(reps.get(KEY))
        clock.advance(blockwise.LIFETIME + 1)
        self.assertIsNone(reps.get(("other",)))


class LibcoapBlockTests(CoapBrokerTestCase):
    skip = NO_LIBCOAP

    def big_file(self) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(BIG)
        return path

    @inlineCallbacks
    def test_block1_post_reaches_mqtt_intact(self) -> Any:
        sub = yield self.paho("sub")
        yield sub.subscribe(("big/#", 1))
        _, err, code = yield self.coap_client(
            "-m", "post", "-b", "1024", "-f", self.big_file(),
            self.url("/ps/big/in?qos=1&retain=true"))
        self.assertEqual(code, 0, err)
        message = yield sub.next_message()
        self.assertEqual((message.topic, len(message.payload)), ("big/in", len(BIG)))
        self.assertEqual(message.payload, BIG)
        self.assertEqual(self.server.requests.reassembly.size, 0)

    @inlineCallbacks
    def test_block2_get_and_notification(self) -> Any:
        pub = yield self.paho("pub")
        yield pub.publish("big/out", BIG, 1, True)
        got = self.mktemp()
        _, err, code = yield self.coap_client("-m", "get", "-o", got, self.url("/ps/big/out"))
        self.assertEqual(code, 0, err)
        with open(got, "rb") as f:
            self.assertEqual(f.read(), BIG)
        observed = self.mktemp()
        observer = self.spawn(COAP_CLIENT, ["-B", "10", "-s", "3", "-m", "get", "-o", observed,
                                            self.url("/ps/big/stream?clientid=o1")])
        yield self.wait_until(lambda: "o1" in self.broker.sessions)
        yield pub.publish("big/stream", BIG[::-1], 0)
        code = yield with_timeout(observer.ended, self.reactor, 20)
        self.assertEqual(code, 0, observer.err)
        with open(observed, "rb") as f:
            self.assertEqual(f.read(), BIG[::-1])


class AiocoapBlockTests(CoapBrokerTestCase):
    skip = NO_AIOCOAP

    SCRIPT = textwrap.dedent("""\
        import asyncio, hashlib, sys
        from aiocoap import Context, Message, POST, GET

        async def main(base, size):
            ctx = await Context.create_client_context()
            body = bytes(range(256)) * (size // 256)
            r = await ctx.request(Message(code=POST, uri=base + "/ps/aio/in?qos=1",
                                          payload=body)).response
            print("POST", r.code, flush=True)
            req = ctx.request(Message(code=GET, uri=base + "/ps/aio/out?clientid=aio",
                                      observe=0))
            await req.response
            print("REGISTERED", flush=True)
            async for note in req.observation:
                print("NOTE", len(note.payload), hashlib.sha256(note.payload).hexdigest(),
                      flush=True)
                break
            req.observation.cancel()
            await ctx.shutdown()

        asyncio.run(main(sys.argv[1], int(sys.argv[2])))
        """)

    @inlineCallbacks
    def test_both_ways(self) -> Any:
        import hashlib

        size = 51200
        sub = yield self.paho("sub")
        yield sub.subscribe(("aio/in", 1))
        script = self.mktemp()
        with open(script, "w") as f:
            f.write(self.SCRIPT)
        proc = self.spawn(sys.executable, [script, self.url(""), str(size)])
        message = yield sub.next_message(20)
        self.assertEqual(message.payload, bytes(range(256)) * (size // 256))
        yield self.wait_until(lambda: b"REGISTERED" in proc.out)
        pub = yield self.paho("pub")
        yield pub.publish("aio/out", BIG, 1)
        code = yield with_timeout(proc.ended, self.reactor, 20)
        self.assertEqual(code, 0, proc.err)
        lines = proc.out.decode().splitlines()
        self.assertEqual(lines[0], "POST 2.04 Changed")
        self.assertEqual(lines[2], f"NOTE {len(BIG)} {hashlib.sha256(BIG).hexdigest()}")


class AiocoapTCPBlockTests(AiocoapBlockTests):
    """The same over coap+tcp (RFC 8323): aiocoap sends the 50 KiB as BERT Block1
    pieces (SZX 7, several 1024-byte units each; before BERT was accepted it got 4.02)
    and gets the notification in Block2 pieces."""

    transport = "tcp"


class RawBlockTests(CoapBrokerTestCase):
    coap_keys = {"maxPayload": "100", "blockSize": "32"}

    def block1(self, num: int, more: bool, payload: bytes, mid: int,
               size1: int | None = None) -> bytes:
        msg = m.decode(request(m.POST, "/ps/b", payload=payload, mid=mid))
        msg.add(opt.BLOCK1, Block(num, more, 1).encode())
        if size1 is not None:
            msg.add(opt.SIZE1, size1)
        return m.encode(msg)

    @inlineCallbacks
    def test_block1_answers(self) -> Any:
        client = self.udp()
        client.transport.write(self.block1(0, True, b"a" * 32, 1))
        answer = yield self.next(client)
        self.assertEqual((m.code_text(answer.code), answer.option(opt.BLOCK1)),
                         ("2.31", Block(0, True, 1).encode()))
        client.transport.write(self.block1(2, True, b"a" * 32, 2))
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code), "4.08")
        client.transport.write(self.block1(0, True, b"a" * 32, 3, size1=101))
        answer = yield self.next(client)
        self.assertEqual((m.code_text(answer.code), answer.uint(opt.SIZE1)), ("4.13", 100))

    @inlineCallbacks
    def test_block2_pieces_and_past_the_end(self) -> Any:
        pub = yield self.paho("pub")
        yield pub.publish("r", b"0123456789" * 5, 0, True)  # 50 bytes: two 32-byte blocks
        client = self.udp()
        client.transport.write(request(m.GET, "/ps/r", mid=1))
        first = yield self.next(client)
        self.assertEqual((first.payload, first.option(opt.BLOCK2), first.uint(opt.SIZE2)),
                         (b"0123456789" * 3 + b"01", Block(0, True, 1).encode(), 50))
        follow = m.decode(request(m.GET, "/ps/r", mid=2))
        follow.add(opt.BLOCK2, Block(1, False, 1).encode())
        client.transport.write(m.encode(follow))
        second = yield self.next(client)
        self.assertEqual((second.payload, Block.decode(second.option(opt.BLOCK2)).more),
                         (b"23456789" + b"0123456789", False))
        self.assertEqual(second.option(opt.ETAG), first.option(opt.ETAG))
        follow = m.decode(request(m.GET, "/ps/r", mid=3))
        follow.add(opt.BLOCK2, Block(5, False, 1).encode())
        client.transport.write(m.encode(follow))
        answer = yield self.next(client)
        self.assertEqual(m.code_text(answer.code), "4.02")
