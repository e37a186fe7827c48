"""Writes of one read, or one reactor turn, joined per connection (the cork).

Shared by the stream adapters whose connections write packet by packet: the MQTT
stream protocol (``adapters/mqtt.py``) and the WebSocket one (``adapters/websocket.py``),
where each write was a whole WebSocket message.
"""

from __future__ import annotations

import weakref
from typing import Any


class Cork:
    """The writes of one read (or one reactor turn), joined per connection.

    A Twisted transport's ``write`` is five more Python calls (its checks, the
    producer check, ``startWriting``, the reactor's ``addWriter``); a read of many
    PUBLISHes made that many writes to each subscriber and as many acks to the
    publisher. Now a protocol's ``write`` appends to its own list, and the lists go
    to their transports as one write each when the outermost ``dataReceived``
    returns, or, for writes made elsewhere (a timer, a store's answer, a peer node's
    delivery), at the reactor's next turn (``callLater(0)``: before it next polls, so
    nothing waits longer than it did; Twisted writes to the socket then anyway).
    """

    __slots__ = ("protocols", "reading", "scheduled", "reactor", "__weakref__")

    def __init__(self, reactor: Any) -> None:
        self.protocols: list[Any] = []  # what has a flush()
        self.reading = 0  # dataReceived calls on the stack
        self.scheduled = False
        self.reactor = reactor

    def schedule(self) -> None:
        self.scheduled = True
        self.reactor.callLater(0, self.flush)

    def read(self, receive: Any, data: bytes) -> None:
        """``receive(data)``, then, once no read is left on the stack, the flush."""
        self.reading += 1
        try:
            receive(data)
        finally:
            self.reading -= 1
            if not self.reading and self.protocols:
                self.flush()

    def flush(self) -> None:
        self.scheduled = False
        protocols = self.protocols
        while protocols:
            self.protocols = []
            for protocol in protocols:
                protocol.flush()
            protocols = self.protocols


#: One cork per reactor (tests run fake clocks beside the real reactor).
_corks: weakref.WeakKeyDictionary[Any, Cork] = weakref.WeakKeyDictionary()


def cork_for(reactor: Any) -> Cork:
    """The cork of ``reactor`` (the global reactor when None)."""
    if reactor is None:
        from twisted.internet import reactor
    cork = _corks.get(reactor)
    if cork is None:
        cork = _corks[reactor] = Cork(reactor)
    return cork


class CorkedWriter:
    """``write`` and ``flush`` for what a sans-IO connection writes to: the bytes kept
    until the read (or the reactor turn) ends, then handed to ``send_joined`` as one.
    The class using it has the slots ``factory`` (whose ``cork`` it is) and ``_out``."""

    __slots__ = ()
    factory: Any
    _out: list[bytes] | None

    def write(self, data: bytes) -> None:
        out = self._out
        if out is not None:
            out.append(data)
            return
        self._out = [data]
        cork = self.factory.cork
        cork.protocols.append(self)
        if not cork.reading and not cork.scheduled:
            cork.schedule()

    def flush(self) -> None:
        out = self._out
        if out is not None:
            self._out = None
            self.send_joined(out[0] if len(out) == 1 else b"".join(out))

    def send_joined(self, data: bytes) -> None:
        raise NotImplementedError
