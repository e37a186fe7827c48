"""Connections accepted per reactor turn, capped (issue 14).

Twisted's ``tcp.Port`` accepts up to ``numberAccepts`` connections each time its socket
is readable, builds each one's protocol and runs its ``connectionMade`` in that same
turn; it starts at 100 and adds 20 whenever the loop was filled, without a bound.  So
under a flood of new connections (the live fuzzer: two processes connecting as fast
as they can) a single accept event built a hundred connections and more, one reactor
turn of 20-75 ms of CPU, 54 times in a 100,000-stream run, while everyone else waited.
:func:`cap_accepts` keeps a listening port to :data:`ACCEPT_SLICE` a turn: the rest
wait in the kernel's listen backlog and are accepted at the next turns, in order.
"""

from __future__ import annotations

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
                if self.numberAccepts > self.accept_slice:
                    self.numberAccepts = self.accept_slice
                return cls.doRead(self)

            capped = type(cls.__name__, (cls,), {"doRead": doRead, "accept_slice": limit,
                                                 "__module__": cls.__module__})
        _capped[cls] = capped
    port.__class__ = capped
    port.accept_slice = limit
