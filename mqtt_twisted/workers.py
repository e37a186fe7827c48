"""Several broker processes on one host, sharing its listeners: ``--workers N``.

Why: a Python broker uses one core (one interpreter, one reactor).  ``--workers N``
runs N processes on the same listeners, each a node of a cluster on the Redis of
``--store`` (docs/cluster.md), so that a client of any worker gets what is published
on every worker.  Each binds its listeners with ``SO_REUSEPORT``
(``adapters/reuseport.py``) and the kernel spreads new connections over them.

The process twistd runs is worker 0 and the supervisor (:class:`Supervisor`): once it
listens it starts workers 1..N-1 (the same command line, with :data:`WORKER_ENV` set),
reports the broker started only when every worker has (a worker that cannot start
fails the start, exit status 1, with its reason), starts again one that dies (after
1 s, doubling to 30 s while it keeps dying young), passes SIGHUP on, and on SIGTERM
stops them all and waits for them.  A worker reports its start on a pipe
(:data:`READY_FD`, what a daemonizing twistd's status pipe says) and watches another
that only the supervisor holds open (:data:`LIFELINE_FD`): when the supervisor is gone,
even killed with SIGKILL, the worker stops itself (:class:`Lifeline`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet import fdesc
from twisted.internet.defer import Deferred, DeferredList, FirstError
from twisted.internet.error import ProcessExitedAlready, ReactorNotRunning
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mqtt_twisted._strings import split_colons
from mqtt_twisted.logs import TWISTD_LOGGER, twistd_logger

log = Logger(namespace="mqtt_twisted.workers")

#: The environment variable that makes a broker process worker INDEX of a supervisor:
#: ``"INDEX,READY_FD,LIFELINE_FD,HEARTBEAT_FD"``.
WORKER_ENV = "MQTT_TWISTED_WORKER"
READY_FD, LIFELINE_FD, HEARTBEAT_FD = 3, 4, 5
#: Seconds between a worker's heartbeats (a byte its reactor writes to its supervisor),
#: and between the supervisor's looks at when it last heard from each.
HEARTBEAT = 1.0
#: Seconds a listening worker may send no heartbeat before it is killed and started
#: again (``--worker-timeout``; gunicorn's ``--timeout`` is 30 s too): a reactor turn
#: that never ends, or a stopped process, would keep its share of new connections.
WORKER_TIMEOUT = 30.0
#: Seconds a worker may take to start (store, cluster, listeners) before the start fails.
START_TIMEOUT = 60.0
#: Seconds a stopping worker gets (its clients' DISCONNECTs, leaving the cluster) before
#: it is killed.
STOP_TIMEOUT = 30.0
#: A dead worker starts again after RESTART_FIRST seconds, doubling up to RESTART_MAX
#: while it dies within RESTART_RESET seconds of its start.
RESTART_FIRST, RESTART_MAX, RESTART_RESET = 1.0, 30.0, 60.0
#: The store schemes a cluster runs on (tap.py's ``--cluster`` check).
CLUSTER_STORES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")


class WorkerFailed(Exception):
    """A worker did not start: its own reason, or how it ended."""


@dataclass(frozen=True, slots=True)
class Worker:
    """What this process is as a worker (:func:`this_worker`)."""

    index: int
    ready_fd: int
    lifeline_fd: int
    heartbeat_fd: int | None = None


def this_worker(environ: Any = None) -> Worker | None:
    """This process's place among the workers; None for the supervisor (or no workers)."""
    value = (os.environ if environ is None else environ).get(WORKER_ENV)
    if not value:
        return None
    return Worker(*(int(part) for part in value.split(",")))


def check(count: int, store: str, listeners: list[Any]) -> None:
    """Raise ValueError (a usage error's text) unless ``count`` workers can share this
    configuration: a cluster store, and listeners with a fixed TCP or UDP port."""
    if count <= 1:
        return
    if store.partition(":")[0] not in CLUSTER_STORES:
        raise ValueError(f"--workers {count} needs --store redis://HOST:PORT/DB: the workers "
                         f"are nodes of a cluster and share sessions, retained messages and "
                         f"routes through it (not --store {store})")
    for settings in listeners:
        endpoint = settings.endpoint
        parts = split_colons(endpoint, keep_escapes=False)
        if parts[0] == "haproxy":
            parts = parts[1:]
        kind = parts[0].strip().lower() if parts else ""
        if kind not in ("tcp", "tcp6", "ssl", "udp"):
            raise ValueError(f"--listen {settings.describe()}: --workers shares TCP and UDP "
                             f"ports only (tcp:, tcp6:, ssl:, udp:), not {kind or endpoint}:")
        positional = [p for p in parts[1:] if "=" not in p]
        keyed = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        port = keyed.get("port", positional[0] if positional else "").strip()
        if not port.isdigit() or int(port) == 0:
            raise ValueError(f"--listen {settings.describe()}: with --workers every worker "
                             f"listens on the same port, so give one (port 0 would be a "
                             f"different one in each)")


def node_name(name: str, given: str | None, index: int, pid: int | None = None) -> str:
    """Worker ``index``'s node name: ``--cluster NAME`` as ``NAME-wINDEX-PID``; ``auto``
    (``host:pid``) is already a name of its own in each process.  A name of its own in
    each run: a worker started again under its dead predecessor's name, within the
    predecessor's lease, would keep the cluster from adopting its sessions and stream."""
    if given in (None, "auto"):
        return name
    return f"{name}-w{index}-{os.getpid() if pid is None else pid}"


def ignore_interrupts() -> None:
    """A worker ignores SIGINT (before twistd's reactor would handle it): Ctrl-C and a
    script's ``kill -INT`` of the process group stop the supervisor, which stops the
    workers with SIGTERM; a supervisor started with SIGINT ignored (``cmd &`` in a
    script) keeps its workers, whose ignored signals a spawn resets to the default."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_command(argv: list[str], config: Any, index: int,
                   directory: str | None = None) -> list[str]:
    """The command line of worker ``index``: twistd in the foreground, without a pid
    file, in the supervisor's run directory, logging where the supervisor logs (syslog,
    or a log file of its own: ``FILE.wINDEX``, since each twistd rotates its file), then
    ``mqttbroker`` and our own arguments (relative paths in them are the supervisor's:
    the worker starts in ``directory``, where the supervisor was started).  twistd's
    ``--reactor``, ``--umask`` and a ``--logger`` of the user's are the supervisor's too."""
    twistd = ["--nodaemon", "--pidfile="]
    if config.get("reactor"):
        twistd.append(f"--reactor={config['reactor']}")
    if config.get("umask") is not None:
        twistd.append(f"--umask={config['umask']:04o}")
    logger = config.get("logger")  # (twistd has made a name into the callable by now)
    if logger is not None and logger is not twistd_logger and logger != TWISTD_LOGGER:
        name = logger if isinstance(logger, str) else f"{logger.__module__}.{logger.__qualname__}"
        twistd.append(f"--logger={name}")  # (else each worker makes ours from its options)
    rundir = config.get("rundir")
    if rundir and rundir != ".":
        twistd.append(f"--rundir={os.path.join(directory or os.getcwd(), rundir)}")
    logfile = config.get("logfile") or (None if config.get("nodaemon") else "twistd.log")
    if config.get("syslog"):
        twistd += ["--syslog", f"--prefix={config.get('prefix') or 'twisted'}-w{index}"]
    elif logfile and logfile != "-":
        twistd.append(f"--logfile={logfile}.w{index}")
    run = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
    return [sys.executable, "-c", run, *twistd, "mqttbroker", *argv]


def _how(reason: Failure) -> str:
    """How a process ended, in words."""
    value = reason.value
    signal_number = getattr(value, "signal", None)
    if signal_number:
        return f"killed by signal {signal_number}"
    return f"exit status {getattr(value, 'exitCode', None)}"


class _WorkerProcess(ProcessProtocol):
    """One worker as its supervisor sees it: its start report and its end."""

    def __init__(self, supervisor: Supervisor, index: int, started_at: float) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started_at = started_at
        #: Fires when the worker reports it listens; fails if it reports or ends otherwise.
        self.ready: Deferred[None] = Deferred()
        #: Fires when the process has ended.
        self.ended: Deferred[None] = Deferred()
        self.report = b""
        self.exited = False
        self.listening = False  # (reported its start: its signal handlers are in place)
        self.how = ""  # how it ended, in words
        self.timeout: Any = None
        self.kill: Any = None
        #: When its last heartbeat came (the supervisor's clock); None once it is killed
        #: for want of them.
        self.heard: float | None = started_at

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == HEARTBEAT_FD:
            if self.heard is not None:
                self.heard = self.supervisor.clock.seconds()
        elif childFD == READY_FD:
            self.report = (self.report + data)[:200]

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == READY_FD and not self.ready.called and self.report:
            if self.report[:1] == b"0":
                self._settle(None)
            else:
                text = self.report[2:].decode("utf-8", "replace").strip()
                self._settle(WorkerFailed(text or "it could not start"))

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        self.how = _how(reason)
        if not self.ready.called:
            self._settle(WorkerFailed(f"it ended before it listened ({self.how})"))
        for call in (self.timeout, self.kill):
            if call is not None and call.active():
                call.cancel()
        self.supervisor.ended(self)  # (before those waiting on it go on)
        self.ended.callback(None)

    def _settle(self, error: Exception | None) -> None:
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()
        if error is None:
            self.listening = True
            self.heard = self.supervisor.clock.seconds()
            self.ready.callback(None)
        else:
            self.ready.errback(error)

    def timed_out(self) -> None:
        """Not started within START_TIMEOUT: a failed start, and the process killed."""
        self._settle(WorkerFailed(f"it did not start within {START_TIMEOUT:g} s"))
        self.signal("KILL")

    def signal(self, name: str | int) -> None:
        if not self.exited:
            with contextlib.suppress(ProcessExitedAlready):  # (ended meanwhile)
                self.transport.signalProcess(name)


class Supervisor(Service):
    """Workers 1..count-1 of this broker (worker 0): started, kept running, stopped."""

    name = "workers"

    def __init__(self, reactor: Any, count: int, command: Callable[[int], list[str]],
                 clock: Any = None, directory: str | None = None,
                 timeout: float = WORKER_TIMEOUT) -> None:
        self.reactor = reactor
        #: Seconds without a heartbeat before a listening worker is killed (0: never).
        self.timeout = timeout
        self._watch: LoopingCall | None = None
        self._last_look: float | None = None
        #: Where workers start: where the supervisor was started (before twistd went to
        #: its --rundir), so that relative paths on the command line mean the same.
        self.directory = directory or os.getcwd()
        self.clock = clock if clock is not None else reactor
        self.count = count
        #: Worker index -> its command line (``worker_command``; a test's stand-in).
        self.command = command
        self.workers: dict[int, _WorkerProcess] = {}
        self.stopping = False
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, Any] = {}

    def start_workers(self) -> Deferred[None]:
        """Start every worker; fires when all listen, fails with the first that did not
        (a :class:`WorkerFailed` naming it)."""
        self._pass_on_log_rotation()
        if self.timeout:
            self._watch = LoopingCall(self._look)
            self._watch.clock = self.clock
            self._watch.start(HEARTBEAT, now=False)
        starting = [self._spawn(index).ready for index in range(1, self.count)]
        done = DeferredList(starting, fireOnOneErrback=True, consumeErrors=True)

        def first_error(failure: Failure) -> Failure:
            failure.trap(FirstError)
            return failure.value.subFailure  # type: ignore[no-any-return]

        def started(_: Any) -> None:
            log.info("All {count} workers listen", count=self.count, action="workers_ready")

        return done.addCallbacks(started, first_error)

    def _spawn(self, index: int) -> _WorkerProcess:
        process = _WorkerProcess(self, index, self.clock.seconds())
        environ = {key: value for key, value in os.environ.items()
                   if key != "NOTIFY_SOCKET"}  # (systemd hears from worker 0 only)
        environ[WORKER_ENV] = f"{index},{READY_FD},{LIFELINE_FD},{HEARTBEAT_FD}"
        command = self.command(index)
        self.workers[index] = process
        try:
            self.reactor.spawnProcess(
                process, command[0], command, env=environ, path=self.directory,
                childFDs={0: "w", 1: 1, 2: 2, READY_FD: "r", LIFELINE_FD: "w",
                          HEARTBEAT_FD: "r"})
        except Exception as e:  # (the interpreter gone in a deploy, no descriptors left)
            process.exited = True
            process.how = f"could not be started: {e}"
            process.ready.errback(WorkerFailed(process.how))  # (for start_workers or _restart)
            self.clock.callLater(0, self.ended, process)
            return process
        process.timeout = self.clock.callLater(START_TIMEOUT, process.timed_out)
        log.info("Started worker {index} of {count} (pid {pid})", index=index,
                 count=self.count, pid=process.transport.pid, action="worker_start")
        return process

    def ended(self, process: _WorkerProcess) -> None:
        """A worker's process ended: expected when stopping, else started again."""
        if self.workers.get(process.index) is process:
            del self.workers[process.index]
        if self.stopping:
            return
        ran = self.clock.seconds() - process.started_at
        delay = RESTART_FIRST if ran >= RESTART_RESET else min(
            RESTART_MAX, self._delays.get(process.index, RESTART_FIRST / 2) * 2)
        self._delays[process.index] = delay
        log.warn("Worker {index} ended ({how}) after {ran:.1f} s; starting it again in "
                 "{delay:g} s", index=process.index, how=process.how, ran=ran, delay=delay,
                 action="worker_end")
        self._restarts[process.index] = self.clock.callLater(delay, self._restart,
                                                             process.index)

    def _restart(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self.stopping:
            return
        self._spawn(index).ready.addCallbacks(
            lambda _: log.info("Worker {index} listens again", index=index,
                               action="worker_ready"),
            lambda f: log.warn("Worker {index} did not start: {error}", index=index,
                               error=f.getErrorMessage(), action="worker_start_failed"))

    def _look(self) -> None:
        """Kill a listening worker not heard from for ``timeout`` seconds (its restart
        follows, and the cluster adopts what it had)."""
        now = self.clock.seconds()
        late = self._last_look is not None and now - self._last_look > 3 * HEARTBEAT
        self._last_look = now
        for process in list(self.workers.values()):
            if late and process.heard is not None:
                process.heard = now  # (this process's own turn was late: pipes unread)
            elif (process.listening and not process.exited and process.heard is not None
                  and now - process.heard > self.timeout):
                log.error("Worker {index} (pid {pid}) sent no heartbeat for {silent:.0f} s "
                          "(stopped, or a reactor turn that does not end): SIGKILL",
                          index=process.index, pid=getattr(process.transport, "pid", None),
                          silent=now - process.heard,
                          action="worker_hung")
                process.heard = None
                process.signal("KILL")

    def _kill(self, process: _WorkerProcess) -> None:
        log.warn("Worker {index} did not stop within {timeout:g} s of SIGTERM: SIGKILL",
                 index=process.index, timeout=STOP_TIMEOUT, action="worker_killed")
        process.signal("KILL")

    def reload(self) -> None:
        """SIGHUP: every worker re-reads its files too (one still starting reads them
        anyway, and SIGHUP's default action would end it)."""
        self._signal_listening("HUP")

    def _signal_listening(self, name: str | int) -> None:
        """Signal ``name`` (Twisted's names: HUP, INT, KILL, STOP, TERM; else a number)
        to every worker that has reported its start."""
        for process in list(self.workers.values()):
            if process.listening:
                process.signal(name)

    def _pass_on_log_rotation(self) -> None:
        """twistd with ``--logfile`` rotates its file on SIGUSR1: each worker's file
        too (``FILE.wINDEX``).  Without a handler of twistd's, SIGUSR1 is left alone."""
        rotate = signal.getsignal(signal.SIGUSR1)
        if not callable(rotate):
            return

        def rotate_all(signum: int, frame: Any) -> None:
            rotate(signum, frame)
            self.reactor.callFromThread(self._signal_listening, int(signal.SIGUSR1))

        signal.signal(signal.SIGUSR1, rotate_all)

    def stopService(self) -> Deferred[Any]:
        """SIGTERM every worker; fires when all have ended (SIGKILL after STOP_TIMEOUT)."""
        super().stopService()
        self.stopping = True
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        ending = []
        for process in list(self.workers.values()):
            if process.exited:
                continue
            process.signal("TERM")
            process.kill = self.clock.callLater(STOP_TIMEOUT, self._kill, process)
            ending.append(process.ended)
        return DeferredList(ending)


class Heartbeat:
    """A worker's heartbeat: a byte to its supervisor every :data:`HEARTBEAT` seconds,
    written by its reactor, so that a turn that never ends (or a stopped process)
    goes silent and the supervisor's ``--worker-timeout`` kills it."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self.fd = fd
        fdesc.setNonBlocking(fd)
        self.loop = LoopingCall(self.beat)
        self.loop.clock = reactor

    def start(self) -> None:
        self.loop.start(HEARTBEAT, now=True)

    def beat(self) -> None:
        try:
            os.write(self.fd, b".")
        except BlockingIOError:
            pass  # (the supervisor is behind; a beat is as good as many)
        except OSError:
            self.loop.stop()  # (the supervisor is gone: the lifeline stops this worker)


@implementer(IReadDescriptor)
class Lifeline:
    """A worker's end of the pipe its supervisor holds open: at its end of file (the
    supervisor is gone) the worker stops as on SIGTERM."""

    def __init__(self, reactor: Any, fd: int, index: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self.index = index
        fdesc.setNonBlocking(fd)

    def start(self) -> None:
        self.reactor.addReader(self)
        # (a stopping worker's reactor disconnects its readers: not the supervisor leaving)
        self.reactor.addSystemEventTrigger("before", "shutdown", self.reactor.removeReader,
                                           self)

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, 64)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        # (the supervisor writes nothing; end of file: the reactor calls connectionLost)
        return None if data else CONNECTION_DONE

    def connectionLost(self, reason: Any) -> None:
        """The supervisor's end closed (a pipe's hang-up reaches here without a read)."""
        os.close(self.fd)
        log.warn("Worker {index}: the supervisor is gone; stopping", index=self.index,
                 action="worker_orphaned")
        with contextlib.suppress(ReactorNotRunning):  # (stopping already)
            self.reactor.stop()

    def logPrefix(self) -> str:
        return "worker-lifeline"
