"""A stream entry's records packed in C (``cluster/_entries.pyx``) against the pure
``batch.pack_records``, the specification: the same bytes for random batches (every
msgpack length and integer form, properties, subclasses and values msgpack refuses),
and a batch read back as it was written.  Skipped only where the extension was not
built (CI sets ``MQTT_TWISTED_REQUIRE_EXT=1``, which makes that an import error)."""

from __future__ import annotations

import enum
import itertools
import random
from typing import Any

import pytest

from mqtt_twisted.cluster import batch
from mqtt_twisted.cluster.batch import pack_records, read_entry, read_push
from mqtt_twisted.codec import _accel
from mqtt_twisted.message import Message
from mqtt_twisted.store.redis import FORMAT

ext = batch._entries
needs_ext = pytest.mark.skipif(ext is None, reason="cluster/_entries.pyx is not built here")

#: Integers at every edge of msgpack's forms (fixint, 8, 16, 32, 64 bits, both signs).
EDGES = [0, 1, 127, 128, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 63) - 1,
         1 << 63, (1 << 64) - 1, -1, -32, -33, -128, -129, -32768, -32769, -(1 << 31),
         -(1 << 31) - 1, -(1 << 63)]


class Kind(enum.IntEnum):
    ONE = 1


SIZES = [0, 1, 31, 32, 255, 256, 65535, 65536]


def text(rng: random.Random) -> str:
    """Every str length form (fix, 8, 16, 32 bits), multi-byte characters too."""
    size = rng.choice(SIZES) if rng.random() < 0.05 else rng.randint(0, 40)
    return rng.choice(["ab/", "é€/x", "𝄞a"]) * (size // 3) + "x" * (size % 3)


def blob(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice(SIZES) if rng.random() < 0.05 else rng.randint(0, 100))


def value(rng: random.Random) -> Any:
    return rng.choice([
        None, True, False, rng.choice(EDGES), rng.random() * 1e9, 0.0, -0.0, float("inf"),
        blob(rng), text(rng), {}, {1: 2}, [1, b"x"], Kind.ONE, bytearray(b"ab"),
    ])


def message(rng: random.Random) -> Message:
    properties = rng.choice([{}, {}, {1: 1, 38: [["k", "v"]], 8: "r/t", 9: b"\0x"}])
    return Message(text(rng)[:300], blob(rng), rng.choice([0, 1, 2, Kind.ONE]),
                   rng.random() < 0.3, None, properties,
                   rng.choice([0.0, rng.random() * 2e9, 5]),
                   rng.choice([None, "pub", text(rng)[:40]]))


def outcome(call: Any, *args: Any) -> tuple[Any, ...]:
    try:
        return ("ok", call(*args))
    except Exception as e:
        return ("error", type(e))


@needs_ext
def test_the_same_bytes_as_the_pure_packer() -> None:
    rng = random.Random(11)
    for _ in range(300):
        items = [[message(rng), *(value(rng) for _ in range(rng.randint(0, 5)))]
                 for _ in range(rng.choice([0, 1, 2, 15, 16, 17, rng.randint(0, 40)]))]
        prefix = rng.choice([b"", b"\x92\xa1A"])
        pure = outcome(pack_records, items, prefix)
        compiled = outcome(batch._compiled_pack_records, items, prefix)
        assert pure == compiled


@needs_ext
def test_every_integer_form() -> None:
    m = Message("t", b"p", 1, False, None, None, 0.0, "s")
    for n in [*EDGES, 1 << 64, -(1 << 63) - 1, 1 << 100]:
        items = [[m, b"B", None, n]]
        assert outcome(pack_records, items) == \
            outcome(batch._compiled_pack_records, items), n


@needs_ext
def test_bad_items_fail_alike() -> None:
    m = Message("t", b"p", 1, False, None, None, 0.0, "s")
    for items in ([[]], [[object()]], [[m, object()]]):
        pure = outcome(pack_records, items)
        compiled = outcome(batch._compiled_pack_records, items)
        assert pure[0] == compiled[0] == "error", items


def test_read_back_as_written() -> None:
    """With either packer, an entry's and a push's records are read as written."""
    rng = random.Random(5)
    messages = [message(rng) for _ in range(30)]
    for compiled in (False, True):
        _accel.use(compiled)
        try:
            data = batch._pack_records([[m, b"B,C", None, i] for i, m in enumerate(messages)])
            origin, items = read_entry([b"o", b"A", b"r", data])  # type: ignore[misc]
            push = batch._pack_records([[m, None, False] for m in messages],
                                       b"\x92" + batch._pack("A"))
            assert read_push(push)[0] == "A"
        finally:
            _accel.use_default()
        assert origin == "A"
        for i, (item, m) in enumerate(zip(items, messages)):
            assert item[1:] == [b"B,C", None, i]
            record = item[0]
            assert record[0] == FORMAT
            assert (record[1], record[2], record[3], record[4], record[6], record[7]) == \
                (m.topic, m.payload, m.qos, m.retain, m.received_at, m.sender)


def test_switched_with_the_codec() -> None:
    """``MQTT_TWISTED_PURE`` and ``codec._accel.use`` choose this one too."""
    try:
        _accel.use(False)
        assert batch._pack_records is pack_records
        _accel.use(True)
        assert (batch._pack_records is batch._compiled_pack_records) == (ext is not None)
    finally:
        _accel.use_default()


# --- reading: cluster/_entries.pyx's read_records against batch.read_records ----------


def normal(items: Any) -> Any:
    """A batch as the pure reader gives it: each message object as its stored form."""
    if type(items) is not list:
        return items
    out = []
    for item in items:
        if type(item) is list and item and type(item[0]) is Message:
            m = item[0]
            item = [[FORMAT, m.topic, m.payload, m.qos, m.retain, m.properties,
                     m.received_at, m.sender], *item[1:]]
            assert m.packet_id is None and m.wire is None
        out.append(item)
    return out


def read_alike(data: bytes) -> Any:
    pure = outcome(batch.read_records, data)
    compiled = outcome(batch._compiled_read_records, data)
    if compiled[0] == "ok":
        compiled = ("ok", normal(compiled[1]))
    # (repr: a NaN equals itself, and -0.0, 1 and True stay apart from 0.0, 1.0, 1)
    assert repr(pure) == repr(compiled), data[:80]
    return compiled


def plain_message(rng: random.Random) -> Message:
    """A message without properties: the compiled reader makes it itself."""
    m = message(rng)
    m.properties = {}
    return m


def batches(rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        items = [[plain_message(rng) if rng.random() < 0.9 else message(rng),
                  *(value(rng) for _ in range(rng.randint(0, 4)))]
                 for _ in range(rng.choice([0, 1, 2, 15, 16, 17, rng.randint(0, 30)]))]
        try:
            out.append(pack_records(items))
        except Exception:  # (a value msgpack refuses: nothing to read)
            pass
    return out


@needs_ext
def test_read_as_the_pure_reader_reads() -> None:
    """Valid batches: the same items, messages made without their __init__."""
    rng = random.Random(3)
    made = 0
    for data in batches(rng, 300):
        result = outcome(batch._compiled_read_records, data)
        made += result[0] == "ok" and any(type(i[0]) is Message for i in result[1])
        read_alike(data)
    assert made > 30  # (the rest hold a value it leaves to msgpack: read by the pure one)


@needs_ext
def test_cut_anywhere_and_mutated() -> None:
    """Every prefix of some batches, and random byte changes, insertions and deletions:
    the same items or the same error class as the pure reader."""
    rng = random.Random(8)
    for data in batches(rng, 40):
        for cut in range(0, len(data), max(1, len(data) // 200)):
            read_alike(data[:cut])
        for _ in range(100):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(mutated) + 1)
                kind = rng.random()
                if kind < 0.5 and at < len(mutated):
                    mutated[at] = rng.randrange(256)
                elif kind < 0.75:
                    mutated[at:at] = bytes([rng.randrange(256)])
                else:
                    del mutated[at:at + rng.randint(1, 3)]
            read_alike(bytes(mutated))


@needs_ext
def test_random_bytes() -> None:
    rng = random.Random(21)
    for _ in range(3000):
        read_alike(bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))))
        read_alike(b"\x91\x94\x98\x01" + rng.randbytes(rng.randint(0, 30)))


@needs_ext
def test_messages_made_in_c_are_whole_objects() -> None:
    """Made by tp_alloc and written into their slots: collected, copied, compared."""
    import gc
    import sys

    m = Message("t/é", b"p" * 300, 1, True, None, None, 1.5, "s")
    data = pack_records([[m, b"B", None, 7]])
    [[made, d, g, s]] = batch._compiled_read_records(data)
    assert type(made) is Message and (d, g, s) == (b"B", None, 7)
    assert (made.topic, made.payload, made.qos, made.retain, made.properties,
            made.received_at, made.sender, made.packet_id, made.wire) == \
        ("t/é", b"p" * 300, 1, True, {}, 1.5, "s", None, None)
    assert sys.getrefcount(made) == 2  # (the name and the call's argument: no leak)
    assert gc.is_tracked(made)
    copy = made.copy() if hasattr(made, "copy") else made
    assert copy.topic == "t/é"
    del made, copy
    gc.collect()


def test_read_entry_reads_either_way() -> None:
    """An ``r`` entry gives the same messages (``item_message``) with either reader."""
    from mqtt_twisted.cluster.batch import item_message

    rng = random.Random(2)
    messages = [plain_message(rng) for _ in range(20)] + [message(rng)]
    data = pack_records([[m, b"B", None, i] for i, m in enumerate(messages)])
    for compiled in (False, True):
        _accel.use(compiled)
        try:
            for payload in (data, pack_records([[m, b"B", None, 1] for m in messages[:20]])):
                _, items = read_entry([b"o", b"A", b"r", payload])  # type: ignore[misc]
                for item, m in zip(items, messages):
                    got = item_message(item)
                    assert (got.topic, got.payload, got.qos, got.sender) == \
                        (m.topic, m.payload, m.qos, m.sender)
        finally:
            _accel.use_default()


@needs_ext
def test_repeated_fields_read_as_one_object() -> None:
    """A topic, a sender and a destinations field repeated through a batch (a
    publisher's entry) are read once and shared; near misses (the same length, one
    byte apart; a str after a bin of the same bytes; nil between) are read apart, and
    everything reads as the pure reader reads it, cut anywhere too."""
    rng = random.Random(5)
    topics = ["a/b", "a/c", "a/b", "a/b", "a/bb", "", "a/b"]
    senders = ["pub", "pub", None, "pub", "puc", "pub", "pub"]
    destinations = [b"B", b"B", b"C", "B", None, b"B", b"B"]
    for _ in range(60):
        items = [[Message(rng.choice(topics), rng.choice([b"a/b", b"x"]), 1, False, None,
                          {}, 0.0, rng.choice(senders)),
                  rng.choice(destinations), None, rng.randint(0, 300)]
                 for _ in range(rng.randint(1, 40))]
        data = pack_records(items)
        got = read_alike(data)[1]
        for cut in range(0, len(data), 7):
            read_alike(data[:cut])
        read = batch._compiled_read_records(data)
        for before, item in itertools.pairwise(read):
            # The same value as the item before, in the same field: the same object.
            for old, new in ((before[0].topic, item[0].topic),
                             (before[0].sender, item[0].sender), (before[1], item[1])):
                if type(old) is type(new) and type(new) in (str, bytes) and old == new:
                    assert old is new
        assert len(got) == len(items)
    same = [[Message("t/x", b"p", 1, False, None, {}, 0.0, "pub"), b"B", None, i]
            for i in range(5)]
    read = batch._compiled_read_records(pack_records(same))
    assert len({id(item[0].topic) for item in read}) == 1
    assert len({id(item[0].sender) for item in read}) == 1
    assert len({id(item[1]) for item in read}) == 1


@needs_ext
def test_a_message_with_an_unset_slot_fails_alike() -> None:
    """Packed from its slots: one that was never set raises as getattr would."""
    m = Message.__new__(Message)
    m.topic = "t"
    with pytest.raises(AttributeError):
        batch.pack_records([[m, b"B", None, 1]])
    with pytest.raises(AttributeError):
        batch._compiled_pack_records([[m, b"B", None, 1]])
