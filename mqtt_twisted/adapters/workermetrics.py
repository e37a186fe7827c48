"""``/metrics`` under ``--workers``: one scrape answers for every worker.

Why: the workers share the metrics port (``SO_REUSEPORT``), so each scrape reaches
whichever worker the kernel picks.  Answering for that worker alone, Prometheus saw a
different process's counters every scrape: resets, and rates that meant nothing.  Now
the worker a scrape reaches asks the others for theirs and answers with all of them,
each sample labelled ``worker="K"`` (as EMQX's unaggregated cluster view labels each
node's): ``sum without (worker) (...)`` is the broker's, and a worker started again
resets only its own series.  ``mqtt_worker_up{worker="K"}`` says whose answer is in
(0: dead, starting again, or not answering within :data:`ASK_TIMEOUT`).

How: every worker serves its own metrics, as JSON, on a unix socket ``wK.sock`` in a
directory that worker 0 (the supervisor) makes private (mode 0700) and passes down in
:data:`DIRECTORY_ENV`; a connection gets one answer and is closed.  Nothing is sent
or counted between scrapes.  Without ``--workers`` none of this exists and a scrape
is answered as before.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from typing import Any

from prometheus_client.metrics_core import Metric
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: The environment variable naming the workers' metrics directory (set by worker 0).
DIRECTORY_ENV = "MQTT_TWISTED_WORKERS_DIR"
#: Seconds a scrape waits for another worker's answer before it counts it down.
ASK_TIMEOUT = 3.0
#: Bytes an answer may have: a worker's metrics are some tens of KiB.
MAX_ANSWER = 16 * 1024 * 1024
#: The name of a supervisor's directory of sockets, before its pid.
PREFIX = "mqtt-twisted-workers-"
#: Bytes a unix socket's path may have (``sun_path``: 108 with its NUL, less on BSDs).
MAX_PATH = 100
#: The family that says whose answer a scrape holds.
UP = "mqtt_worker_up"

#: This process's share (set by :func:`share`; None: no ``--workers``).
_share: WorkerMetrics | None = None


def encode(metrics: list[Metric]) -> bytes:
    """``metrics`` as JSON (what a worker answers)."""
    return json.dumps([[m.name, m.documentation, m.type, m.unit,
                        [[s.name, s.labels, s.value] for s in m.samples]]
                       for m in metrics]).encode()


def decode(data: bytes) -> list[Metric]:
    """What :func:`encode` made, as prometheus-client's metric families again."""
    metrics = []
    for name, documentation, kind, unit, samples in json.loads(data):
        metric = Metric(name, documentation, kind, unit)
        for sample_name, labels, value in samples:
            metric.add_sample(sample_name, labels, value)
        metrics.append(metric)
    return metrics


def merge(answers: dict[int, list[Metric] | None]) -> list[Metric]:
    """One list of families from every worker's (None: no answer), each sample
    labelled with its worker, and :data:`UP` saying who answered."""
    merged: dict[str, Metric] = {}
    up = Metric(UP, "Whether this worker's metrics are in this scrape (1) or it did not "
                "answer (0: dead, starting again, or slow).", "gauge")
    for index in sorted(answers):
        worker = str(index)
        metrics = answers[index]
        up.add_sample(UP, {"worker": worker}, 0 if metrics is None else 1)
        for metric in metrics or ():
            into = merged.get(metric.name)
            if into is None:
                into = merged[metric.name] = Metric(metric.name, metric.documentation,
                                                    metric.type, metric.unit)
            for sample in metric.samples:
                into.add_sample(sample.name, {**sample.labels, "worker": worker},
                                sample.value)
    return [*merged.values(), up]


def sharing() -> WorkerMetrics | None:
    """This process's share of the workers' metrics, if it is a worker."""
    return _share


def share(reactor: Any, broker: Any, index: int, count: int,
          directory: str | None = None) -> WorkerMetrics:
    """Make this process worker ``index`` of ``count`` for ``/metrics``: worker 0 makes
    the directory and puts it in the environment its workers inherit; the others read
    it there.  Returns the service that answers the others (a child of ``TwistdRun``)."""
    global _share
    if directory is None:
        directory = os.environ.get(DIRECTORY_ENV) if index else None
    if directory is None:
        prefix = f"{PREFIX}{os.getpid()}-"  # (whose it is: see remove_stale)
        directory = tempfile.mkdtemp(prefix=prefix)  # (mode 0700)
        if len(os.path.join(directory, f"w{count}.sock")) > MAX_PATH:
            os.rmdir(directory)  # ($TMPDIR too deep for a socket's address)
            directory = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        remove_stale(os.path.dirname(directory))
        os.environ[DIRECTORY_ENV] = directory
    _share = WorkerMetrics(reactor, broker, index, count, directory)
    return _share


def remove_stale(parent: str) -> None:
    """Remove the directories in ``parent`` of supervisors that are gone without
    removing theirs (killed with SIGKILL): each is named after its supervisor's pid.
    One whose pid is alive again (another process) stays."""
    for path in glob.glob(os.path.join(glob.escape(parent), f"{PREFIX}*-*")):
        pid = os.path.basename(path)[len(PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except FileNotFoundError:
            pass  # (another supervisor starting beside this one removed it first)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # (alive, somebody else's)


def unshare() -> None:
    """No longer a worker (tests)."""
    global _share
    _share = None


class _Answer(Protocol):
    """One connection from another worker's scrape: this worker's metrics, then close."""

    def __init__(self, share: WorkerMetrics) -> None:
        self.share = share

    def connectionMade(self) -> None:
        d = self.share.own()
        d.addCallback(lambda metrics: self.transport.write(encode(metrics)))
        d.addErrback(lambda f: log.failure("Answering another worker's scrape failed", f))
        d.addBoth(lambda _: self.transport.loseConnection())


class _Ask(Protocol):
    """Reads one worker's answer to its end."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_ANSWER:
            self.transport.abortConnection()
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.size > MAX_ANSWER:
            self.done.errback(ValueError(f"an answer over {MAX_ANSWER} bytes"))
        else:
            self.done.callback(b"".join(self.chunks))


class WorkerMetrics(Service):
    """This worker's socket, and the gathering of every worker's metrics for a scrape."""

    name = "worker-metrics"

    def __init__(self, reactor: Any, broker: Any, index: int, count: int,
                 directory: str) -> None:
        self.reactor = reactor
        self.broker = broker
        self.index = index
        self.count = count
        self.directory = directory
        self._port: Any = None

    def path(self, index: int) -> str:
        return os.path.join(self.directory, f"w{index}.sock")

    def startService(self) -> None:
        super().startService()
        if self.index == 0:  # (once every worker has stopped: twistd's last phase)
            self.reactor.addSystemEventTrigger("after", "shutdown", shutil.rmtree,
                                               self.directory, ignore_errors=True)
        path = self.path(self.index)
        if os.path.exists(path):
            os.unlink(path)  # a predecessor's, killed before it could remove it
        d = UNIXServerEndpoint(self.reactor, path, mode=0o600).listen(
            Factory.forProtocol(lambda: _Answer(self)))
        d.addCallbacks(self._listening, lambda f: log.failure(
            "Worker {index} cannot answer the others' scrapes", f, index=self.index))

    def _listening(self, port: Any) -> None:
        self._port = port

    def stopService(self) -> Any:
        super().stopService()
        port, self._port = self._port, None
        return None if port is None else port.stopListening()

    def own(self) -> Deferred[list[Metric]]:
        """This worker's metrics (the broker's and its process's)."""
        from mqtt_twisted.adapters.metrics import local_metrics

        d: Deferred[Any] = maybeDeferred(self.broker.gateway.admin.metrics)
        return d.addCallback(local_metrics)

    def gather(self, own: list[Metric]) -> Deferred[list[Metric]]:
        """Every worker's metrics, ``own`` being this one's, merged for one scrape."""
        others = [index for index in range(self.count) if index != self.index]
        asked = [self._ask(index) for index in others]

        def merged(answers: list[list[Metric] | None]) -> list[Metric]:
            return merge({self.index: own, **dict(zip(others, answers))})

        return gatherResults(asked).addCallback(merged)

    def _ask(self, index: int) -> Deferred[list[Metric] | None]:
        asking = _Ask()
        endpoint = UNIXClientEndpoint(self.reactor, self.path(index), timeout=ASK_TIMEOUT)
        d = endpoint.connect(Factory.forProtocol(lambda: asking))

        def connected(protocol: Any) -> Deferred[bytes]:
            def hang_up(result: Any, timeout: float) -> Failure:
                protocol.transport.abortConnection()
                return Failure(TimeoutError(f"no answer in {timeout:g} s"))

            return protocol.done.addTimeout(  # type: ignore[no-any-return]
                ASK_TIMEOUT, self.reactor, onTimeoutCancel=hang_up)

        def failed(failure: Failure) -> None:
            log.debug("Worker {index}'s metrics: {error}", index=index,
                      error=failure.getErrorMessage())

        d.addCallback(connected).addCallback(decode)
        return d.addErrback(failed)

