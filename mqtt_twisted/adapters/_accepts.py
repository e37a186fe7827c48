"""Connections accepted per reactor turn, capped (issue 14).

Twisted's ``tcp.Port`` accepts up to ``numberAccepts`` connections each time its socket
is readable, builds each one's protocol and runs its ``connectionMade`` in that same
turn; it starts at 100 and adds 20 whenever the loop was filled, without a bound.  So
under a flood of new connections (the live fuzzer: two processes connecting as fast
as they can) a single accept event built a hundred connections and more, one reactor
turn of 20-75 ms of CPU, 54 times in a 100,000-stream run, while everyone else waited.
:func:`cap_accepts` keeps a listening port to :data:`ACCEPT_SLICE` a turn: the rest
wait in the kernel's listen backlog and are accepted at the next turns, in order.

:func:`accept_behind` also ties a port to a count of connections accepted but not yet
served (the MQTT listeners: those whose CONNECT waits at the broker's gate,
``core/admission.py``): while any wait, the port accepts only what brings them to a
slice, so that a flood waits in the kernel's backlog (bounded, and refused there when
full) rather than as accepted connections that would each cost a read, a pause and,
ten seconds later, an abort.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp

#: Connections accepted per reactor turn and port (each costs ~0.1-0.3 ms of CPU
#: before it reads anything).
ACCEPT_SLICE = 32

_capped: dict[type, type] = {}


def cap_accepts(port: Any, limit: int = ACCEPT_SLICE) -> None:
    """Make ``port`` (a ``tcp.Port``, UNIX ports included) accept at most ``limit``
    connections per readable event; anything else is left as it is."""
    if not isinstance(port, tcp.Port):
        return
    cls = type(port)
    capped = _capped.get(cls)
    if capped is None:
        if getattr(cls, "accept_slice", None) is not None:
            capped = cls  # already one of ours
        else:
            def doRead(self: Any) -> Any:
                room = self.accept_slice
                if self.accept_waiting is not None:
                    room -= self.accept_waiting()
                    if room <= 0:
                        return None  # (still readable: the next turns come back)
                if self.numberAccepts > room:
                    self.numberAccepts = room
                return cls.doRead(self)

            capped = type(cls.__name__, (cls,), {"doRead": doRead, "accept_slice": limit,
                                                 "accept_waiting": None,
                                                 "__module__": cls.__module__})
        _capped[cls] = capped
    port.__class__ = capped
    port.accept_slice = limit


def accept_behind(port: Any, waiting: Callable[[], int]) -> Any:
    """Have a capped ``port`` accept at most ``ACCEPT_SLICE - waiting()`` connections a
    turn (none while a slice or more wait); returns ``port`` (a Deferred's callback)."""
    if getattr(type(port), "accept_slice", None) is not None:
        port.accept_waiting = waiting
    return port
