# cython: language_level=3, boundscheck=False, wraparound=False
"""``resp.Parser.feed`` and ``resp.encode_command`` in C: the usual RESP tokens scanned
in place, and commands written into one buffer.

Why: the pure parser costs about 10k instructions a token (``bytearray.find`` through
its argument parser, a ``bytes`` per header line, the array stack in Python), and a
3-node cluster reads 0.34 tokens a message, three times 2 nodes' (docs/cluster.md,
"Compiled twins of the crossing path").  Here a header line is scanned where it lies,
its length read as digits, and only the values are made into objects.

The pure method is the specification.  This one takes what Redis usually sends the
cluster: bulk strings and arrays with plain lengths, simple strings, small integers.
At any other token (an error reply, a null, a sign, a length out of range, bytes that
are not RESP) it leaves the buffer and the array stack as the pure parser keeps them
between reads, and the pure parser goes on from that token, raising its own errors
(``tests/test_cluster_resp_twin.py`` compares the two on random, mangled and cut
streams).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcpy


cdef inline Py_ssize_t _digits(const char *p, Py_ssize_t length, Py_ssize_t most):
    """The number ``p[:length]`` spells in ASCII digits, or -1 (none, another byte, or
    more than ``most`` digits)."""
    cdef Py_ssize_t value = 0, i
    if length <= 0 or length > most:
        return -1
    for i in range(length):
        if p[i] < 48 or p[i] > 57:
            return -1
        value = value * 10 + (p[i] - 48)
    return value


def feed(self, data):
    """``Parser.feed``: the replies ``data`` completes."""
    cdef bytearray buf
    cdef list stack, replies, top
    cdef const char *base
    cdef const char *hit
    cdef Py_ssize_t n, pos = 0, eol, length, stop, limit
    cdef char kind
    cdef object value
    if type(data) is not bytes:
        return _pure_feed(self, data)
    buf = self._buffer
    stack = self._stack
    if not buf and not stack and data.count(b":1\r\n") << 2 == len(data):
        return [1] * (len(data) >> 2)  # (the pure parser's shortcut, as it is)
    buf += data
    replies = []
    n = PyByteArray_GET_SIZE(buf)
    base = PyByteArray_AS_STRING(buf)
    while pos < n:
        # The header line's CRLF, where the pure parser looks for it (below MAX_LINE).
        limit = n if n <= pos + MAX_LINE else pos + MAX_LINE
        eol = -1
        hit = <const char *>memchr(base + pos + 1, 13, limit - pos - 1) if limit > pos + 1 else NULL
        while hit != NULL:
            if hit - base + 1 < limit and hit[1] == 10:
                eol = hit - base
                break
            hit = <const char *>memchr(hit + 1, 13, limit - (hit - base) - 1) if hit - base + 1 < limit else NULL
        if eol < 0:
            if n - pos >= MAX_LINE:
                break  # (the pure parser raises)
            pos = -pos - 1  # the rest has not arrived: keep it, nothing unusual
            break
        kind = base[pos]
        if kind == 36:  # $ bulk string
            length = _digits(base + pos + 1, eol - pos - 1, 8)
            if length < 0:
                break
            stop = eol + 2 + length
            if stop + 2 > n:
                pos = -pos - 1  # the rest of it has not arrived
                break
            if base[stop] != 13 or base[stop + 1] != 10:
                break
            value = PyBytes_FromStringAndSize(base + eol + 2, length)
            pos = stop + 2
        elif kind == 42:  # * array
            length = _digits(base + pos + 1, eol - pos - 1, 7)
            if length < 0 or (length > 0 and len(stack) >= MAX_DEPTH):
                break
            pos = eol + 2
            if length > 0:
                stack.append([[], length])
                continue
            value = []
        elif kind == 43:  # + simple string
            value = Status(PyBytes_FromStringAndSize(base + pos + 1, eol - pos - 1))
            pos = eol + 2
        elif kind == 58:  # : integer, without a sign
            length = _digits(base + pos + 1, eol - pos - 1, 18)
            if length < 0:
                break
            value = length
            pos = eol + 2
        else:
            break
        while stack:  # the value completes its array, which may complete its own...
            top = stack[len(stack) - 1]
            (<list>top[0]).append(value)
            top[1] -= 1
            if top[1]:
                break
            value = top[0]
            stack.pop()
        else:
            replies.append(value)
    if pos < 0:  # stopped for want of bytes
        del buf[:-pos - 1]
        return replies
    del buf[:pos]
    if pos < n:  # an unusual token: the pure parser goes on from it
        replies += _pure_feed(self, b"")
    return replies


# --- commands ---
#
# Why: the pure ``encode_command`` spends some 26 bytecodes an argument (a type test, a
# length formatted, three list appends), about 260 an XADD, on every command a node
# sends; a 3-node cluster's crossing messages paid ~20 bytecodes each for it
# (docs/cluster.md, "Compiled twins of the crossing path").  Here the size is summed
# first and every argument copied once into the one bytes object returned.  An argument
# that is not ``bytes`` is made bytes by the pure module's ``_data``, with its errors.


cdef inline Py_ssize_t _width(Py_ssize_t value):
    """Decimal digits of ``value`` (>= 0)."""
    cdef Py_ssize_t digits = 1
    while value >= 10:
        value //= 10
        digits += 1
    return digits


cdef inline char *_header(char *p, char kind, Py_ssize_t value):
    """``kind``, ``value`` in digits and CRLF at ``p``; where they end."""
    cdef Py_ssize_t digits = _width(value), i
    p[0] = kind
    for i in range(digits, 0, -1):
        p[i] = <char>(48 + value % 10)
        value //= 10
    p[digits + 1] = 13
    p[digits + 2] = 10
    return p + digits + 3


cdef tuple _as_bytes(tuple args):
    """``args`` with every argument bytes: ``args`` itself, usually."""
    cdef object arg
    for arg in args:
        if type(arg) is not bytes:
            return tuple([a if type(a) is bytes else _data(a) for a in args])
    return args


cdef Py_ssize_t _encoded_size(tuple args):
    cdef Py_ssize_t total = 3 + _width(len(args)), size
    cdef object arg
    for arg in args:
        size = PyBytes_GET_SIZE(arg)
        total += size + _width(size) + 5
    return total


cdef char *_write(char *p, tuple args):
    cdef Py_ssize_t size
    cdef object arg
    p = _header(p, 42, len(args))  # "*": an array of bulk strings
    for arg in args:
        size = PyBytes_GET_SIZE(arg)
        p = _header(p, 36, size)  # "$"
        memcpy(p, PyBytes_AS_STRING(arg), size)
        p[size] = 13
        p[size + 1] = 10
        p += size + 2
    return p


def encode_command(*args):
    """``resp.encode_command``: one command as Redis reads it."""
    if not args:
        raise ValueError("a Redis command needs at least its name")
    args = _as_bytes(args)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _encoded_size(args))
    _write(PyBytes_AS_STRING(out), args)
    return out


def encode_commands(commands):
    """``resp.encode_commands``: several commands, each a tuple of its arguments, in one
    bytes (a pipeline's write)."""
    cdef list ready = []
    cdef Py_ssize_t total = 0
    cdef tuple args
    for command in commands:
        args = _as_bytes(tuple(command))
        if not args:
            raise ValueError("a Redis command needs at least its name")
        ready.append(args)
        total += _encoded_size(args)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char *p = PyBytes_AS_STRING(out)
    for args in ready:
        p = _write(p, args)
    return out


#: Set by ``resp.py`` at import: the pure method, and what it uses.
_pure_feed = None
_data = None
Status = None
cdef Py_ssize_t MAX_LINE = 64 * 1024
cdef Py_ssize_t MAX_DEPTH = 16


def use_pure(pure_feed, status, max_line, max_depth, data):
    """``resp.py``'s pure ``Parser.feed``, its ``Status``, its limits, and its ``_data``
    (an argument's bytes)."""
    global _pure_feed, Status, MAX_LINE, MAX_DEPTH, _data
    _pure_feed = pure_feed
    _data = data
    Status = status
    MAX_LINE = max_line
    MAX_DEPTH = max_depth
