# cython: language_level=3, boundscheck=False, wraparound=False, binding=True
"""Compiled twins of the codec's hottest pure functions (optional; see docs/speedups.md).

The pure-Python functions are the specification: ``stream.StreamDecoder.feed``,
``_decode.decode_publish``, ``_encode.encode_publish`` and ``topics.topic_matches``.
Each function here computes the same result and raises the same error class with the
same message; every path that is not hot (a packet other than PUBLISH, a property block,
a bytes-like that is not ``bytes``) calls the pure function itself, so there is one
implementation of every rule that is not on the per-message path.
tests/test_speedups.py compares the two on random and malformed input.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyTypeObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcpy

from dataclasses import fields as _fields
from types import MemberDescriptorType

from mqtt_twisted.codec._decode import decode_body
from mqtt_twisted.codec.packets import (
    Connect,
    Disconnect,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    Subscription,
)
from mqtt_twisted.codec.properties import NO_LIMITS, decode_properties, encode_properties
from mqtt_twisted.constants import MAX_REMAINING_LENGTH, PacketType, PropertyId
from mqtt_twisted.errors import (
    InvalidTopicName,
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    ProtocolError,
    ValidationError,
)

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    object PyType_GenericAlloc(PyTypeObject* type, Py_ssize_t nitems)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object s)
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL
    void PyObject_GC_UnTrack(void* op)
    void Py_INCREF(object o)
    void Py_XDECREF(PyObject* o)
    ctypedef struct PyObject
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member

cdef object _new = object.__new__
#: Whether Publish has exactly the fields _decode_publish sets itself and no __post_init__
#: (else it calls the class).
cdef bint _SLOTS_KNOWN = not hasattr(Publish, "__post_init__") and [
    f.name for f in _fields(Publish)] == [
    "topic", "payload", "qos", "retain", "dup", "packet_id", "properties", "raw"]
PUBLISH_FIELDS_KNOWN = _SLOTS_KNOWN  # (tests/test_speedups.py: a new field fails a test)
#: The same for Subscribe and Subscription (``_decode_subscribe``).
cdef bint _SUBSCRIBE_KNOWN = (
    not hasattr(Subscribe, "__post_init__") and not hasattr(Subscription, "__post_init__")
    and [f.name for f in _fields(Subscribe)] == ["packet_id", "subscriptions", "properties"]
    and [f.name for f in _fields(Subscription)] == [
        "topic_filter", "qos", "no_local", "retain_as_published", "retain_handling"])
SUBSCRIBE_FIELDS_KNOWN = _SUBSCRIBE_KNOWN
#: The same for the four acks (``_ack``): a QoS 1 message has one to decode, QoS 2 three.
cdef bint _ACKS_KNOWN = all(
    not hasattr(cls, "__post_init__")
    and [f.name for f in _fields(cls)] == ["packet_id", "reason_code", "properties"]
    for cls in (PubAck, PubRec, PubRel, PubComp))
ACK_FIELDS_KNOWN = _ACKS_KNOWN
#: The same for Connect (``_connect``): every connection's first packet.
cdef bint _CONNECT_KNOWN = not hasattr(Connect, "__post_init__") and [
    f.name for f in _fields(Connect)] == [
    "client_id", "protocol_level", "clean_start", "keep_alive", "will", "username",
    "password", "properties", "protocol_name"]
CONNECT_FIELDS_KNOWN = _CONNECT_KNOWN
#: The same for Disconnect (``decode_disconnect``): every clean close's packet.
cdef bint _DISCONNECT_KNOWN = not hasattr(Disconnect, "__post_init__") and [
    f.name for f in _fields(Disconnect)] == ["reason_code", "properties"]


cdef Py_ssize_t _offset(cls, str name):
    """Where ``cls``'s slot ``name`` sits in its instances (0: not a plain slot)."""
    descr = cls.__dict__.get(name)
    if type(descr) is not MemberDescriptorType:
        return 0
    return (<PyMemberDescrObject*><PyObject*>descr).d_member.offset


# A Subscription's fields written into its slots, not through attribute lookups.
cdef Py_ssize_t _S_FILTER = _offset(Subscription, "topic_filter")
cdef Py_ssize_t _S_QOS = _offset(Subscription, "qos")
cdef Py_ssize_t _S_NO_LOCAL = _offset(Subscription, "no_local")
cdef Py_ssize_t _S_RAP = _offset(Subscription, "retain_as_published")
cdef Py_ssize_t _S_HANDLING = _offset(Subscription, "retain_handling")
cdef bint _SUB_SLOTS = (_SUBSCRIBE_KNOWN and _S_FILTER and _S_QOS and _S_NO_LOCAL and _S_RAP
                        and _S_HANDLING)
# A Subscription allocated as ``object.__new__`` allocates it (the type's tp_alloc,
# PyType_GenericAlloc for a class defined in Python), without the call through
# ``object.__new__``'s wrapper: about 600 instructions a filter, a tenth of the path.
# Only while the class has no __new__ of its own and is not abstract.
cdef object _SUBSCRIPTION = Subscription
cdef bint _SUB_ALLOC = (_SUB_SLOTS and Subscription.__new__ is object.__new__
                        and not getattr(Subscription, "__abstractmethods__", None))


cdef inline void _put(object o, Py_ssize_t offset, object value):
    """``o``'s slot at ``offset`` set to ``value`` (what a member descriptor's set does)."""
    cdef PyObject** slot = <PyObject**>((<char*><PyObject*>o) + offset)
    cdef PyObject* old = slot[0]
    Py_INCREF(value)
    slot[0] = <PyObject*>value
    Py_XDECREF(old)
cdef int _SUBSCRIBE = int(PacketType.SUBSCRIBE)
cdef int _PUBLISH = int(PacketType.PUBLISH)
cdef object _TOPIC_ALIAS = int(PropertyId.TOPIC_ALIAS)
cdef Py_ssize_t _MAX_REMAINING = MAX_REMAINING_LENGTH
# The pure functions, set by _accel.py: what the compiled ones hand unusual input to.
_pure_feed = _pure_decode_publish = _pure_encode_publish = None
_pure_decode_subscribe = _pure_encode_publishes = _pure_encode_publish_plain = None
_pure_decode_disconnect = None


cdef object _decode_publish(int flags, object data, const unsigned char* buf,
                            Py_ssize_t pos, Py_ssize_t end, int version, object limits):
    """``_decode.decode_publish`` for a body in ``buf[pos:end]`` (``buf`` is ``data``'s)."""
    cdef int qos = (flags >> 1) & 0x03
    cdef bint dup = flags & 0x08
    cdef Py_ssize_t stop
    cdef object packet_id = None
    cdef object properties
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    if dup and not qos:
        raise MalformedPacket("DUP set on a QoS 0 PUBLISH")
    if pos + 2 > end:
        raise MalformedPacket("PUBLISH is truncated")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("PUBLISH topic runs past the packet")
    try:
        topic = PyUnicode_DecodeUTF8(<const char*>buf + pos + 2, stop - pos - 2, NULL)
    except UnicodeDecodeError:
        raise MalformedPacket("PUBLISH topic is not well-formed UTF-8") from None
    # UTF-8 continuation bytes are >= 0x80: a byte scan finds exactly these characters.
    if (memchr(buf + pos + 2, 0x2B, stop - pos - 2) != NULL
            or memchr(buf + pos + 2, 0x23, stop - pos - 2) != NULL
            or memchr(buf + pos + 2, 0, stop - pos - 2) != NULL):
        if memchr(buf + pos + 2, 0, stop - pos - 2) != NULL:
            raise MalformedPacket("PUBLISH topic contains U+0000")
        raise InvalidTopicName(f"PUBLISH topic {topic!r} is invalid")
    pos = stop
    if qos:
        if pos + 2 > end:
            raise MalformedPacket("PUBLISH packet identifier is truncated")
        packet_id = (buf[pos] << 8) | buf[pos + 1]
        if not packet_id:
            raise MalformedPacket("PUBLISH with packet identifier 0")
        pos += 2
    if version == 5:
        if pos < end and not buf[pos]:
            properties = {}
            pos += 1
        else:
            properties, pos = decode_properties(data, pos, end, _PUBLISH, limits)
        if not topic and _TOPIC_ALIAS not in properties:
            raise ProtocolError("empty PUBLISH topic without a topic alias")
    else:
        properties = {}
        if not topic:
            raise InvalidTopicName("empty PUBLISH topic")
    payload = PyBytes_FromStringAndSize(<const char*>buf + pos, end - pos)
    if not _SLOTS_KNOWN:
        return Publish(topic, payload, qos, bool(flags & 1), bool(dup), packet_id, properties)
    # What the dataclass's __init__ does, without its Python frame (half the cost of a
    # small PUBLISH): every field set, in the order _SLOTS_KNOWN checked at import.
    packet = _new(Publish)
    packet.topic = topic
    packet.payload = payload
    packet.qos = qos
    packet.retain = bool(flags & 1)
    packet.dup = bool(dup)
    packet.packet_id = packet_id
    packet.properties = properties
    packet.raw = None
    return packet


cdef object _ack(int first, int packet_id):
    """The usual ack, a packet id alone (``_decode.decode_ack``'s first case), without
    the Python frames of ``decode_body``, ``decode_ack`` and the dataclass's __init__."""
    cls = PubAck if first == 0x40 else PubRec if first == 0x50 else (
        PubRel if first == 0x62 else PubComp)
    ack = _new(cls)
    ack.packet_id = packet_id
    ack.reason_code = 0
    ack.properties = {}
    return ack


cdef inline object _ascii(const unsigned char* data, Py_ssize_t size):
    """``data[:size]`` as a str when it is all ASCII (None otherwise): copied into a
    new one-byte str, without the general UTF-8 decoder's set-up (a topic filter is
    almost always ASCII; it was a third of the decoder's work per filter)."""
    cdef Py_ssize_t i
    for i in range(size):
        if data[i] & 0x80:
            return None
    text = PyUnicode_New(size, 127)
    if size:
        memcpy(PyUnicode_DATA(text), data, size)
    return text


cdef object _plain_text(const unsigned char* buf, Py_ssize_t* at, Py_ssize_t end):
    """The string at ``at[0]`` when it is ASCII without U+0000 and within ``end``
    (``at[0]`` moved past it); None otherwise, ``at[0]`` left as it was."""
    cdef Py_ssize_t pos = at[0], stop
    if pos + 2 > end:
        return None
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end or memchr(buf + pos + 2, 0, stop - pos - 2) != NULL:
        return None
    text = _ascii(buf + pos + 2, stop - pos - 2)
    if text is not None:
        at[0] = stop
    return text


cdef object _connect(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end):
    """``_decode.decode_connect`` for the usual CONNECT: "MQTT" at level 4, or 5 with
    an empty property block, no will, an ASCII client id and user name without U+0000,
    nothing after.  None for anything else, which ``decode_body`` decodes (or refuses)
    as before; here without its Python frames (``decode_body``, ``decode_connect``,
    ``decode_string`` twice, ``_no_trailing``, the dataclass's __init__)."""
    cdef int level, cflags
    cdef Py_ssize_t stop
    if not _CONNECT_KNOWN or end - pos < 12 or not (
            buf[pos] == 0 and buf[pos + 1] == 4 and buf[pos + 2] == 77  # \0\4 "MQTT"
            and buf[pos + 3] == 81 and buf[pos + 4] == 84 and buf[pos + 5] == 84):
        return None
    level = buf[pos + 6]
    cflags = buf[pos + 7]
    # Reserved bit, a will (flag, QoS, retain), or a password without a user name.
    if (level != 4 and level != 5) or cflags & 0x3D or (cflags & 0xC0) == 0x40:
        return None
    keep_alive = (buf[pos + 8] << 8) | buf[pos + 9]
    pos += 10
    if level == 5:
        if buf[pos]:  # (properties: the pure decoder's)
            return None
        pos += 1
    client_id = _plain_text(buf, &pos, end)
    if client_id is None:
        return None
    username = password = None
    if cflags & 0x80:
        username = _plain_text(buf, &pos, end)
        if username is None:
            return None
    if cflags & 0x40:
        if pos + 2 > end:
            return None
        stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
        if stop > end:
            return None
        password = PyBytes_FromStringAndSize(<const char*>buf + pos + 2, stop - pos - 2)
        pos = stop
    if pos != end:
        return None
    packet = _new(Connect)
    packet.client_id = client_id
    packet.protocol_level = level
    packet.clean_start = bool(cflags & 0x02)
    packet.keep_alive = keep_alive
    packet.will = None
    packet.username = username
    packet.password = password
    packet.properties = {}
    packet.protocol_name = ""
    return packet


cdef object _decode_subscribe(object data, const unsigned char* buf, Py_ssize_t pos,
                              Py_ssize_t end, int version, object limits):
    """``_decode.decode_subscribe`` for a body in ``buf[pos:end]``: the filters of a
    SUBSCRIBE of 100 are decoded in one loop, without a Python frame per filter."""
    cdef Py_ssize_t stop
    cdef int options, qos, handling
    cdef object packet_id, properties, text, sub, no_local, rap
    if pos + 2 > end:
        raise MalformedPacket("two-byte integer runs past the packet")
    packet_id = (buf[pos] << 8) | buf[pos + 1]
    if not packet_id:
        raise MalformedPacket("packet identifier 0")  # [MQTT-2.3.1-1]
    pos += 2
    if version == 5:
        properties, pos = decode_properties(data, pos, end, _SUBSCRIBE, limits)
    else:
        properties = {}
    subscriptions = []
    while pos < end:
        if pos + 2 > end:
            raise MalformedPacket("length prefix runs past the packet")
        stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
        if stop > end:
            raise MalformedPacket("string runs past the packet")
        text = _ascii(buf + pos + 2, stop - pos - 2)
        if text is None:  # not ASCII: UTF-8 checked by the decoder
            try:
                text = PyUnicode_DecodeUTF8(<const char*>buf + pos + 2, stop - pos - 2, NULL)
            except UnicodeDecodeError as e:
                raise MalformedPacket(f"string is not well-formed UTF-8: {e.reason}") from None
        if memchr(buf + pos + 2, 0, stop - pos - 2) != NULL:
            raise MalformedPacket("string contains U+0000")
        pos = stop
        if pos >= end:
            raise MalformedPacket("SUBSCRIBE filter without options")
        options = buf[pos]
        pos += 1
        qos = options & 0x03
        if version == 5:
            if options & 0xC0:
                raise MalformedPacket("SUBSCRIBE option reserved bits set")  # [MQTT-3.8.3-5]
            if qos == 3:
                raise ProtocolError("SUBSCRIBE requests QoS 3")
            handling = (options >> 4) & 0x03
            if handling == 3:
                raise ProtocolError("SUBSCRIBE retain handling 3")
            no_local = bool(options & 0x04)
            rap = bool(options & 0x08)
        else:
            if options & 0xFC or qos == 3:
                raise MalformedPacket("SUBSCRIBE QoS byte reserved bits set or QoS 3")
            handling = 0
            no_local = rap = False
        if _SUB_SLOTS:
            # Its fields are atoms: off the collector's lists, like the broker's
            # options records (core/_subscribe.pyx).
            sub = (PyType_GenericAlloc(<PyTypeObject*>_SUBSCRIPTION, 0) if _SUB_ALLOC
                   else _new(Subscription))
            _put(sub, _S_FILTER, text)
            _put(sub, _S_QOS, qos)
            _put(sub, _S_NO_LOCAL, no_local)
            _put(sub, _S_RAP, rap)
            _put(sub, _S_HANDLING, handling)
            PyObject_GC_UnTrack(<void*>sub)
        elif _SUBSCRIBE_KNOWN:
            sub = _new(Subscription)
            sub.topic_filter = text
            sub.qos = qos
            sub.no_local = no_local
            sub.retain_as_published = rap
            sub.retain_handling = handling
        else:
            sub = Subscription(text, qos, no_local, rap, handling)
        subscriptions.append(sub)
    if not subscriptions:
        raise ProtocolError("SUBSCRIBE without topic filters")  # [MQTT-3.8.3-3]
    if not _SUBSCRIBE_KNOWN:
        return Subscribe(packet_id, subscriptions, properties)
    packet = _new(Subscribe)
    packet.packet_id = packet_id
    packet.subscriptions = subscriptions
    packet.properties = properties
    return packet


def decode_disconnect(flags, buf, pos, end, version, limits=NO_LIMITS):
    """``_decode``'s DISCONNECT decoder, compiled for the usual one, an empty body (a
    reason code 0 without properties): built without the Python frames of the decoder,
    ``_no_trailing`` and the dataclass's __init__; any other body goes there."""
    if pos != end or not _DISCONNECT_KNOWN:
        return _pure_decode_disconnect(flags, buf, pos, end, version, limits)
    packet = _new(Disconnect)
    packet.reason_code = 0
    packet.properties = {}
    return packet


def decode_subscribe(flags, buf, pos, end, version, limits=NO_LIMITS):
    """``_decode.decode_subscribe``, compiled (``bytes`` only; other bytes-likes go there)."""
    if type(buf) is not bytes:
        return _pure_decode_subscribe(flags, buf, pos, end, version, limits)
    if not 0 <= pos <= end <= PyBytes_GET_SIZE(buf):
        raise ValueError("pos and end must lie inside buf")
    return _decode_subscribe(buf, <const unsigned char*>PyBytes_AS_STRING(buf), pos, end,
                             5 if version == 5 else 0, limits)


def decode_publish(flags, buf, pos, end, version, limits=NO_LIMITS):
    """``_decode.decode_publish``, compiled (``bytes`` only; other bytes-likes go there)."""
    if type(buf) is not bytes:
        return _pure_decode_publish(flags, buf, pos, end, version, limits)
    if not 0 <= pos <= end <= PyBytes_GET_SIZE(buf):
        raise ValueError("pos and end must lie inside buf")
    return _decode_publish(flags, buf, <const unsigned char*>PyBytes_AS_STRING(buf), pos, end,
                           5 if version == 5 else 0, limits)


def feed(self, data, budget=0):
    """``StreamDecoder.feed``, compiled: the framing loop and PUBLISH bodies in C."""
    cdef Py_ssize_t pos = 0, n, length, header, total, end, shift, need = 0, limit
    cdef Py_ssize_t left
    cdef int first, byte, ver
    cdef const unsigned char* buf
    self.more = False
    pending = self._pending
    if pending:
        pending.append(data)
        self._pending_size += len(data)
        if self._pending_size < self._need or self._pending_size < 2:
            return []
        data = b"".join(pending)
        self._pending = ()
        self._pending_size = 0
    if type(data) is not bytes:
        return _pure_feed(self, data, budget)
    packets = []
    n = PyBytes_GET_SIZE(data)
    buf = <const unsigned char*>PyBytes_AS_STRING(data)
    version = self.version
    ver = -1 if version is None else version
    limits = self.limits
    limit = limits.max_packet_size if version is not None else limits.connect_packet_size
    left = budget or -1
    try:
        while n - pos >= 2:
            if not left:
                self.more = True
                break
            left -= 1
            first = buf[pos]
            if ver == -1 and first >> 4 != 1:
                raise ProtocolError("the first packet must be CONNECT")
            length = buf[pos + 1]
            header = 2
            if length & 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    if pos + header >= n:
                        if length + (<Py_ssize_t>1 << shift) + header > limit:
                            raise PacketTooLarge(f"packet exceeds the limit of {limit} bytes")
                        length = -1
                        break
                    byte = buf[pos + header]
                    header += 1
                    length |= (<Py_ssize_t>(byte & 0x7F)) << shift
                    if not byte & 0x80:
                        if not byte:
                            raise MalformedPacket("remaining length is not in its shortest form")
                        break
                    if header == 5:
                        raise MalformedPacket("remaining length longer than four bytes")
                    shift += 7
                if length < 0:
                    break
            total = header + length
            if total > limit:
                raise PacketTooLarge(f"packet of {total} bytes exceeds the limit of {limit}")
            end = pos + total
            if end > n:
                need = total
                break
            if first >> 4 == 3:
                packet = _decode_publish(first & 0x0F, data, buf, pos + header, end, ver, limits)
                if first == 0x30:
                    packet.raw = data[pos:end] if pos or end != n else data
            elif (total == 4 and _ACKS_KNOWN and (first == 0x40 or first == 0x50
                                                   or first == 0x62 or first == 0x70)
                  and (buf[pos + 2] or buf[pos + 3])):
                packet = _ack(first, (buf[pos + 2] << 8) | buf[pos + 3])
            elif first == 0x82 and ver != -1:
                packet = _decode_subscribe(data, buf, pos + header, end, ver, limits)
            else:
                packet = _connect(buf, pos + header, end) if first == 0x10 and ver == -1 else None
                if packet is None:
                    packet = decode_body(first, data, pos + header, end, version, limits)
                if ver == -1 and type(packet) is Connect:
                    self.version = version = packet.protocol_level
                    ver = version
                    limit = limits.max_packet_size
            packets.append(packet)
            pos = end
    except MQTTError as e:
        e.packets = packets
        self._pending = ()
        self._pending_size = self._need = 0
        raise
    self._need = need
    if pos < n:
        rest = data[pos:] if pos else data
        self._pending = [rest]
        self._pending_size = len(rest)
    return packets


# The encoders and topic matching (one module, two files: each under 600 lines).
include "_speedups_encode.pxi"
