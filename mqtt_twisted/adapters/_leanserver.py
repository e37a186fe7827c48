"""A TCP server transport that holds less per connection than Twisted's ``tcp.Server``.

``tcp.Server.__init__`` stores two strings per connection that are only read when
Twisted logs about it or ``repr``\\ s it (``logstr``, ``repstr``: about 140 bytes)
and the socket's bound ``fileno`` method (72 bytes); with the socket itself, the peer
address and the reactor's maps that was about 750 bytes of an idle MQTT connection's
2 KB (``bench/conn_memory.py --trace``).  Here the three are worked out when asked.
The listening port builds these instead of ``tcp.Server`` (``tcp.Port.transport``,
set once per port by :func:`install`); everything else is Twisted's.  What it costs:
``fileno`` is one Python call more per reactor event (the reactor checks it before each
read), and Twisted's log lines about the transport carry the protocol's name without
the session number and host.

The MQTT listener's transport also reads what the peer sent before it lets the
connection go (:func:`mqtt_twisted.adapters.mqtt._drain_then_lose`): made so here, it
needs no class switch per connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import address, tcp


def _no_fd() -> int:
    return -1


class _SocketFileno:
    """``fileno`` as the socket's own, looked up when called for (Twisted assigns and
    deletes it per connection: both are ignored; without a socket it is -1)."""

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        sock = getattr(obj, "socket", None)
        return sock.fileno if sock is not None else _no_fd

    def __set__(self, obj: Any, value: Any) -> None:
        pass

    def __delete__(self, obj: Any) -> None:
        pass


class LeanServer(tcp.Server):
    """``tcp.Server`` whose log prefix, repr and ``fileno`` are not stored per connection."""

    fileno = _SocketFileno()  # type: ignore[assignment]
    #: close() alone ends the connection in order (FIN after what is buffered): no
    #: shutdown(2) first, one system call less per connection (Twisted's own comment
    #: in ``_SocketCloser`` says it "isn't really necessary").
    _shouldShutdown = False

    def __init__(self, sock: Any, protocol: Any, client: Any, server: Any, sessionno: int,
                 reactor: Any) -> None:
        # tcp.Server.__init__ without the two strings.
        tcp.Connection.__init__(self, sock, protocol, reactor)
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        self.startReading()
        self.connected = 1

    def logPrefix(self) -> str:
        """The protocol's class name.  The reactor asks for it on every read and write
        (``callWithLogger``): a fixed string, not ``logstr`` built each time (the
        session number and host are in ``logstr`` and ``repr``)."""
        return type(getattr(self, "protocol", None)).__name__

    @property  # type: ignore[override]
    def logstr(self) -> str:
        protocol = getattr(self, "protocol", None)
        prefix = self._getLogPrefix(protocol) if protocol is not None else "-"
        return f"{prefix},{self.sessionno},{self.hostname}"

    @logstr.setter
    def logstr(self, value: str) -> None:
        pass

    @property
    def repstr(self) -> str:
        protocol = getattr(self, "protocol", None)
        port = getattr(self.server, "_realPortNumber", "?")
        return f"<{type(protocol).__name__} #{self.sessionno} on {port}>"

    @repstr.setter
    def repstr(self, value: str) -> None:
        pass


def install(port: Any, transport: type) -> Any:
    """Have a listening TCP port build ``transport`` (a ``LeanServer`` class) for its
    connections; a port of another kind (UNIX sockets) is left as it is."""
    if getattr(port, "transport", None) is tcp.Server:
        port.transport = transport
    return port
