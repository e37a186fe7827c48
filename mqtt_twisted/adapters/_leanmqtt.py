"""MQTT on a plain TCP listener: the sans-IO connection is its transport's protocol.

On any other stream (TLS, UNIX sockets, one-port detection, the PROXY protocol) a thin
protocol, ``adapters/mqtt.py``'s ``MQTTStreamProtocol``, stands between the transport
and the connection: it keeps a read's writes together, turns the connection's close
into a half-close, and passes the transport's producer calls on.  On a plain TCP
listener the lean transport (``adapters/_leanserver.py``) already holds a turn's
writes and sends them after it, so that shell's remaining work moves into the
transport (:class:`MQTTServer`), and the connection is the transport's protocol and
push producer: one object per connection less (the protocol, 80 bytes;
``bench/conn_memory.py --trace``).

The port accepts for itself too (:func:`serve`): the descriptor from ``accept``
without a socket object, no address object, protocol, log-buffering context or
generator per connection, Nagle off through the listening socket (Linux hands its
``TCP_NODELAY`` to the sockets it accepts).  What it does not handle, running out of
descriptors above all, it leaves to Twisted's own accept, which builds the thin shell
(its ``EMFILE`` recovery closes the waiting clients through a reserved descriptor).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from typing import Any

from twisted.internet import main, tcp
from twisted.logger import Logger
from twisted.python import failure

from mqtt_twisted.adapters import _leanpoll
from mqtt_twisted.adapters._accepts import ACCEPT_SLICE
from mqtt_twisted.adapters._leanserver import _HOSTS, LeanServer, _shared_host
from mqtt_twisted.core.keyset import KeySet
from mqtt_twisted.core.states import CLOSE_GRACE, CLOSED
from mqtt_twisted.turns import after_turn

try:  # FIONREAD, FIONBIO: POSIX only; elsewhere nothing is drained, nothing served lean
    import fcntl
    import termios
except ImportError:  # pragma: no cover
    fcntl = termios = None  # type: ignore[assignment]

_log = Logger()

#: ``MQTTConnection.ended`` reasons of a client that sent DISCONNECT (core/clientlog.py).
CLIENT_LEFT = ("normal", "client DISCONNECT")
#: FIONBIO's argument: one ``ioctl`` makes a descriptor non-blocking (``os.set_blocking``
#: is two ``fcntl`` calls).  A bytearray: ``ioctl`` tries its argument as a writable
#: buffer first, and for ``bytes`` formats that attempt's error message and drops it
#: (5.3k of its 5.4k instructions, callgrind; 1.34 -> 0.53 µs a call, system call included).
_ON = bytearray(struct.pack("i", 1))


def pending_bytes(transport: Any) -> int:
    """How many bytes the kernel holds unread for the transport's socket (FIONREAD);
    0 when it cannot tell (no socket any more, not POSIX), so that the caller reads
    nothing rather than guessing."""
    try:
        fileno = getattr(transport, "fileno", None)  # (the lean transport has no socket)
        fd = fileno() if fileno is not None else transport.socket.fileno()
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    except (AttributeError, OSError, ValueError):
        return 0


def drain(transport: Any) -> None:
    """Read what the kernel holds for ``transport`` before it is let go (see
    ``adapters/mqtt.py``'s ``_read_before_reset``): only what FIONREAD says is there."""
    if transport.connected and not transport.disconnecting:
        protocol = getattr(transport, "protocol", None)
        connection = getattr(protocol, "connection", protocol)  # (MQTTStreamProtocol's)
        if getattr(connection, "state", None) == CLOSED:
            return  # closed on our side: what its peer still sends is dropped anyway
        for _ in range(1 << 12):  # at most 4096 reads of bufferSize each
            if pending_bytes(transport) <= 0:
                break
            try:
                if transport.doRead() is not None:
                    break
            except Exception:
                break


class _Gone:
    """A lost connection's transport: what the sans-IO connection may still call on
    it (a late close, a write after a timer) does nothing."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def abortConnection(self) -> None:
        pass

    def pauseReading(self) -> None:
        pass

    def resumeReading(self) -> None:
        pass


GONE = _Gone()


class MQTTServer(LeanServer):
    """The lean transport of a plain TCP MQTT listener, whose protocol and producer is
    the sans-IO connection itself; what ``MQTTStreamProtocol`` did for it is here:
    ``pauseReading``/``resumeReading``, the close rules, the drain before a reset, the
    listener's connection count.  A subclass per port holds that port's ``limit``."""

    __slots__ = ()
    #: The listener's ``ConnectionLimit`` (``kit.py``), released when the connection goes.
    limit: Any = None
    #: Whether the reactor is Twisted's epoll reactor running the lean loop: then a
    #: new connection is watched for reading, and a DISCONNECT's is no longer, by
    #: what ``addReader`` and ``removeReader`` do, inline (three Python calls less
    #: each: ``startReading``, ``addReader``, ``_add``, and their ``remove`` twins).
    epoll_inline = False

    def __init__(self, fd: int, client: tuple, reactor: Any) -> None:
        fcntl.ioctl(fd, termios.FIONBIO, _ON)
        # _leanserver.setup, inline (and its client setter and _shared_host but for a
        # host not seen before): three calls less per accept.
        self._fd = fd
        self.reactor = reactor
        self.protocol = None
        host = client[0]
        self.peer_host = _HOSTS.get(host) or _shared_host(host)
        self.peer_port = client[1] if len(client) == 2 else tuple(client[1:])
        self.connected = 1
        self.dataBuffer = b""
        self.offset = self._tempDataLen = 0
        self._tempDataBuffer = None
        self.producer = None
        self.streamingProducer = self.producerPaused = False

    def serve(self, connection: Any) -> None:
        """Start reading for ``connection`` (what ``makeConnection`` would do)."""
        self.protocol = self.producer = connection
        self.streamingProducer = True
        fd = self._fd
        reactor = self.reactor
        if self.epoll_inline and fd not in reactor._writes and fd not in reactor._reads:
            reactor._poller.register(fd, select.EPOLLIN)  # (EPollReactor._add, a new fd)
            reactor._reads.add(fd)
            reactor._selectables[fd] = self
        else:
            self.startReading()

    #: Flow control: a subscriber this client feeds is full, then caught up.
    pauseReading = LeanServer.pauseProducing
    resumeReading = LeanServer.resumeProducing

    def loseConnection(self, *_: Any) -> bool | None:
        """Flush, then close: as ``MQTTStreamProtocol.loseConnection`` says why, a plain
        close after the client's DISCONNECT, else a half-close that reads and drops
        what the client still sends (the connection aborts it after its close grace).
        True when it closes at the end of this turn, with nothing to send: no close
        grace to wait for (the connection arms none)."""
        # unregisterProducer (a paused producer would keep the socket open), inline:
        # a lean transport has no TLS to pass it to (two calls less a close).
        self.producer = None
        if self.connected and self.disconnecting:
            self.startWriting()
        ended = getattr(getattr(self, "protocol", None), "ended", None)
        if ended is not None and ended[0] in CLIENT_LEFT:
            if self._tempDataBuffer or self.dataBuffer or self.disconnecting:
                LeanServer.loseConnection(self)  # (the reactor closes it once it is sent)
            elif self.connected:
                # Nothing to send: closed once this turn's events are handled, rather
                # than registered for a write event only to find nothing to write (two
                # epoll_ctl calls and a reactor event less per connection).
                fd = self._fd
                reads = self.reactor._reads if self.epoll_inline else ()
                if fd in reads and fd not in self.reactor._writes:
                    del self.reactor._selectables[fd]  # (EPollReactor._remove, inline)
                    self.reactor._poller.unregister(fd)
                    reads.remove(fd)
                else:
                    self.stopReading()
                self.disconnecting = 1
                _close_later(self)
                return True
        else:
            self.loseWriteConnection()
            self.resumeProducing()  # (flow control may have paused reading)

    def abortConnection(self) -> None:
        self.unregisterProducer()
        LeanServer.abortConnection(self)

    def connectionLost(self, reason: Any) -> None:
        """Read what the client sent last, count the connection out, tell the
        connection, and cut its link back here (no reference cycle left to the
        collector: ``tests/test_conn_cycles.py``)."""
        if self._fd < 0:
            return
        drain(self)
        connection = self.protocol
        self.producer = None  # (it hears of the end from connectionLost, not stopProducing)
        self.limit.release()
        try:
            LeanServer.connectionLost(self, reason)
        finally:
            connection.transport = GONE


_leanpoll.dispatch_directly(MQTTServer)  # (and so each listener's subclass of it)

#: Reactor -> transports to close once its turn's events are handled.
_CLOSING: dict[Any, list[MQTTServer]] = {}
_DONE = failure.Failure(main.CONNECTION_DONE)


def _close_later(transport: MQTTServer) -> None:
    reactor = transport.reactor
    closing = _CLOSING.get(reactor)
    if closing is None:
        closing = _CLOSING[reactor] = []
        after_turn(reactor, _close, reactor)
    closing.append(transport)


def _close(reactor: Any) -> None:
    watched = getattr(reactor, "_selectables", None)  # (epoll and poll: fd -> selectable)
    for transport in _CLOSING.pop(reactor, ()):
        fd = transport._fd
        if fd < 0:
            continue  # (lost meanwhile)
        if transport._tempDataBuffer or transport.dataBuffer:
            transport.startWriting()  # written to since: the reactor closes it once sent,
            conn = transport.protocol  # within the grace its loseConnection skipped
            conn.broker.deadlines.arm(conn, conn.broker.clock.seconds() + CLOSE_GRACE)
            continue
        try:
            if watched is None or fd in watched:
                transport.connectionLost(_DONE)
            else:
                _closed(transport, fd)
        except Exception:
            _log.failure("Closing {transport!r} failed", transport=transport)


def _closed(transport: MQTTServer, fd: int) -> None:
    """``MQTTServer.connectionLost`` for a transport closing after its client's
    DISCONNECT that the reactor no longer watches (it stopped reading, has nothing to
    write, and is disconnecting: nothing to drain, no producer to stop): without the
    ``stopReading`` and ``stopWriting`` that would find nothing to unregister (six
    Python calls), straight to the close."""
    connection = transport.protocol
    transport.producer = None
    transport.limit.release()
    transport.disconnected = 1
    transport.connected = 0
    try:
        os.close(fd)
    except OSError:
        pass
    transport._fd = -1
    del transport.protocol
    try:
        connection.connectionLost(_DONE)
    finally:
        connection.transport = GONE


#: Port class -> its subclass accepting for itself (one per class).
_LEAN_PORTS: dict[type, type] = {}


def serve(port: Any, factory: Any) -> bool:
    """Have ``port`` accept ``factory``'s connections itself, each connection the
    protocol of an :class:`MQTTServer` (True); False, and ``port`` left as it is, unless
    it is a plain TCP port listening with ``factory`` itself (no TLS or PROXY wrapper
    in between) for a broker whose connections can be their transport's protocol."""
    if not (fcntl is not None and isinstance(port, tcp.Port)
            and getattr(port, "transport", None) is tcp.Server
            and port.factory is factory
            and getattr(factory.broker, "leanConnections", False)):
        return False
    try:
        port.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # pragma: no cover  (not TCP)
        return False
    cls = type(port)
    lean = _LEAN_PORTS.get(cls)
    if lean is None:
        lean = _LEAN_PORTS[cls] = _leanpoll.dispatch_directly(type(cls.__name__, (cls,), {
            "doRead": _accept, "__module__": cls.__module__}))
    epoll = _leanpoll.install(port.reactor)
    if epoll:
        compact_fd_sets(port.reactor)
    port.lean_server = type("MQTTServer", (MQTTServer,), {
        "__slots__": (), "limit": factory.limit, "epoll_inline": epoll,
        "__module__": __name__})
    port.__class__ = lean
    return True


def compact_fd_sets(reactor: Any) -> None:
    """The epoll reactor's sets of the descriptors it reads and writes as
    ``KeySet`` objects (once): one member per connection, at a third of a set's memory
    (the read set was about 105 bytes of an idle connection's 1,070 at 5,000 and at
    19,900 connections: core/keyset.py).  Twisted only adds, removes, tests, iterates
    and copies them, which a KeySet does as a set."""
    for name in ("_reads", "_writes"):
        fds = getattr(reactor, name, None)
        if type(fds) is set:
            setattr(reactor, name, KeySet.fromkeys(fds))


def _accept(port: Any) -> None:
    """A lean port's ``doRead``: up to ``numberAccepts`` connections (adapting as
    Twisted's does, within the port's ``accept_slice``), each served at once."""
    cap = getattr(port, "accept_slice", None) or ACCEPT_SLICE
    waiting = getattr(port, "accept_waiting", None)
    if waiting is not None:  # (_accepts.accept_behind: CONNECTs waiting at the gate)
        cap -= waiting()
        if cap <= 0:
            return  # (still readable: the next turns come back)
    limit = port.numberAccepts
    if limit > cap:  # (min(), max() below: builtin calls, ~0.8k instructions each)
        limit = cap
    accept = port.socket._accept
    accepted = tries = 0
    while tries < limit:
        tries += 1
        try:
            fd, addr = accept()
        except BlockingIOError:
            break
        except OSError as e:
            if e.errno == errno.EPERM:  # (netfilter refused it: Twisted goes on too)
                continue
            # Out of descriptors, buffers or memory: Twisted's accept logs it, and on
            # EMFILE closes the waiting clients through its reserved descriptor.
            tcp.Port.doRead(port)
            return
        accepted += 1
        try:
            _serve_one(port, fd, addr)
        except Exception:
            _log.failure("Serving a new connection on {port!r} failed", port=port)
    if accepted == limit:
        port.numberAccepts = limit + 20 if limit + 20 < cap else cap
    else:
        port.numberAccepts = accepted if accepted > 1 else 1


def _serve_one(port: Any, fd: int, addr: tuple) -> None:
    factory = port.factory
    if len(addr) == 4:  # IPv6: the scope id in the host, as Twisted's accept does
        host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
        addr = (host[0], *addr[1:])
    if not factory.limit.admit_address(addr[0], addr[1]):
        _close_fd(fd)
        return
    try:
        transport = port.lean_server(fd, addr, port.reactor)
        connection = factory.broker.buildConnection(transport, transport, factory.listener,
                                                    None)  # (its peer: the transport's)
    except BaseException:
        factory.limit.release()
        _close_fd(fd)
        raise
    transport.serve(connection)


def _close_fd(fd: int) -> None:
    try:
        socket.close(fd)
    except OSError:
        pass
