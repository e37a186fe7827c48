"""A TCP server transport that holds less per connection than Twisted's ``tcp.Server``.

An idle MQTT connection's ``tcp.Server`` was its largest single object: an instance
dict of about fifteen attributes, two strings only read when Twisted logs or
``repr``\\ s it (``logstr``, ``repstr``), the socket's bound ``fileno``, a session
number, and an empty write buffer list (``bench/conn_memory.py --trace``).
:class:`LeanServer` keeps Twisted's code (it is a ``tcp.Server``) but not that storage:

- every attribute Twisted sets on an open connection has a slot, so the instance dict
  is not made while it is open (it is once it closes: the closing flags are not slots,
  and ``abortConnection`` replaces two methods);
- the log prefix, repr, host name and ``fileno`` are worked out when asked, and
  ``fileno`` returns one int object held from accept to close, the same one the
  reactor keeps in its maps;
- the write buffer list exists only while something waits in it;
- no session number and no listening port are kept (the repr and ``logstr`` name the
  descriptor instead: unique among open connections);
- hosts' address strings are shared between connections from the same host
  (:func:`_shared_host`).

The listening port builds these instead of ``tcp.Server`` (``tcp.Port.transport``, set
once per port by :func:`install`).  What it costs: ``fileno`` is one Python call more per
reactor event, and Twisted's log lines about the transport carry the protocol's name
without the session number and host.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from operator import attrgetter
from typing import Any

from twisted.internet import abstract, address, error, main, tcp
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.python import failure

from mqtt_twisted.turns import after_turn

#: Address strings of recent peers, shared by their connections (a host's clients, or
#: a load balancer's, then hold one string, not one each); bounded, emptied when full.
_HOSTS: dict[str, str] = {}
_HOSTS_MAX = 4096


def _shared_host(host: str) -> str:
    """``host``, or the equal string of an earlier connection from that host."""
    shared = _HOSTS.get(host)
    if shared is None:
        if len(_HOSTS) >= _HOSTS_MAX:
            _HOSTS.clear()
        _HOSTS[host] = shared = host
    return shared


def _ignored(self: Any, value: Any = None) -> None:
    """Twisted assigns and deletes ``fileno`` per connection: both are ignored here."""


#: ``fileno``: the descriptor number kept since accept, -1 once it is closed.  The
#: reactor asks for it several times per connection (each register, unregister and
#: event): a C getter returning the int's own ``__index__``, whose call gives the very
#: int object back, costs no Python frame (a method built per call cost two).
_FILENO = property(attrgetter("_fd.__index__"), _ignored, _ignored)


class LeanServer(tcp.Server):
    """``tcp.Server`` with a slot for each attribute and nothing stored for logs."""

    __slots__ = (
        "reactor", "protocol", "peer_host", "peer_port", "_fd", "connected", "dataBuffer", "offset",
        "_tempDataBuffer", "_tempDataLen", "producer", "streamingProducer",
        "producerPaused",
    )
    # Not slots: the flags only a closing connection sets (``disconnecting``,
    # ``disconnected``, ``_writeDisconnecting``, ``_writeDisconnected``, ``_aborting``).
    # They read Twisted's class defaults until then, and setting one makes the instance
    # dict a connection that is going has anyway (40 bytes less per idle connection).
    # The peer's address is two slots, its host (shared, :func:`_shared_host`) and port,
    # rather than Twisted's ``client`` tuple (a tuple and 40 bytes less): ``client`` is
    # made when asked.  An IPv6 peer's port slot holds (port, flow info, scope id).

    fileno = _FILENO  # type: ignore[assignment]
    #: close() alone ends the connection in order (FIN after what is buffered): no
    #: shutdown(2) first, one system call less per connection (Twisted's own comment
    #: in ``_SocketCloser`` says it "isn't really necessary").
    _shouldShutdown = False

    def __init__(self, sock: Any, protocol: Any, client: Any, server: Any, sessionno: int,
                 reactor: Any) -> None:
        # What tcp.Server.__init__ sets, into slots; no strings, session number or port,
        # and no socket object: its descriptor (see _borrowed).  Nagle is off from the
        # start (an MQTT listener's protocol asks for it anyway, at two calls more).
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover  (not TCP)
            pass
        setup(self, sock.detach(), protocol, client, reactor)
        self.startReading()

    # --- the write buffer list, made when first needed --------------------------------

    def write(self, data: bytes) -> None:
        """``FileDescriptor.write``, the list made on demand, sent after this reactor
        turn (:func:`_flush_later`) rather than when the reactor says writable."""
        if not isinstance(data, bytes):
            raise TypeError("Data must be bytes")
        if not self.connected or self._writeDisconnected or not data:
            return
        buffered = self._tempDataBuffer
        if buffered:  # (then already due: in the turn's flush or with the reactor)
            buffered.append(data)
            size = self._tempDataLen = self._tempDataLen + len(data)
            # Twisted's _maybePauseProducer, its test inline: two calls less per write
            # (a QoS 1 message is two writes), the call only when the buffer is full.
            if self.producer is not None and size + len(self.dataBuffer) > self.bufferSize:
                self._maybePauseProducer()
            return
        self._tempDataBuffer = [data]
        size = self._tempDataLen = len(data)
        if self.producer is not None and size + len(self.dataBuffer) > self.bufferSize:
            self._maybePauseProducer()
        # _due and _flush_later, inline (two calls less for a lone message's write):
        if self.dataBuffer or self.disconnecting or self._writeDisconnecting:
            self.startWriting()
            return
        reactor = self.reactor
        due = _DUE.get(reactor)
        if due is None:
            due = _DUE[reactor] = []
            after_turn(reactor, _flush, reactor)
        due.append(self)

    def writeSequence(self, iovec: Any) -> None:
        """``FileDescriptor.writeSequence``, as :meth:`write`."""
        iovec = list(iovec)
        for data in iovec:
            if not isinstance(data, bytes):
                raise TypeError("Data must be bytes")
        if not self.connected or not iovec or self._writeDisconnected:
            return
        buffered = self._tempDataBuffer
        if buffered is None:
            buffered = self._tempDataBuffer = []
        due = not buffered
        buffered.extend(iovec)
        self._tempDataLen += sum(map(len, iovec))
        if self.producer is not None:
            self._maybePauseProducer()
        if due:
            self._due()

    def _due(self) -> None:
        """The first bytes since the last send: in the turn's flush, or to the reactor
        if a send is already waiting for the socket (or the connection is closing)."""
        if self.dataBuffer or self.disconnecting or self._writeDisconnecting:
            self.startWriting()
        else:
            _flush_later(self)

    def doWrite(self) -> Any:
        if self._tempDataBuffer is None:
            self._tempDataBuffer = []
        result = tcp.Server.doWrite(self)
        if not self._tempDataLen:
            self._tempDataBuffer = None  # (Twisted left a fresh empty list)
        return result

    # --- the descriptor itself, without a socket object ------------------------------

    def doRead(self) -> Any:
        try:
            data = os.read(self._fd, self.bufferSize)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:  # (tcp.Connection._dataReceived, inline: a call less per read)
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def writeSomeData(self, data: Any) -> Any:
        """Twisted's, on the descriptor, and without the empty send it makes when
        ``loseConnection`` finds nothing buffered (one system call per close)."""
        if not data:
            return 0
        try:
            return os.write(self._fd, memoryview(data)[: self.SEND_LIMIT])
        except BlockingIOError:
            return 0
        except OSError as e:
            return 0 if e.errno == errno.ENOBUFS else main.CONNECTION_LOST

    def _closeSocket(self, orderly: bool) -> None:
        if not orderly:  # a reset: SO_LINGER 0 (Twisted's abort)
            try:
                with self._borrowed() as sock:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        try:
            os.close(self._fd)
        except OSError:
            pass

    def connectionLost(self, reason: Any) -> None:
        """``tcp.Connection.connectionLost`` on the descriptor (once: a second call
        finds it gone)."""
        if self._fd < 0:
            return
        abstract.FileDescriptor.connectionLost(self, reason)  # (unregisters by fd)
        self._closeSocket(not reason.check(error.ConnectionAborted))
        self._fd = -1
        protocol = self.protocol
        del self.protocol
        protocol.connectionLost(reason)

    def _closeWriteConnection(self) -> None:
        try:
            with self._borrowed() as sock:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            try:
                half.writeConnectionLost()
            except BaseException:
                self.connectionLost(failure.Failure())

    def _borrowed(self) -> socket.socket:
        """A socket object on a duplicate of the descriptor, for the rare calls that
        need one (options, names, half-close): closing it leaves ours open."""
        family = socket.AF_INET if type(self.peer_port) is int else socket.AF_INET6
        return socket.socket(family, socket.SOCK_STREAM, 0, os.dup(self._fd))

    def getHandle(self) -> socket.socket:
        """A socket object on a duplicate of the descriptor (the caller closes it)."""
        return self._borrowed()

    def getHost(self) -> Any:
        with self._borrowed() as sock:
            return self._addressType("TCP", *sock.getsockname()[:2])

    def getTcpNoDelay(self) -> bool:
        with self._borrowed() as sock:
            return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def setTcpNoDelay(self, enabled: bool) -> None:
        with self._borrowed() as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled)

    def getTcpKeepAlive(self) -> bool:
        with self._borrowed() as sock:
            return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        with self._borrowed() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

    def peer_text(self) -> str:
        """``host:port`` of the client, as ``kit.peer_text(self.getPeer())`` says it
        without building the address object."""
        port = self.peer_port
        return f"{self.peer_host}:{port if type(port) is int else port[0]}"

    # --- worked out when asked --------------------------------------------------------

    @property
    def hostname(self) -> str:
        return self.peer_host

    @property
    def _addressType(self) -> Any:  # type: ignore[override]
        return address.IPv4Address if type(self.peer_port) is int else address.IPv6Address

    def logPrefix(self) -> str:
        """The protocol's class name.  The reactor asks for it on every read and write
        (``callWithLogger``): a fixed string, not ``logstr`` built each time (the
        descriptor and host are in ``logstr`` and ``repr``)."""
        return type(getattr(self, "protocol", None)).__name__

    @property  # type: ignore[override]
    def logstr(self) -> str:
        protocol = getattr(self, "protocol", None)
        prefix = self._getLogPrefix(protocol) if protocol is not None else "-"
        return f"{prefix},{self._fd},{self.hostname}"

    @logstr.setter
    def logstr(self, value: str) -> None:
        pass

    @property
    def repstr(self) -> str:
        protocol = getattr(self, "protocol", None)
        try:
            port = self.getHost().port
        except OSError:
            port = "?"
        return f"<{type(protocol).__name__} fd {self._fd} on {port}>"

    @repstr.setter
    def repstr(self, value: str) -> None:
        pass


def _client(self: LeanServer) -> tuple:
    """The peer's address as the socket gave it (Twisted's ``client``), from the two
    slots that hold it."""
    port = self.peer_port
    return (self.peer_host, port) if type(port) is int else (self.peer_host, *port)


def _set_client(self: LeanServer, client: tuple) -> None:
    self.peer_host = _shared_host(client[0])
    self.peer_port = client[1] if len(client) == 2 else tuple(client[1:])


#: (Outside the class body: the class is at its size limit.)
LeanServer.client = property(_client, _set_client)  # type: ignore[assignment]


def setup(self: LeanServer, fd: int, protocol: Any, client: tuple, reactor: Any) -> None:
    """A lean transport's state, in slots, on a non-blocking descriptor (a function:
    the class is at its size limit)."""
    self._fd = fd
    self.reactor = reactor
    self.protocol = protocol
    self.client = client  # (as host and port slots)
    self.connected = 1
    self.dataBuffer = b""
    self.offset = self._tempDataLen = 0
    self._tempDataBuffer = None  # a list while bytes wait in it
    self.producer = None
    self.streamingProducer = self.producerPaused = False


_log = Logger()
#: Reactor -> transports with bytes to send, written when its turn's events are done.
_DUE: dict[Any, list[LeanServer]] = {}


def _flush_later(transport: LeanServer) -> None:
    """Send ``transport``'s bytes once this reactor turn's events are handled: one
    ``callLater(0)`` for every transport written to in the turn.  The reactor's own
    way, ``startWriting``, is two ``epoll_ctl`` calls and a write event per write
    (register, event, unregister); here a send that takes everything needs none, and
    the bytes of one turn still go out in one send per connection."""
    reactor = transport.reactor
    due = _DUE.get(reactor)
    if due is None:
        due = _DUE[reactor] = []
        after_turn(reactor, _flush, reactor)  # (one callLater(0) a turn for all such work)
    due.append(transport)


def _flush(reactor: Any) -> None:
    for transport in _DUE.pop(reactor, ()):
        if (not transport.connected or transport.disconnecting or transport._aborting
                or transport._writeDisconnecting):
            continue  # (gone, or closing: the reactor's writes and close see to it)
        buffered = transport._tempDataBuffer
        if not buffered:
            continue  # (sent meanwhile)
        if not transport.dataBuffer and not transport.producerPaused and (
                transport.producer is None or transport.streamingProducer):
            # What doWrite does here, inline: nothing else waits for the socket and no
            # producer is to be resumed, and the reactor is not watching the descriptor
            # for writing, so there is no stopWriting to make (doWrite makes it: three
            # calls through the reactor's maps, and doWrite is three calls itself).
            data = buffered[0] if len(buffered) == 1 else b"".join(buffered)
            transport._tempDataBuffer = None
            transport._tempDataLen = 0
            try:
                sent = os.write(transport._fd, data)
            except OSError:  # (full, or failed: the reactor's doWrite sees it again)
                sent = 0
            if sent != len(data):  # the rest when the socket is writable
                transport.dataBuffer = data
                transport.offset = sent
                transport.startWriting()
            continue
        try:  # bytes already wait for the socket, or a producer is to be resumed
            result = transport.doWrite()
        except Exception:  # (a producer resumed by it failed): the others still go
            _log.failure("Sending on {transport!r} failed", transport=transport)
            transport.connectionLost(failure.Failure())
            continue
        if result is not None or transport._tempDataBuffer or transport.dataBuffer:
            # The socket's buffer is full, or it failed: the reactor goes on when
            # it is writable (or sees the error again and ends the connection).
            transport.startWriting()


def install(port: Any, transport: type) -> Any:
    """Have a listening TCP port build ``transport`` (a ``LeanServer`` class) for its
    connections; a port of another kind (UNIX sockets) is left as it is."""
    if getattr(port, "transport", None) is tcp.Server:
        port.transport = transport
    return port
