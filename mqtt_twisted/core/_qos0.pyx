# cython: language_level=3, annotation_typing=False, binding=True
# core/qos0.py compiled as it is (docs/speedups.md): one source, so the pure module
# stays the specification and the fallback; core/fastpath.py chooses at import.
include "qos0.py"

# The batch's byte scanning in C: the twins of qos0.py's _plain_topic, _scan_run and
# _packet_end (same arguments, same results; tests/test_qos0_fastpath.py compares them),
# bound over the pure ones below, so that read_share (compiled above) calls these.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcmp


def c_plain_topic(bytes data, Py_ssize_t pos, Py_ssize_t n, int v5):
    """``_plain_topic`` in C."""
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t length = buf[pos + 1], header = 2, body, size
    if length & 0x80:
        if pos + 2 >= n or buf[pos + 2] & 0x80 or not buf[pos + 2]:
            return None
        length = (length & 0x7F) | (<Py_ssize_t>buf[pos + 2] << 7)
        header = 3
    body = pos + header
    if length < 3 + v5 or body + length > n:
        return None
    size = (<Py_ssize_t>buf[body] << 8) | buf[body + 1]
    if not size or 2 + size + v5 > length or (v5 and buf[body + 2 + size]):
        return None
    return PyBytes_FromStringAndSize(<const char*>buf + body + 2, size)


def c_scan_run(bytes data, Py_ssize_t pos, Py_ssize_t n, bytes name, int v5,
               Py_ssize_t limit, Py_ssize_t left, Py_ssize_t stop):
    """``_scan_run`` in C: a run of 1,000 PUBLISHes is one loop, no Python object."""
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef const char* topic = PyBytes_AS_STRING(name)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(name), packets = 0, longer = 0, length, header
    cdef Py_ssize_t body, end
    while packets < left and n - pos >= 2 and buf[pos] == 0x30 and (pos < stop or not packets):
        length = buf[pos + 1]
        header = 2
        if length & 0x80:
            if pos + 2 >= n or buf[pos + 2] & 0x80 or not buf[pos + 2]:
                break
            length = (length & 0x7F) | (<Py_ssize_t>buf[pos + 2] << 7)
            header = 3
        body = pos + header
        end = body + length
        if (end > n or header + length > limit or length < 2 + size + v5
                or buf[body] != (size >> 8) or buf[body + 1] != (size & 0xFF)
                or memcmp(buf + body + 2, topic, size) != 0
                or (v5 and buf[body + 2 + size])):
            break
        pos = end
        packets += 1
        longer += header - 2
    return pos, packets, longer


def c_packet_end(bytes data, Py_ssize_t pos, Py_ssize_t n):
    """``_packet_end`` in C."""
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t length = 0, end
    cdef int shift = 0, header = 1, byte
    while header < 5:
        if pos + header >= n:
            return -1
        byte = buf[pos + header]
        header += 1
        length |= (<Py_ssize_t>(byte & 0x7F)) << shift
        if not byte & 0x80:
            if not byte and header > 2:
                return -1
            end = pos + header + length
            return end if end <= n else -1
        shift += 7
    return -1


PURE_SCANS = (_plain_topic, _scan_run, _packet_end)  # (the tests compare the two)
_plain_topic = c_plain_topic
_scan_run = c_scan_run
_packet_end = c_packet_end
