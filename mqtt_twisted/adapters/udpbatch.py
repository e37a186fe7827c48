"""A UDP port that reads many datagrams a system call and sends a read's answers
together: the datagram listeners' port (``adapters/kit.py``).

Twisted's ``udp.Port`` makes one ``recvfrom`` per datagram, and a CoAP listener one
``sendto`` per answer: two system calls, a third of the broker's cost for a NON POST
(docs/benchmarks.md, "CoAP next to MQTT").  :class:`BatchedPort` reads with
``recvmmsg(2)`` and, while it handles a read, holds what its protocol sends through
:meth:`BatchedPort.send_datagram` to send it with ``sendmmsg(2)`` once the read is
handled (answers keep their order; what is sent at other times goes at once); a
protocol with a ``datagramsRead()`` method is told when a read's datagrams are all
handled, before their answers go (the CoAP listener writes its runs of QoS 0
publishes then).

Both calls come from the compiled ``adapters/_mmsg.pyx`` (IPv4 ports only);
:class:`PureBatch`, a ``recvfrom``/``sendto`` loop with the same methods, is the
specification and the fallback: for an IPv6 port, without the build, and with
``MQTT_TWISTED_PURE=1``.  A turn still reads at most ``maxThroughput`` bytes, plus at
most one batch's datagrams past it, and at most :data:`DATAGRAMS_PER_TURN` datagrams.
"""

from __future__ import annotations

import os
import socket
from errno import EAGAIN, ECONNREFUSED, EINTR, EWOULDBLOCK
from types import ModuleType
from typing import Any

from twisted.internet import udp
from twisted.python import log

from mqtt_twisted.adapters import _leanpoll
from mqtt_twisted.adapters.reuseport import probe_free, reuse_port
from mqtt_twisted.codec import load_compiled

#: Datagrams a turn reads at most, whatever their size (a flood of small ones must
#: not keep the reactor from the other listeners).
DATAGRAMS_PER_TURN = 256
#: Datagrams one read asks for (the compiled batch's size).
BATCH = 64
_AGAIN = (EAGAIN, EWOULDBLOCK, EINTR)

#: The compiled module when it was built, whether or not it is in use.
compiled: ModuleType | None = load_compiled("mqtt_twisted.adapters._mmsg",
                                            "the compiled datagram batches")


class PureBatch:
    """A UDP socket's reads and writes one system call a datagram: the twin of
    ``_mmsg.Batch``."""

    __slots__ = ("sock", "size", "six", "dropped", "truncated")

    def __init__(self, sock: socket.socket, size: int) -> None:
        self.sock = sock
        self.size = size
        self.six = sock.family == socket.AF_INET6
        self.dropped = 0
        self.truncated = 0

    def read(self, count: int, handler: Any, on_error: Any,
             too_long: Any = None) -> tuple[int, int]:
        """Read up to ``count`` datagrams, ``handler(data, (host, port))`` each (one
        that raises: ``on_error()`` inside the ``except``); a datagram longer than the
        size goes to ``too_long(first bytes, peer)`` instead (none: dropped; counted in
        ``truncated`` either way).  ``(datagrams, bytes)``, ``(0, 0)`` when none is waiting;
        OSError for the socket's other errors."""
        recvmsg, size, six = self.sock.recvmsg, self.size, self.six
        n = total = 0
        while n < count:
            try:
                data, _, flags, addr = recvmsg(size)
            except OSError as e:
                if e.args[0] in _AGAIN:
                    break
                if n:
                    break  # (reported to the next read, which reads nothing before it)
                raise
            if six:
                addr = addr[:2]  # (host, port), as Twisted's port gives it
            n += 1
            total += len(data)
            try:
                if flags & socket.MSG_TRUNC:
                    self.truncated += 1
                    if too_long is not None:
                        too_long(data, addr)
                else:
                    handler(data, addr)
            except BaseException:
                on_error()
        return n, total

    def send(self, pending: list[tuple[bytes, Any]]) -> None:
        """Send each ``(data, addr)``; one that cannot go is dropped (counted)."""
        sendto = self.sock.sendto
        for data, addr in pending:
            while True:
                try:
                    sendto(data, addr)
                except OSError as e:
                    if e.args[0] == EINTR:
                        continue
                    self.dropped += 1
                except (TypeError, ValueError):
                    self.dropped += 1
                break


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def batch_for(sock: socket.socket, size: int, use_compiled: bool | None = None) -> Any:
    """The compiled batch for an IPv4 socket where it was built (unless
    ``MQTT_TWISTED_PURE``), else :class:`PureBatch`."""
    if use_compiled is None:
        use_compiled = not _flag("MQTT_TWISTED_PURE")
    if use_compiled and compiled is not None and sock.family == socket.AF_INET:
        return compiled.Batch(sock, size)
    return PureBatch(sock, size)


@_leanpoll.dispatch_directly
class BatchedPort(udp.Port):
    """``udp.Port`` reading with one system call a batch, and sending its protocol's
    answers to a read together after it (see the module's docstring)."""

    batch: Any = None
    #: What :meth:`send_datagram` holds during a read (None: not reading).
    pending: list[tuple[bytes, Any]] | None = None
    #: The protocol's ``datagramsRead()``, if it has one: called once a read's datagrams
    #: are handled, before their answers go (work it gathered over the read).
    read_done: Any = None
    #: The protocol's ``datagramTooLong(first bytes, addr)``, if it has one: told of a
    #: datagram longer than ``maxPacketSize`` (else it is dropped: never handed over
    #: cut short as if it were whole, as ``udp.Port`` does).
    too_long: Any = None
    #: The broker's counters (``datagrams_dropped``), if the listener has them.
    stats: Any = None
    _counted = (0, 0)  # the batch's (truncated, dropped) already counted in stats

    def createInternetSocket(self) -> socket.socket:
        return reuse_port(super().createInternetSocket())  # (--workers: shared)

    def _bindSocket(self) -> None:
        probe_free(socket.SOCK_DGRAM, self.interface, self.port)  # (--workers' supervisor)
        super()._bindSocket()
        self.batch = batch_for(self.socket, self.maxPacketSize)
        self.read_done = getattr(self.protocol, "datagramsRead", None)
        self.too_long = getattr(self.protocol, "datagramTooLong", None)

    def doRead(self) -> None:
        batch, handler, too_long = self.batch, self.protocol.datagramReceived, self.too_long
        self.pending = pending = []
        read = datagrams = 0
        try:
            while read < self.maxThroughput and datagrams < DATAGRAMS_PER_TURN:
                try:
                    n, size = batch.read(BATCH, handler, log.err, too_long)
                except OSError as e:
                    if e.args[0] == ECONNREFUSED:  # an ICMP error for an earlier send
                        datagrams += 1
                        continue
                    raise
                read += size
                datagrams += n
                if n < BATCH:
                    break  # nothing more waiting now
        finally:
            if self.read_done is not None:
                try:
                    self.read_done()
                except BaseException:
                    log.err()
            self.pending = None
            if pending:
                batch.send(pending)
            if (batch.truncated, batch.dropped) != self._counted:
                self._count_drops()

    def send_datagram(self, data: bytes, addr: Any) -> None:
        """Send ``data`` to ``addr``: after the read under way, else now.  Never raises:
        a datagram that cannot go is dropped (``batch.dropped``)."""
        pending = self.pending
        if pending is not None:
            pending.append((data, addr))
        elif self.batch is not None:
            self.batch.send([(data, addr)])
            if self.batch.dropped != self._counted[1]:
                self._count_drops()

    def _count_drops(self) -> None:
        """Add what the batch dropped since the last time to the broker's counters."""
        batch = self.batch
        truncated, dropped = self._counted
        self._counted = (batch.truncated, batch.dropped)
        if self.stats is not None:
            counts = self.stats.datagrams_dropped
            counts["too_long"] += batch.truncated - truncated
            counts["unsent"] += batch.dropped - dropped
