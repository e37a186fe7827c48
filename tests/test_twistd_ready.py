"""When ``twistd mqttbroker`` says it started: only once the reactor runs.

A daemon's parent exits 0 when told the broker started, and a supervisor (or a test)
may send SIGTERM at once; before the reactor runs, SIGTERM still has its default action
and kills the broker without its shutdown (no DISCONNECTs, the pidfile left behind).
``tests/test_twistd_run.py::FailedStartTests::test_daemon_started`` saw it now and then
in CI; this test makes the order certain with a reactor that has not started yet."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from mqtt_twisted import _twistd


class _NotYetRunning:
    """A reactor before ``run()``: callWhenRunning waits for :meth:`start`."""

    def __init__(self) -> None:
        self.running = False
        self.waiting: list[Any] = []

    def callWhenRunning(self, f: Any, *args: Any) -> None:
        if self.running:
            f(*args)
        else:
            self.waiting.append((f, args))

    def start(self) -> None:
        self.running = True
        for f, args in self.waiting:
            f(*args)


class _Broker:
    def __init__(self, reactor: _NotYetRunning) -> None:
        self.reactor = reactor
        self.ready: defer.Deferred[None] = defer.Deferred()
        self._listeners: list[Any] = []
        self.parent: Any = None
        self.running = False
        self.name = None

    def setServiceParent(self, parent: Any) -> None:
        parent.addService(self)

    def disownServiceParent(self) -> None:  # pragma: no cover - not called
        pass

    def privilegedStartService(self) -> None:
        pass

    def startService(self) -> None:
        self.running = True

    def stopService(self) -> None:  # pragma: no cover - not called
        self.running = False


class ReadyTests(SynchronousTestCase):
    def test_parent_told_only_once_the_reactor_runs(self) -> None:
        """The status pipe gets "0" after the reactor started (its signal handlers are
        installed by then), not when the listeners listen before ``reactor.run()``."""
        self.patch(_twistd, "sd_notify", lambda state, environ=None: False)
        once: list[Any] = []  # (the process's own signal handlers stay as they are)
        self.patch(_twistd, "take_stop_signals_once", once.append)
        settled: list[bool] = []
        from mqtt_twisted import gctune
        self.patch(gctune, "settle", lambda: settled.append(True))
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        reactor = _NotYetRunning()
        broker = _Broker(reactor)
        run = _twistd.TwistdRun(broker, {"statusPipe": write})
        run.startService()
        broker.ready.callback(None)  # every listener listens: reactor.run() not yet called
        os.set_blocking(read, False)
        self.assertRaises(BlockingIOError, os.read, read, 100)
        self.assertEqual(settled, [])
        self.assertEqual(once, [])  # (twistd's handlers are not there yet)
        reactor.start()
        self.assertEqual(os.read(read, 100), b"0")
        self.assertEqual(settled, [True])
        self.assertEqual(once, [reactor])
