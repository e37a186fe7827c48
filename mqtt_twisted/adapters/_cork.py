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
