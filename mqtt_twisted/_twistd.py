"""What ``twistd`` does not do for a broker, done by ``twistd mqttbroker`` itself.

twistd prints its whole ``--help`` before a usage error, reports a daemon as started
as soon as ``startService`` returns, exits 0 whatever happened to the service
(twisted/twisted#4762, #11335), writes ``twistd.pid`` in the foreground too, and takes
an ``-l`` put before the subcommand as its log file.  The pieces here make each of
these fail loudly or work, and tell systemd (``Type=notify``) once the broker listens;
only ``tap.py`` uses them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import socket
import sys
from typing import Any, NoReturn

from twisted.application.service import MultiService
from twisted.internet.error import ReactorNotRunning
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.python.util import untilConcludes

PROGRAM = "twistd mqttbroker"
#: Exit status of a usage error (as argparse and GNU tools), and of a failed start.
USAGE_ERROR, START_FAILED = 2, 1
#: twistd's default --pidfile, written in the current directory.
DEFAULT_PIDFILE = "twistd.pid"

_ADAPTER = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*=")


def usage_exit(message: str) -> NoReturn:
    """Print one line naming the mistake and a hint (not twistd's 46 lines of help),
    and exit with status 2."""
    sys.stdout.flush()
    _tell_supervisor(message)
    sys.stderr.write(f"{PROGRAM}: error: {message}\n"
                     f"Try '{PROGRAM} --help' for more information.\n")
    sys.stderr.flush()
    raise SystemExit(USAGE_ERROR)


def _tell_supervisor(message: str) -> None:
    """A worker's usage error (its configuration file changed, say) on its start pipe,
    for its supervisor's log: a daemon's workers write their standard error nowhere."""
    from mqtt_twisted.workers import this_worker

    worker = this_worker()
    if worker is not None:
        with contextlib.suppress(OSError):
            os.write(worker.ready_fd, b"1 " + message.encode("utf-8", "replace")[:190])


def is_twistd(config: Any) -> bool:
    """Whether ``config`` is twistd's own options (our Options' parent under twistd)."""
    from twisted.application.app import ServerOptions

    return isinstance(config, ServerOptions)


def _endpoint_types() -> set[str]:
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    return {"tcp", "ssl", "unix"} | {
        p.prefix for p in getPlugins(IStreamServerEndpointStringParser)}


def _given(argv: list[str], subcommand: str, option: str) -> bool:
    """Whether twistd's part of ``argv`` (before the subcommand) names ``--option``,
    abbreviations included (getopt accepts ``--pid=...``)."""
    for arg in argv[:argv.index(subcommand)] if subcommand in argv else argv:
        name = arg[2:].partition("=")[0] if arg.startswith("--") else ""
        if len(name) >= 2 and option.startswith(name):
            return True
    return False


def check_twistd_options(config: Any, argv: list[str] | None = None) -> None:
    """Refuse or adjust the twistd options that trap a broker operator."""
    argv = sys.argv[1:] if argv is None else argv
    logfile = config.get("logfile") or ""
    kind = _ADAPTER.sub("", logfile).partition(":")[0]
    if ":" in logfile and kind in _endpoint_types():
        raise UsageError(
            f"twistd's -l is --logfile, not --listen: -l {logfile} would log to a file of "
            f"that name; put --listen after mqttbroker (twistd -n mqttbroker --listen "
            f"{logfile})")
    if config.get("nodaemon") and config.get("pidfile") == DEFAULT_PIDFILE and not _given(
            argv, getattr(config, "subCommand", None) or "mqttbroker", "pidfile"):
        # A foreground broker is watched by its supervisor or terminal, not by a pidfile;
        # a twistd.pid left in the current directory stops the next broker started there.
        config["pidfile"] = ""


class TwistdRun(MultiService):
    """The broker service under twistd: a daemonizing parent is told the outcome once the
    store answered and every listener listens, and a broker that could not start ends
    the process with a non-zero exit status, so that a supervisor sees it."""

    def __init__(self, broker: Any, config: Any, supervisor: Any = None,
                 worker: Any = None) -> None:
        super().__init__()
        self.broker = broker
        self._config = config
        self._pipe: int | None = None
        #: ``--workers``: the supervisor of the other workers (in worker 0), or what this
        #: process is as a worker (``workers.Worker``: it reports its start on a pipe).
        self.supervisor = supervisor
        self.worker = worker
        broker.setServiceParent(self)
        if supervisor is not None:
            supervisor.setServiceParent(self)

    def startService(self) -> None:
        # twistd writes "started" to its status pipe when startService returns: too early.
        self._pipe = self._config.get("statusPipe")
        self._config["statusPipe"] = None
        if self.worker is not None:
            from mqtt_twisted.workers import Heartbeat, Lifeline

            self._pipe = self.worker.ready_fd
            self.broker.log.info("Worker {index} (pid {pid}) of the supervisor pid {parent}",
                                 index=self.worker.index, pid=os.getpid(),
                                 parent=os.getppid(), action="worker_start")
            Lifeline(self.broker.reactor, self.worker.lifeline_fd, self.worker.index).start()
            if self.worker.heartbeat_fd is not None:
                Heartbeat(self.broker.reactor, self.worker.heartbeat_fd).start()
        reactor = self.broker.reactor
        reactor.callWhenRunning(take_stop_signals_once, reactor)  # (handlers in place)
        try:
            super().startService()
        except Exception as e:
            self._report(b"1 " + str(e).encode("ascii", "backslashreplace"))
            raise
        self.broker.ready.addCallbacks(self._started, self._failed)

    def _started(self, _: Any) -> None:
        # The listeners listen before reactor.run(); until the reactor runs, SIGTERM
        # has its default action and would kill the broker without its shutdown (no
        # DISCONNECTs, the pidfile left). So the parent and systemd are told once it
        # runs, its signal handlers installed (tests/test_twistd_ready.py).
        self.broker.reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        if self.supervisor is None:
            self._listening()
            return
        self.supervisor.start_workers().addCallbacks(
            lambda _: self._listening(), self._workers_failed)

    def _workers_failed(self, failure: Failure) -> None:
        if self.supervisor.stopping:  # (stopped meanwhile: SIGTERM during the start)
            return
        self.broker.log.critical("The broker could not start: a worker did not: {error}",
                                 error=failure.getErrorMessage(), action="start_failed")
        self._report(b"1 a worker did not start: " + failure.getErrorMessage().encode(
            "ascii", "backslashreplace"))
        exit_after_twistd(START_FAILED)
        with contextlib.suppress(ReactorNotRunning):
            self.broker.reactor.stop()

    def _listening(self) -> None:
        from mqtt_twisted import gctune

        self._report(b"0")
        names = ", ".join(s.name for s in getattr(self.broker, "_listeners", ()))
        sd_notify(f"READY=1\nSTATUS=Listening: {names}")
        gctune.settle()  # the collector, for a heap that grows with sessions

    def stopService(self) -> Any:
        sd_notify("STOPPING=1")
        return super().stopService()

    def _failed(self, failure: Failure) -> None:
        error = failure.value
        text = failure.getErrorMessage()
        reason = getattr(error, "reason", None)
        if len(text) > 98 and reason:
            text = reason  # the parent reads 100 bytes: the reason, whole, matters most
        self._report(b"1 " + text.encode("ascii", "backslashreplace"))
        exit_after_twistd(START_FAILED)

    def _report(self, status: bytes) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            untilConcludes(os.write, pipe, status[:100])
            untilConcludes(os.close, pipe)


def take_stop_signals_once(reactor: Any) -> None:
    """Once the reactor is stopping (a first SIGTERM or SIGINT, or a failed start), a
    SIGTERM or SIGINT is ignored: twistd's handler would stop it again and log
    ``ReactorNotRunning``'s traceback.  Two come together whenever a process group is
    signalled and a parent passes the signal on too (``--workers`` under systemd's
    stop, or Ctrl-C)."""
    import signal

    taken: list[int] = []
    reactor.addSystemEventTrigger("before", "shutdown", taken.append, 0)
    for number in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(number)
        if not callable(handler):
            continue

        def once(signum: int, frame: Any, handler: Any = handler) -> None:
            if not taken:
                taken.append(signum)
                handler(signum, frame)

        signal.signal(number, once)


def sd_notify(state: str, environ: Any = None) -> bool:
    """Tell systemd (``Type=notify``) about the service's state, as ``sd_notify(3)``:
    one datagram to ``$NOTIFY_SOCKET``.  False when not run by systemd (no socket) or
    when it could not be told (it then treats the start as failed after its timeout)."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as e:
        sys.stderr.write(f"{PROGRAM}: could not notify systemd at {address!r}: {e}\n")
        return False
    return True


_exit_code: list[int] = []


def exit_after_twistd(code: int) -> None:
    """End the process with ``code`` once twistd is done (reactor stopped, pidfile
    removed, last line logged): twistd has no way to set its exit status, so this
    happens at interpreter exit, with ``os._exit``.  twistd's log files are unbuffered
    and stdout and stderr are flushed here; exit handlers registered before this one
    (none of ours) do not run."""
    if _exit_code:
        return
    _exit_code.append(code)

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    atexit.register(leave)
