"""The sans-IO CoAP codec (mqtt_twisted.coap.message, .options): RFC 7252 byte vectors,
every malformed form as a typed CoapFormatError carrying what the header gave,
hypothesis round trips, and a fuzzer: random bytes only ever give a message (which
re-encodes to the same bytes) or a CoapFormatError.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted.coap import options as opt
from mqtt_twisted.coap.message import (
    ACK,
    BAD_OPTION,
    CHANGED,
    CON,
    CONTENT,
    EMPTY,
    GET,
    NON,
    NOT_FOUND,
    POST,
    RST,
    CoapFormatError,
    CoapMessage,
    code_text,
    decode,
    empty_ack,
    encode,
    reset_for,
)


class VectorTests(SynchronousTestCase):
    """Hand-checked bytes against RFC 7252 §3 (header, token, option deltas)."""

    def test_ping_and_reset(self) -> None:
        # An empty CON is a CoAP ping: 0x40 = ver 1, CON, TKL 0; code 0.00.
        self.assertEqual(decode(bytes.fromhex("400004d2")), CoapMessage(CON, EMPTY, 1234))
        self.assertEqual(reset_for(1234), bytes.fromhex("700004d2"))
        self.assertEqual(empty_ack(0xBEEF), bytes.fromhex("6000beef"))

    def test_get_with_path(self) -> None:
        # CON GET mid 0x7d34 token 0x20, Uri-Path "temperature" (delta 11, length 11).
        data = bytes.fromhex("4101 7d34 20 bb") + b"temperature"
        message = decode(data)
        self.assertEqual(message, CoapMessage(CON, GET, 0x7D34, b"\x20",
                                              [(opt.URI_PATH, b"temperature")]))
        self.assertEqual(encode(message), data)

    def test_piggybacked_response(self) -> None:
        # ACK 2.05 with payload "22.3 C" after the 0xFF marker (RFC 7252 figure 4).
        data = bytes.fromhex("6145 7d34 20 ff") + b"22.3 C"
        self.assertEqual(decode(data), CoapMessage(ACK, CONTENT, 0x7D34, b"\x20", [],
                                                   b"22.3 C"))
        self.assertEqual(code_text(CONTENT), "2.05")
        self.assertEqual(code_text(BAD_OPTION), "4.02")
        self.assertEqual(code_text(NOT_FOUND), "4.04")

    def test_repeated_options_and_zero_delta(self) -> None:
        data = bytes.fromhex("5002 0001 b2") + b"ps" + b"\x01t" + bytes.fromhex("45") + b"qos=1"
        message = decode(data)
        self.assertEqual(message.type, NON)
        self.assertEqual(message.code, POST)
        self.assertEqual(message.strings(opt.URI_PATH), ["ps", "t"])
        self.assertEqual(message.strings(opt.URI_QUERY), ["qos=1"])
        self.assertEqual(encode(message), data)

    def test_extended_delta_and_length_forms(self) -> None:
        cases = [
            (12, b"", "c0"), (13, b"", "d000"), (268, b"", "d0ff"), (269, b"", "e00000"),
            (65535, b"", "e0fef2"), (1, b"x" * 12, "1c"), (1, b"x" * 13, "1d00"),
            (1, b"x" * 268, "1dff"), (1, b"x" * 269, "1e0000"), (1, b"x" * 1000, "1e02db"),
        ]
        for number, value, head in cases:
            data = encode(CoapMessage(CON, GET, 1, b"", [(number, value)]))
            self.assertEqual(data[4:4 + len(head) // 2].hex(), head, (number, len(value)))
            self.assertEqual(decode(data).options, [(number, value)])

    def test_options_are_sorted_stably(self) -> None:
        message = CoapMessage(CON, GET, 1, b"", [(15, b"b=2"), (11, b"x"), (15, b"a=1"),
                                                 (11, b"y")])
        self.assertEqual(decode(encode(message)).options,
                         [(11, b"x"), (11, b"y"), (15, b"b=2"), (15, b"a=1")])

    def test_encode_refuses_what_cannot_be_sent(self) -> None:
        self.assertRaises(ValueError, encode, CoapMessage(CON, GET, 1, b"123456789"))
        self.assertRaises(ValueError, encode, CoapMessage(CON, GET, 70000))
        self.assertRaises(ValueError, encode, CoapMessage(CON, GET, 1, b"", [(70000, b"")]))


class MalformedTests(SynchronousTestCase):
    """Every malformed form is a CoapFormatError, with the type and id when read."""

    def assertFormatError(self, data: bytes, mtype: int | None = None,
                          mid: int | None = None) -> CoapFormatError:
        e = self.assertRaises(CoapFormatError, decode, data)
        self.assertEqual((e.type, e.mid), (mtype, mid), e.reason)
        return e

    def test_header_errors(self) -> None:
        self.assertFormatError(b"")
        self.assertFormatError(b"\x40\x01\x00")
        self.assertFormatError(bytes.fromhex("80010001"))  # version 2
        self.assertFormatError(bytes.fromhex("49010001") + b"123456789", CON, 1)  # TKL 9
        self.assertFormatError(bytes.fromhex("4401000112"), CON, 1)  # token cut short
        self.assertFormatError(bytes.fromhex("500000010f"), NON, 1)  # empty with bytes
        self.assertFormatError(bytes.fromhex("41000001aa"), CON, 1)  # empty with a token
        for reserved in (0x20, 0xC0, 0xE1):  # classes 1, 6, 7
            self.assertFormatError(bytes((0x40, reserved, 0, 9)), CON, 9)

    def test_option_errors(self) -> None:
        head = bytes.fromhex("42010005abcd")
        e = self.assertFormatError(head + b"\xf1x", CON, 5)  # delta nibble 15
        self.assertEqual(e.token, b"\xab\xcd")
        self.assertFormatError(head + b"\x1f", CON, 5)  # length nibble 15
        self.assertFormatError(head + b"\xd0", CON, 5)  # 1-byte extension missing
        self.assertFormatError(head + b"\xe0\x01", CON, 5)  # 2-byte extension cut
        self.assertFormatError(head + b"\x13ab", CON, 5)  # value past the end
        self.assertFormatError(head + b"\xff", CON, 5)  # marker, no payload
        self.assertFormatError(head + b"\xe0\xff\xff" + b"\xe0\xff\xff", CON, 5)  # > 65535


class OptionTests(SynchronousTestCase):
    def test_properties(self) -> None:
        self.assertTrue(opt.is_critical(opt.URI_PATH))
        self.assertFalse(opt.is_critical(opt.OBSERVE))
        self.assertTrue(opt.is_unsafe(opt.URI_HOST))
        self.assertTrue(opt.is_no_cache_key(opt.SIZE1))
        self.assertEqual(opt.name_of(opt.BLOCK2), "Block2")
        self.assertEqual(opt.name_of(9), "option 9")

    def test_uint(self) -> None:
        self.assertEqual(opt.encode_uint(0), b"")
        self.assertEqual(opt.encode_uint(255), b"\xff")
        self.assertEqual(opt.encode_uint(256), b"\x01\x00")
        self.assertEqual(opt.decode_uint(b"\x01\x00"), 256)
        self.assertRaises(ValueError, opt.encode_uint, -1)

    def test_bad_critical(self) -> None:
        understood = frozenset({opt.URI_PATH, opt.OBSERVE})
        self.assertEqual(opt.bad_critical([(opt.URI_PATH, b"a"), (opt.OBSERVE, b"")],
                                          understood), [])
        self.assertEqual(opt.bad_critical([(9, b""), (10, b"")], understood), [9])
        self.assertEqual(opt.bad_critical([(opt.URI_PATH, b"\xff")], understood),
                         [opt.URI_PATH])  # not UTF-8
        self.assertEqual(opt.bad_critical([(opt.URI_PATH, b"x" * 256)], understood),
                         [opt.URI_PATH])  # too long

    def test_block(self) -> None:
        block = opt.Block(5, True, 2)
        self.assertEqual((block.size, block.offset), (64, 320))
        self.assertEqual(opt.Block.decode(block.encode()), block)
        self.assertEqual(opt.Block(0, False, 0).encode(), b"")
        self.assertFalse(opt.well_formed(opt.BLOCK1, b"\x0f"))  # SZX 7
        self.assertTrue(opt.well_formed(opt.BLOCK1, b"\x0f", bert=True))  # BERT over TCP
        self.assertEqual((opt.Block(3, True, 7).size, opt.Block(3, True, 7).offset), (1024, 3072))
        self.assertTrue(opt.well_formed(opt.BLOCK1, b"\x0e"))


# --- properties ---------------------------------------------------------------------------

option_st = st.tuples(st.integers(0, 65535), st.binary(max_size=300))
message_st = st.builds(
    CoapMessage,
    st.integers(0, 3),
    st.one_of(st.integers(1, 31), st.integers(64, 191)),
    st.integers(0, 0xFFFF),
    st.binary(max_size=8),
    st.lists(option_st, max_size=8),
    st.binary(max_size=200),
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(message_st)
    def test_round_trip(self, message: CoapMessage) -> None:
        decoded = decode(encode(message))
        message.options.sort(key=lambda o: o[0])
        self.assertEqual(decoded, message)

    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=120))
    def test_fuzz_only_typed_errors(self, data: bytes) -> None:
        self.check(data)

    @settings(max_examples=500, deadline=None)
    @given(message_st, st.data())
    def test_mutated_messages(self, message: CoapMessage, data: st.DataObject) -> None:
        raw = bytearray(encode(message))
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        self.check(bytes(raw[:cut]))

    def test_seeded_random_bytes(self) -> None:
        rng = random.Random(7252)
        for _ in range(20000):
            self.check(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))))

    def check(self, data: bytes) -> None:
        try:
            message = decode(data)
        except CoapFormatError:
            return
        self.assertEqual(encode(message), data)  # the decoder accepts only canonical forms
        self.assertIn(message.type, (CON, NON, ACK, RST))
        self.assertLessEqual(len(message.token), 8)


class CodeTests(SynchronousTestCase):
    def test_constants(self) -> None:
        self.assertEqual((CHANGED, CONTENT, RST), (0x44, 0x45, 3))
