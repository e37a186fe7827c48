# cython: language_level=3
# The compiled twin of adapters/udpbatch.py's PureBatch (docs/speedups.md): many
# datagrams a system call, recvmmsg(2) in and sendmmsg(2) out, for an IPv4 UDP port.
# Same methods, same results (tests/test_udp_batch.py runs both against real sockets).
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdlib cimport free, malloc
from libc.string cimport memset, strerror

cdef extern from *:
    """
    #include <sys/socket.h>
    #include <netinet/in.h>
    #include <arpa/inet.h>
    #include <errno.h>
    #define MMSG_BATCH 64
    """
    const int MMSG_BATCH
    const int EWOULDBLOCK
    ctypedef unsigned int socklen_t
    ctypedef unsigned int in_addr_t
    ctypedef unsigned short sa_family_t
    ctypedef unsigned short in_port_t

    cdef struct in_addr:
        in_addr_t s_addr

    cdef struct sockaddr_in:
        sa_family_t sin_family
        in_port_t sin_port
        in_addr sin_addr

    cdef struct iovec:
        void *iov_base
        size_t iov_len

    cdef struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    cdef struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    int recvmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags, void *timeout) nogil
    int sendmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags) nogil
    const int MSG_DONTWAIT
    const int MSG_TRUNC
    const int AF_INET
    const int INET_ADDRSTRLEN
    unsigned short ntohs(unsigned short) nogil
    unsigned short htons(unsigned short) nogil
    unsigned int ntohl(unsigned int) nogil
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size) nogil
    int inet_pton(int af, const char *src, void *dst) nogil

#: Datagrams one system call reads or sends at most.
BATCH = MMSG_BATCH
#: Peers whose address tuple is kept (all forgotten when full).
PEERS_KEPT = 4096


cdef class Batch:
    """An IPv4 UDP socket's reads and writes, ``BATCH`` datagrams a system call."""

    cdef int fd
    cdef Py_ssize_t size
    cdef char *buffer
    cdef mmsghdr *msgs
    cdef iovec *iovs
    cdef sockaddr_in *addrs
    cdef dict peers
    cdef public Py_ssize_t dropped
    cdef public Py_ssize_t truncated

    def __cinit__(self, sock, Py_ssize_t size):
        self.fd = sock.fileno()
        self.size = size
        self.buffer = <char *>malloc(size * MMSG_BATCH)
        self.msgs = <mmsghdr *>malloc(sizeof(mmsghdr) * MMSG_BATCH)
        self.iovs = <iovec *>malloc(sizeof(iovec) * MMSG_BATCH)
        self.addrs = <sockaddr_in *>malloc(sizeof(sockaddr_in) * MMSG_BATCH)
        if not (self.buffer and self.msgs and self.iovs and self.addrs):
            raise MemoryError()
        self.peers = {}
        self.dropped = 0
        self.truncated = 0

    def __dealloc__(self):
        free(self.buffer)
        free(self.msgs)
        free(self.iovs)
        free(self.addrs)

    cdef object _peer(self, sockaddr_in *addr):
        """The ``(host, port)`` of ``addr``, the same tuple for the same peer."""
        cdef unsigned long long key = (<unsigned long long>ntohl(addr.sin_addr.s_addr) << 16) \
            | ntohs(addr.sin_port)
        cdef char text[16]
        found = self.peers.get(key)
        if found is not None:
            return found
        inet_ntop(AF_INET, &addr.sin_addr, text, 16)
        peer = (text.decode("ascii"), ntohs(addr.sin_port))
        if len(self.peers) >= PEERS_KEPT:
            self.peers.clear()
        self.peers[key] = peer
        return peer

    def read(self, unsigned int count, handler, on_error, too_long=None):
        """Read up to ``count`` datagrams, ``handler(data, (host, port))`` each (a handler
        that raises: ``on_error()`` inside the ``except``); a datagram longer than the
        size goes to ``too_long(first bytes, peer)`` instead (none: dropped; counted in
        ``truncated`` either way).  ``(datagrams, bytes)`` read, ``(0, 0)`` when none is waiting;
        OSError for the socket's other errors."""
        cdef int n, i, err
        cdef Py_ssize_t total = 0
        if count > MMSG_BATCH:
            count = MMSG_BATCH
        for i in range(<int>count):
            self.iovs[i].iov_base = self.buffer + i * self.size
            self.iovs[i].iov_len = self.size
            memset(&self.msgs[i].msg_hdr, 0, sizeof(msghdr))
            self.msgs[i].msg_hdr.msg_name = &self.addrs[i]
            self.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
            self.msgs[i].msg_hdr.msg_iov = &self.iovs[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1
        n = recvmmsg(self.fd, self.msgs, count, MSG_DONTWAIT, NULL)
        if n < 0:
            err = errno
            if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
                return 0, 0
            raise OSError(err, strerror(err).decode("utf-8", "replace"))
        for i in range(n):
            data = PyBytes_FromStringAndSize(self.buffer + i * self.size, self.msgs[i].msg_len)
            total += self.msgs[i].msg_len
            try:
                if self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                    self.truncated += 1
                    if too_long is not None:
                        too_long(data, self._peer(&self.addrs[i]))
                else:
                    handler(data, self._peer(&self.addrs[i]))
            except BaseException:
                on_error()
        return n, total

    def send(self, list pending):
        """Send ``pending``, a list of ``(data, (host, port))``; one that cannot go (a
        full buffer, an unreachable peer, not an IPv4 address) is dropped, as the network
        may drop any datagram, and counted in ``dropped``."""
        cdef Py_ssize_t total = len(pending), done = 0, k, i, j
        cdef int sent
        while done < total:
            k = total - done
            if k > MMSG_BATCH:
                k = MMSG_BATCH
            j = 0
            for i in range(k):
                data, addr = pending[done + i]
                if type(data) is not bytes or not self._address(addr, &self.addrs[j]):
                    self.dropped += 1
                    continue
                self.iovs[j].iov_base = PyBytes_AS_STRING(data)
                self.iovs[j].iov_len = PyBytes_GET_SIZE(data)
                memset(&self.msgs[j].msg_hdr, 0, sizeof(msghdr))
                self.msgs[j].msg_hdr.msg_name = &self.addrs[j]
                self.msgs[j].msg_hdr.msg_namelen = sizeof(sockaddr_in)
                self.msgs[j].msg_hdr.msg_iov = &self.iovs[j]
                self.msgs[j].msg_hdr.msg_iovlen = 1
                j += 1
            i = 0
            while i < j:
                sent = sendmmsg(self.fd, self.msgs + i, j - i, MSG_DONTWAIT)
                if sent < 0:
                    if errno == EINTR:
                        continue
                    self.dropped += 1  # the datagram at i could not go
                    sent = 1
                i += sent
            done += k

    cdef bint _address(self, addr, sockaddr_in *out) except -1:
        memset(out, 0, sizeof(sockaddr_in))
        if type(addr) is not tuple or len(addr) != 2:
            return False
        host, port = addr
        out.sin_family = AF_INET
        if type(port) is not int or not 0 < port < 65536 or type(host) is not str:
            return False
        text = (<str>host).encode("ascii", "replace")
        if inet_pton(AF_INET, text, &out.sin_addr) != 1:
            return False
        out.sin_port = htons(port)
        return True
