"""Work left for the end of a reactor turn: one ``callLater(0)`` a turn for all of it.

A connection's CONNACK is sent, a closing connection is closed and the turn's log lines
are written once the turn's events are handled (``adapters/_leanserver.py``,
``adapters/_leanmqtt.py``, ``logs.py``).  Each was a ``callLater(0)`` of its own: a
``DelayedCall``, a push into the reactor's heap and a pop out of it (Python comparisons
both ways), three times in a turn of connects and disconnects.  Here the first piece of
work in a turn schedules one call that runs them all, in the order they came.

Work added while that call runs (a cluster node's batch flush writes Redis commands,
which are sent at the end of the turn too: ``cluster/client.py``) runs in the same
call, after the rest: not a reactor iteration later.  So no piece of work may add
itself again unconditionally (none does: each adds what it has just made).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

_log = Logger()
#: Reactor -> what is left for the end of its current turn: (function, argument).
_DUE: dict[Any, list[tuple[Callable[[Any], Any], Any]]] = {}


def after_turn(reactor: Any, f: Callable[[Any], Any], arg: Any) -> None:
    """Call ``f(arg)`` once ``reactor``'s current turn's events are handled."""
    due = _DUE.get(reactor)
    if due is None:
        due = _DUE[reactor] = []
        reactor.callLater(0, _run, reactor)
    due.append((f, arg))


def _run(reactor: Any) -> None:
    due = _DUE.get(reactor)
    if due is None:
        return
    at = 0
    try:
        while at < len(due):  # (work added meanwhile joins this list: see above)
            f, arg = due[at]
            at += 1
            try:
                f(arg)
            except Exception:  # (one failing piece of work does not cost the others theirs)
                _log.failure("End-of-turn work {f!r} failed", f=f)
    finally:
        del _DUE[reactor]
