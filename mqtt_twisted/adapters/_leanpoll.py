"""The epoll reactor's loop, dispatching to the lean MQTT transports directly.

Twisted's ``EPollReactor.doPoll`` hands every event to ``log.callWithLogger``: the
selectable's ``logPrefix``, a context dict, and three nested ``callWithContext`` calls
(getting and copying the context stack) before ``_doReadOrWrite`` runs; five to seven
Python calls per event, two or three events per connection cycle (accept, CONNECT,
DISCONNECT).  That context only names the ``system`` of lines logged through the
legacy ``twisted.python.log`` during the event; nothing the lean transports or the
broker log goes that way (``twisted.logger`` events do not read it), and
``_doReadOrWrite`` catches and logs what a handler raises by itself.  An event that
is a plain read (``EPOLLIN`` alone: a message arriving) is handled as
``_doReadOrWrite`` handles it, inline: one Python call less on every message's way.

:func:`install` replaces a running epoll reactor's ``doIteration`` with
:func:`_poll`: the same loop, which calls ``_doReadOrWrite`` directly for the classes
registered with :func:`dispatch_directly` (the lean MQTT transports and their
accepting ports) and through ``callWithLogger`` as before for everything else.  Any
other reactor (poll, select, a test's fake) is left alone.

Between passes the reactor's ``runUntilCurrent`` runs only when a timed call is new or
due (or a thread's call, a stop, cancelled calls to sweep wait), and ``timeout`` does not
look for new timed calls when there are none: two Python calls less a pass.  When the
reactor has not entered its loop yet (a listener started before ``run``, as twistd's
are), the loop is ours too (:func:`_main_loop`): those two tests inline, and a ``try``
for the ``with _topHandler`` around each pass, four Python calls less a pass.

It also runs the turn's end-of-turn work (``turns.after_turn``: the lean transports'
sends and closes, the turn's log lines) itself once the events are handled, instead of
the ``callLater(0)`` that work would otherwise schedule: no ``DelayedCall`` through the
reactor's heap, and no extra ``epoll_wait`` with no wait that a due call costs the
next iteration.
"""

from __future__ import annotations

import errno
import select
import sys
import types
from typing import Any

from twisted.internet.error import ConnectionFdescWentAway
from twisted.logger import Logger, LogLevel
from twisted.python import log

from mqtt_twisted.turns import handling_events, run_due

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover  (no epoll: nothing installed)
    EPollReactor = None  # type: ignore[assignment,misc]

#: ``EPOLLIN``: an event that is only that is a read, handled without ``_doReadOrWrite``.
_IN = select.EPOLLIN if hasattr(select, "EPOLLIN") else 1
#: What ``_doReadOrWrite`` gives a selectable whose descriptor is -1 when it is to read.
_GONE = ConnectionFdescWentAway("File descriptor lost")
#: Selectable classes whose events skip ``callWithLogger``.
_DIRECT: set[type] = set()


def dispatch_directly(cls: type) -> type:
    """Have :func:`_poll` hand the events of ``cls`` and its direct subclasses (a
    listener's own ``MQTTServer`` class) to ``_doReadOrWrite`` directly."""
    _DIRECT.add(cls)
    return cls


def install(reactor: Any) -> bool:
    """Run ``reactor``'s iterations with :func:`_poll` (True), if it is Twisted's
    epoll reactor with its own ``doPoll``; once per reactor."""
    if EPollReactor is None or not isinstance(reactor, EPollReactor):
        return False
    current = getattr(reactor.doIteration, "__func__", None)
    if current is _poll:
        return True
    if current is not EPollReactor.doPoll:
        return False  # (someone else's loop: left as it is)
    reactor.doIteration = reactor.doPoll = types.MethodType(_poll, reactor)
    reactor.runUntilCurrent = types.MethodType(_run_until_current, reactor)
    reactor.timeout = types.MethodType(_timeout, reactor)
    if getattr(reactor.mainLoop, "__func__", None) is EPollReactor.mainLoop:
        reactor.mainLoop = types.MethodType(_main_loop, reactor)  # (run() calls it next)
    return True


#: The longest ``epoll_wait`` timeout, in seconds (Twisted's ``timeout`` caps at it).
_LONGEST = 2147483


def _run_until_current(self: Any) -> None:
    """``runUntilCurrent``, called only when it has something to do: a thread's call,
    new or due timed calls, cancelled ones to sweep, a stop.  Each pass of the loop
    called it (and the ``_insertNewDelayedCalls`` it starts with) to find nothing,
    between every message's write and the next ``epoll_wait``."""
    pending = self._pendingTimedCalls
    if (self.threadCallQueue or self._newTimedCalls or self._justStopped
            or self._cancellations > 50 or (pending and pending[0].time <= self.seconds())):
        EPollReactor.runUntilCurrent(self)


def _timeout(self: Any) -> float | None:
    """``timeout``, without its ``_insertNewDelayedCalls`` call when there are none."""
    if self._newTimedCalls:
        return EPollReactor.timeout(self)  # type: ignore[no-any-return]
    pending = self._pendingTimedCalls
    if not pending:
        return None
    delay = pending[0].time - self.seconds()
    return 0 if delay < 0 else delay if delay < _LONGEST else _LONGEST


_log = Logger()


def _main_loop(self: Any) -> None:
    """``ReactorBase.mainLoop``: :func:`_passes`, then the line Twisted logs."""
    _passes(self)
    _log.info("Main loop terminated.")


def _passes(self: Any) -> None:
    """The reactor's passes while it runs, each with :func:`_run_until_current`'s and
    :func:`_timeout`'s tests inline (when those are still the reactor's as the loop
    starts: a replacement made before ``run`` is called each pass instead), and an
    ``except`` that logs and goes on as ``with _topHandler`` did: what ran between a
    message's write and the next ``epoll_wait`` was four Python calls, now none."""
    run_inline = getattr(self.runUntilCurrent, "__func__", None) is _run_until_current
    timeout_inline = getattr(self.timeout, "__func__", None) is _timeout
    while self._started:
        try:
            while self._started:
                if run_inline:
                    pending = self._pendingTimedCalls
                    if (self.threadCallQueue or self._newTimedCalls or self._justStopped
                            or self._cancellations > 50
                            or (pending and pending[0].time <= self.seconds())):
                        EPollReactor.runUntilCurrent(self)
                else:
                    self.runUntilCurrent()
                if not timeout_inline or self._newTimedCalls:
                    t2 = self.timeout()
                else:
                    pending = self._pendingTimedCalls
                    if not pending:
                        t2 = None
                    else:
                        t2 = pending[0].time - self.seconds()
                        t2 = 0 if t2 < 0 else t2 if t2 < _LONGEST else _LONGEST
                self.doIteration(self.running and t2)
        except BaseException:
            _log.failure("Unexpected error in main loop", level=LogLevel.critical)


class _NotRunning:
    """A reactor that is not running, as :func:`_passes` sees it: it returns at once."""

    _started = False
    runUntilCurrent = timeout = None


# CPython 3.11 specializes a function's attribute reads (quickens its code) only once it
# has been entered a few times: _passes, entered once per run(), read every attribute
# through the generic lookup for ever (measured: ~0.8k instructions a pass more than
# the calls it saves).  Entered here a few times first, its reads are specialized as
# the reactor's loop runs.  (3.12 and later quicken code when it is made.)
for _ in range(16):
    _passes(_NotRunning())


def _poll(self: Any, timeout: float | None) -> None:
    """``EPollReactor.doPoll``, without the log context for :data:`_DIRECT` classes."""
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    if not events:
        return
    selectables = self._selectables
    direct = _DIRECT
    drdw = self._doReadOrWrite
    handling_events(self)
    try:
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            cls = selectable.__class__
            if cls in direct or cls.__base__ in direct:
                if event == _IN:  # _doReadOrWrite's read, inline: a call less per read
                    try:
                        why = _GONE if selectable.fileno() == -1 else selectable.doRead()
                    except BaseException:
                        why = sys.exc_info()[1]
                        log.err()
                    if why:
                        try:
                            self._disconnectSelectable(selectable, why, True)
                        except KeyboardInterrupt:
                            raise
                        except BaseException:
                            log.err(system=cls.__name__)
                    continue
                try:
                    drdw(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:  # (as callWithLogger: logged, the loop goes on)
                    log.err(system=cls.__name__)
            else:
                log.callWithLogger(selectable, drdw, selectable, fd, event)
    finally:
        run_due(self)  # (the turn's sends, closes and log lines: turns.after_turn)
