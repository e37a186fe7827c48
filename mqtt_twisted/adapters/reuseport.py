"""Listening sockets bound with ``SO_REUSEPORT``, for ``--workers`` (``mqtt_twisted/workers.py``).

Why: N broker processes on one host take the same listeners.  Each binds its own
socket with ``SO_REUSEPORT`` and the kernel spreads new TCP connections over them (a
hash of the peer's address and port), and a UDP peer's datagrams always to the same
one, so a CoAP exchange stays with the worker that began it.  A socket bound without
the option (another program on the port) still makes the bind fail, as it should.

The switch is per process (:func:`share_ports`, set by ``tap.makeService`` for
``--workers`` N > 1): every listener of a worker shares, so the adapters need no
option of their own.  The stream listeners' ``tcp:``/``tcp6:`` endpoints get it
through :func:`stream_reactor` (``tls.stream_listener``), datagram listeners through
:func:`reuse_port` (``udpbatch.BatchedPort``).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.error import CannotListenError

_sharing = False
_probing = False


def share_ports(on: bool = True, probe: bool = False) -> None:
    """From now on this process binds its listeners with ``SO_REUSEPORT`` (or, with
    ``on`` false, no longer does: tests).  ``probe``: first make sure nobody holds the
    port, not even with ``SO_REUSEPORT`` (the supervisor, whose workers bind after it):
    a second ``--workers`` broker of the same user would otherwise share it silently."""
    global _sharing, _probing
    _sharing, _probing = on, on and probe


def probe_free(kind: int, interface: str, port: int) -> None:
    """Raise CannotListenError if something listens on ``port`` (probing only)."""
    if not _probing:
        return
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (not TIME_WAITs)
        try:
            probe.bind((interface, port))
        except OSError as e:
            raise CannotListenError(interface, port, e) from None


def reuse_port(skt: socket.socket) -> socket.socket:
    """``skt`` with ``SO_REUSEPORT`` set if this process shares its ports."""
    if _sharing:
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return skt


class ReusePort(tcp.Port):
    """A TCP listening port bound with ``SO_REUSEPORT``."""

    def createInternetSocket(self) -> socket.socket:
        skt = super().createInternetSocket()
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return skt


class _ReusingReactor:
    """The reactor as Twisted's ``tcp:`` endpoints see it: ``listenTCP`` makes a
    :class:`ReusePort`; everything else is the reactor's own."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> ReusePort:
        probe_free(socket.SOCK_STREAM, interface, port)
        listening = ReusePort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening


def stream_reactor(reactor: Any) -> Any:
    """What to build a stream listener's endpoint with: ``reactor`` itself, or, when
    this process shares its ports, a view of it whose TCP ports share theirs."""
    return _ReusingReactor(reactor) if _sharing else reactor
