# cython: language_level=3, boundscheck=False, wraparound=False
"""A batch of messages for a peer node packed in C: the compiled twin of
``PACK(with_records(items))`` (``cluster/batch.py``, ``pack_records``).

Why: packing a turn's entry was 8.4k instructions per crossing message at the
publisher's node (docs/cluster.md, "Benchmarks", session 11): ``with_records`` made a
list per message and unpacked each item with ``*rest``, msgpack walked the lists
(a type check chain per object), and every list was freed again.  This writes the
same msgpack bytes straight from each ``Message``'s slots, with no list in between.

The pure function is the specification: the bytes are the same, byte for byte
(``tests/test_cluster_entries.py`` compares them on random batches).  Only exact
``str``, ``bytes``, ``int`` (64-bit), ``float``, ``bool``, ``None`` and an empty
``dict`` are written here; any other value (properties, a subclass, a large int) is
packed by msgpack itself and its bytes spliced in, which msgpack's format allows
(an array's items are its header followed by each item's own encoding).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy


cdef struct Buffer:
    char *data
    Py_ssize_t size
    Py_ssize_t capacity


cdef int _grow(Buffer *buf, Py_ssize_t more) except -1:
    cdef Py_ssize_t want = buf.size + more
    cdef Py_ssize_t capacity = buf.capacity
    cdef char *data
    if want <= capacity:
        return 0
    while capacity < want:
        capacity *= 2
    data = <char *>PyMem_Realloc(buf.data, capacity)
    if data == NULL:
        raise MemoryError()
    buf.data = data
    buf.capacity = capacity
    return 0


cdef inline int _byte(Buffer *buf, unsigned char value) except -1:
    if buf.size >= buf.capacity:
        _grow(buf, 1)
    buf.data[buf.size] = <char>value
    buf.size += 1
    return 0


cdef inline int _bytes(Buffer *buf, const char *data, Py_ssize_t length) except -1:
    if buf.size + length > buf.capacity:
        _grow(buf, length)
    memcpy(buf.data + buf.size, data, length)
    buf.size += length
    return 0


cdef inline int _big_endian(Buffer *buf, unsigned char head, uint64_t value,
                            int width) except -1:
    cdef int i
    if buf.size + 1 + width > buf.capacity:
        _grow(buf, 1 + width)
    buf.data[buf.size] = <char>head
    for i in range(width):
        buf.data[buf.size + width - i] = <char>(value & 0xFF)
        value >>= 8
    buf.size += 1 + width
    return 0


cdef int _length(Buffer *buf, Py_ssize_t n, unsigned char fix, int fix_limit,
                 unsigned char head8, unsigned char head16, unsigned char head32) except -1:
    """A str, bin or array header (``head8`` 0: the kind has no 8-bit form)."""
    if n < fix_limit:
        return _byte(buf, fix | <unsigned char>n)
    if head8 and n < 0x100:
        return _big_endian(buf, head8, n, 1)
    if n < 0x10000:
        return _big_endian(buf, head16, n, 2)
    return _big_endian(buf, head32, n, 4)


cdef int _int(Buffer *buf, long long whole) except -1:
    """msgpack's choice of form: unsigned for positive values, signed otherwise."""
    cdef uint64_t positive
    if whole > 0:
        positive = <uint64_t>whole
        if positive < 0x80:
            return _byte(buf, <unsigned char>positive)
        if positive < 0x100:
            return _big_endian(buf, 0xCC, positive, 1)
        if positive < 0x10000:
            return _big_endian(buf, 0xCD, positive, 2)
        if positive < 0x100000000:
            return _big_endian(buf, 0xCE, positive, 4)
        return _big_endian(buf, 0xCF, positive, 8)
    if whole >= -32:
        return _byte(buf, <unsigned char>(whole & 0xFF))
    if whole >= -0x80:
        return _big_endian(buf, 0xD0, <uint64_t>whole, 1)
    if whole >= -0x8000:
        return _big_endian(buf, 0xD1, <uint64_t>whole, 2)
    if whole >= -0x80000000:
        return _big_endian(buf, 0xD2, <uint64_t>whole, 4)
    return _big_endian(buf, 0xD3, <uint64_t>whole, 8)


cdef int _value(Buffer *buf, object value, object pack) except -1:
    """One value: written here when it is one of the usual exact types, else packed
    by msgpack (``pack``) and spliced in."""
    cdef const char *data
    cdef Py_ssize_t length
    cdef double number
    cdef uint64_t bits
    cdef long long whole
    cdef int overflow = 0
    cdef type kind = type(value)
    if value is None:
        return _byte(buf, 0xC0)
    if value is True:
        return _byte(buf, 0xC3)
    if value is False:
        return _byte(buf, 0xC2)
    if kind is bytes:
        length = PyBytes_GET_SIZE(value)
        _length(buf, length, 0, 0, 0xC4, 0xC5, 0xC6)  # (bin has no fix form)
        return _bytes(buf, PyBytes_AS_STRING(value), length)
    if kind is str:
        data = PyUnicode_AsUTF8AndSize(value, &length)
        _length(buf, length, 0xA0, 32, 0xD9, 0xDA, 0xDB)
        return _bytes(buf, data, length)
    if kind is int:
        whole = PyLong_AsLongLongAndOverflow(value, &overflow)
        if not overflow:
            return _int(buf, whole)
        # (beyond 64 bits signed: msgpack's uint64 form, or its OverflowError, below)
    if kind is float:
        number = value
        memcpy(&bits, &number, 8)
        return _big_endian(buf, 0xCB, bits, 8)
    if kind is dict and not value:
        return _byte(buf, 0x80)
    packed = pack(value)
    return _bytes(buf, PyBytes_AS_STRING(packed), PyBytes_GET_SIZE(packed))


#: Where each slot of the message class lives in its objects (``use_message_type``).
cdef Py_ssize_t _slots[9]
cdef object _message_type = None
_SLOTS = ("topic", "payload", "qos", "retain", "packet_id", "properties", "received_at",
          "sender", "wire")


cdef inline object _get(object obj, int slot, str name):
    """A slot of a message of the known class, read at its offset; an unset one goes
    to getattr (which raises as Python would)."""
    cdef PyObject *value = (<PyObject **>((<char *><PyObject *>obj) + _slots[slot]))[0]
    if value == NULL:
        return getattr(obj, name)
    return <object>value


def pack_records(list items, object pack, int fmt, bytes prefix=b""):
    """``prefix`` and then ``pack(with_records(items))``'s bytes: ``items`` a list of
    ``[message, ...]`` lists, each message written as its stored form
    ``[fmt, topic, payload, qos, retain, properties, received_at, sender]``; ``pack``
    msgpack's packer (for the values this does not write itself)."""
    cdef Buffer buf
    cdef Py_ssize_t n = len(items)
    cdef Py_ssize_t i, k, width
    cdef object message
    cdef list item
    buf.capacity = 256 + 64 * n + PyBytes_GET_SIZE(prefix)
    buf.size = 0
    buf.data = <char *>PyMem_Malloc(buf.capacity)
    if buf.data == NULL:
        raise MemoryError()
    try:
        _bytes(&buf, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix))
        _length(&buf, n, 0x90, 16, 0, 0xDC, 0xDD)
        for i in range(n):
            item = items[i]
            width = len(item)
            if width == 0:
                raise ValueError("an item is [message, ...]")
            message = item[0]
            _length(&buf, width, 0x90, 16, 0, 0xDC, 0xDD)
            _byte(&buf, 0x98)  # the stored form: 8 fields
            _int(&buf, fmt)
            if type(message) is _message_type:
                # Straight from the slots (a getattr each was ~130 instructions).
                _value(&buf, _get(message, 0, "topic"), pack)
                _value(&buf, _get(message, 1, "payload"), pack)
                _value(&buf, _get(message, 2, "qos"), pack)
                _value(&buf, _get(message, 3, "retain"), pack)
                _value(&buf, _get(message, 5, "properties"), pack)
                _value(&buf, _get(message, 6, "received_at"), pack)
                _value(&buf, _get(message, 7, "sender"), pack)
            else:
                _value(&buf, message.topic, pack)
                _value(&buf, message.payload, pack)
                _value(&buf, message.qos, pack)
                _value(&buf, message.retain, pack)
                _value(&buf, message.properties, pack)
                _value(&buf, message.received_at, pack)
                _value(&buf, message.sender, pack)
            for k in range(1, width):
                _value(&buf, item[k], pack)
        return PyBytes_FromStringAndSize(buf.data, buf.size)
    finally:
        PyMem_Free(buf.data)


# --- reading a batch (the receiving node) --------------------------------------------

from cpython.object cimport PyTypeObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.unicode cimport PyUnicode_DecodeUTF8


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        const char *name
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member
    ctypedef PyObject *(*allocfunc)(PyTypeObject *, Py_ssize_t)
    ctypedef struct PyTypeObjectAlloc "PyTypeObject":
        allocfunc tp_alloc


class _Unusual(Exception):
    """Something this reader leaves to msgpack (the whole batch is read by it)."""


cdef struct Reader:
    const unsigned char *data
    Py_ssize_t pos
    Py_ssize_t end


cdef inline uint64_t _uint(Reader *r, int width) except? 0xFFFFFFFFFFFFFFFF:
    cdef uint64_t value = 0
    cdef int i
    if r.pos + width > r.end:
        raise _Unusual()
    for i in range(width):
        value = (value << 8) | r.data[r.pos + i]
    r.pos += width
    return value


cdef object _scalar(Reader *r):
    """One value among nil, booleans, integers, float64, str and bin; anything else
    (arrays, maps, float32, extensions), or bytes cut short: _Unusual."""
    cdef unsigned char head
    cdef Py_ssize_t length
    cdef uint64_t bits
    cdef double number
    if r.pos >= r.end:
        raise _Unusual()
    head = r.data[r.pos]
    r.pos += 1
    if head < 0x80:
        return <long>head
    if head >= 0xE0:
        return <long>(<signed char>head)
    if head == 0xC0:
        return None
    if head == 0xC2:
        return False
    if head == 0xC3:
        return True
    if 0xA0 <= head <= 0xBF or head == 0xD9 or head == 0xDA or head == 0xDB:
        length = (head & 0x1F) if head <= 0xBF else <Py_ssize_t>_uint(r, 1 << (head - 0xD9))
        if r.pos + length > r.end:
            raise _Unusual()
        try:
            value = PyUnicode_DecodeUTF8(<const char *>r.data + r.pos, length, NULL)
        except UnicodeDecodeError:
            raise _Unusual()
        r.pos += length
        return value
    if head == 0xC4 or head == 0xC5 or head == 0xC6:
        length = <Py_ssize_t>_uint(r, 1 << (head - 0xC4))
        if r.pos + length > r.end:
            raise _Unusual()
        value = PyBytes_FromStringAndSize(<const char *>r.data + r.pos, length)
        r.pos += length
        return value
    if 0xCC <= head <= 0xCF:
        return _uint(r, 1 << (head - 0xCC))
    if 0xD0 <= head <= 0xD3:
        bits = _uint(r, 1 << (head - 0xD0))
        if head == 0xD0:
            return <long long>(<signed char>bits)
        if head == 0xD1:
            return <long long>(<short>bits)
        if head == 0xD2:
            return <long long>(<int>bits)
        return <long long>bits
    if head == 0xCB:
        bits = _uint(r, 8)
        memcpy(&number, &bits, 8)
        return number
    raise _Unusual()


cdef Py_ssize_t _array(Reader *r) except -1:
    """An array header's length (another value: _Unusual)."""
    cdef unsigned char head
    if r.pos >= r.end:
        raise _Unusual()
    head = r.data[r.pos]
    r.pos += 1
    if 0x90 <= head <= 0x9F:
        return head & 0x0F
    if head == 0xDC:
        return <Py_ssize_t>_uint(r, 2)
    if head == 0xDD:
        return <Py_ssize_t>_uint(r, 4)
    raise _Unusual()


def use_message_type(cls):
    """Learn where ``cls``' slots are (``mqtt_twisted.message.Message``'s, at import)."""
    global _message_type
    for i, name in enumerate(_SLOTS):
        descriptor = cls.__dict__[name]
        if type(descriptor).__name__ != "member_descriptor":
            raise TypeError(f"{cls.__name__}.{name} is not a slot")
        _slots[i] = (<PyMemberDescrObject *>descriptor).d_member.offset
    _message_type = cls


cdef inline void _set(object obj, int slot, object value):
    Py_INCREF(value)
    (<PyObject **>((<char *><PyObject *>obj) + _slots[slot]))[0] = <PyObject *>value


cdef struct Last:
    # The last value read into one field of a batch's items, and its bytes in the
    # batch: the next item's same bytes give the same object (borrowed: the items
    # list the reader builds holds it).
    PyObject *value
    const unsigned char *at
    Py_ssize_t length


cdef object _same(Reader *r, Last *last):
    """``_scalar``, but a str or bin whose bytes equal the last one's in this field is
    that object again: a publisher's topic, its client id and the destinations repeat
    through an entry, and a repeated str is neither decoded nor hashed again (its
    hash is cached for the topic tree's and the route cache's lookups)."""
    cdef Py_ssize_t start = r.pos
    cdef Py_ssize_t length
    if last.value != NULL and r.pos + last.length <= r.end and memcmp(
            r.data + r.pos, last.at, last.length) == 0:
        r.pos += last.length
        return <object>last.value
    value = _scalar(r)
    length = r.pos - start
    if type(value) is str or type(value) is bytes:
        last.value = <PyObject *>value
        last.at = r.data + start
        last.length = length
    return value


cdef struct Lasts:
    Last topic
    Last sender
    Last destinations


cdef object _message(Reader *r, long fmt, Lasts *lasts):
    """A stored message (an array of 8) without properties, as a new message object
    (``message_from_record``'s fields, written into its slots)."""
    if _array(r) != 8 or _scalar(r) != fmt:
        raise _Unusual()
    topic = _same(r, &lasts.topic)
    payload = _scalar(r)
    qos = _scalar(r)
    retain = _scalar(r)
    if r.pos >= r.end or r.data[r.pos] != 0x80:
        raise _Unusual()  # properties: message_from_record's work
    r.pos += 1
    received_at = _scalar(r)
    sender = _same(r, &lasts.sender)
    cdef PyTypeObject *kind = <PyTypeObject *>_message_type
    cdef PyObject *made = (<PyTypeObjectAlloc *>kind).tp_alloc(kind, 0)
    if made == NULL:
        raise MemoryError()
    message = <object>made
    Py_DECREF(message)  # (tp_alloc's reference: ``message`` holds its own)
    _set(message, 0, topic)
    _set(message, 1, payload)
    _set(message, 2, qos)
    _set(message, 3, retain)
    _set(message, 4, None)
    _set(message, 5, {})
    _set(message, 6, received_at)
    _set(message, 7, sender)
    _set(message, 8, None)
    return message


def read_records(bytes data, long fmt, object fallback):
    """A stream entry's ``r`` field read: its items, each message (the first of an item)
    made here as a message object when it has no properties; ``fallback(data)`` (the
    pure reader) for anything else, or for bytes that are not such a batch."""
    cdef Reader r
    cdef Lasts lasts
    cdef Py_ssize_t n, i, k, width
    lasts.topic.value = lasts.sender.value = lasts.destinations.value = NULL
    if _message_type is None:
        return fallback(data)
    r.data = <const unsigned char *>PyBytes_AS_STRING(data)
    r.pos = 0
    r.end = PyBytes_GET_SIZE(data)
    try:
        n = _array(&r)
        items = []
        for i in range(n):
            width = _array(&r)
            if width < 1:
                raise _Unusual()
            item = [_message(&r, fmt, &lasts)]
            if width > 1:
                item.append(_same(&r, &lasts.destinations))
            for k in range(2, width):
                item.append(_scalar(&r))
            items.append(item)
        if r.pos != r.end:
            raise _Unusual()
        return items
    except _Unusual:
        return fallback(data)
