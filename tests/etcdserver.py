"""A real etcd for the store tests: free client and peer ports, a temporary data directory.

Debian's ``etcd-server`` (3.4) is started with ``reactor.spawnProcess`` as a
single-member cluster and polled (``POST /v3/maintenance/status``) until it
answers; it can be killed and started again on the same ports and data
directory.  ``EtcdServer.shared`` is one etcd for a whole test run (started on
first use, killed at exit): tests that only need an empty store take a fresh key
prefix on it instead of a fresh server each, which saves a second per test.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal as signal_module
import subprocess
import tempfile
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web.client import Agent

try:
    from tests.redisserver import _Output, free_port
except ImportError:  # pytest's rootdir-relative import of tests/ as a plain directory
    from redisserver import _Output, free_port  # type: ignore[no-redef]

ETCD = shutil.which("etcd") or "/usr/bin/etcd"

#: Seconds etcd may take to answer after it is started.
START_TIMEOUT = 30.0

_counter = [0]


def fresh_prefix() -> str:
    """A key prefix no other test of this run uses."""
    _counter[0] += 1
    return f"t{os.getpid()}-{_counter[0]}"


def _arguments(directory: str, client: int, peer: int, name: str = "test",
               cluster: str | None = None) -> list[str]:
    return [ETCD, "--name", name, "--data-dir", os.path.join(directory, "data"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", cluster or f"{name}=http://127.0.0.1:{peer}",
            # One member: it elects itself after one election timeout; keep that short.
            "--heartbeat-interval", "50", "--election-timeout", "300",
            "--logger", "zap", "--log-level", "warn"]


@inlineCallbacks
def answered(reactor: Any, port: int) -> Any:
    """Whether etcd on ``port`` answers its status request (its JSON gateway is up)."""
    try:
        response = yield Agent(reactor, connectTimeout=1).request(
            b"POST", b"http://127.0.0.1:%d/v3/maintenance/status" % port)
        response.deliverBody(Protocol())  # the body does not matter; let it go
        return response.code == 200
    except Exception:
        return False


class EtcdServer:
    """One etcd process (and its successors, after ``restart``)."""

    _shared: EtcdServer | None = None

    def __init__(self, reactor: Any, directory: str, name: str = "test") -> None:
        self.reactor = reactor
        self.name = name
        #: --initial-cluster of a member of several (see ``cluster``); None: alone.
        self.cluster: str | None = None
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.port = free_port()
        self.peer_port = free_port()
        self.process: _Output | None = None
        self.transport: Any = None
        self.popen: subprocess.Popen[bytes] | None = None

    def url(self, prefix: str | None = None, **query: Any) -> str:
        options = "&".join(f"{k}={v}" for k, v in query.items())
        return (f"etcd://127.0.0.1:{self.port}/{prefix or fresh_prefix()}"
                + (f"?{options}" if options else ""))

    @classmethod
    @inlineCallbacks
    def shared(cls, reactor: Any) -> Any:
        """The etcd of this test run, started on first use as a plain child process (not
        the reactor's, whose pipes would outlive a test) and killed at exit."""
        server = cls._shared
        if server is None or server.popen is None or server.popen.poll() is not None:
            directory = tempfile.mkdtemp(prefix="mqtt-twisted-etcd-")
            server = cls._shared = cls(reactor, directory)
            server.popen = subprocess.Popen(
                _arguments(directory, server.port, server.peer_port),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            atexit.register(_end, server.popen, directory)
        yield server._wait(lambda: server.popen is not None and server.popen.poll() is not None)
        return server

    @inlineCallbacks
    def start(self) -> Any:
        """Start etcd (the reactor's child) and wait until it answers."""
        self.process = _Output()
        args = _arguments(self.directory, self.port, self.peer_port, self.name, self.cluster)
        self.transport = self.reactor.spawnProcess(self.process, ETCD, args, env=None,
                                                   path=self.directory)
        yield self._wait(lambda: self.process is not None and self.process.exited)
        return self

    @inlineCallbacks
    def _wait(self, exited: Any) -> Any:
        waited = 0.0
        while True:
            if exited():
                raise RuntimeError("etcd exited: " + self.output())
            ok = yield answered(self.reactor, self.port)
            if ok:
                return
            if waited >= START_TIMEOUT:
                raise RuntimeError("etcd did not answer in time: " + self.output())
            yield deferLater(self.reactor, 0.05, lambda: None)
            waited += 0.05

    def output(self) -> str:
        return bytes(self.process.output).decode("utf-8", "replace") if self.process else ""

    def stop(self, signal: str = "TERM") -> Deferred[Any]:
        """Stop it (TERM, or KILL for a crash); fires once it has exited."""
        process = self.process
        if process is None or process.exited:
            d: Deferred[Any] = Deferred()
            d.callback(None)
            return d
        ended = process.ended()
        self.transport.signalProcess(signal_module.SIGCONT)
        self.transport.signalProcess(signal)
        return ended

    def restart(self) -> Deferred[Any]:
        """Start again on the same ports and data directory."""
        return self.start()


def _end(popen: subprocess.Popen[bytes], directory: str) -> None:
    if popen.poll() is None:
        popen.kill()
        popen.wait()
    shutil.rmtree(directory, True)


def cluster(reactor: Any, directory: str, size: int = 3) -> list[EtcdServer]:
    """``size`` members of one etcd cluster (not started: start them all at once, since a
    member waits for a majority before it answers)."""
    members = [EtcdServer(reactor, os.path.join(directory, f"m{i}"), f"m{i}")
               for i in range(size)]
    initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in members)
    for member in members:
        member.cluster = initial
    return members


class Gateway:
    """``etcd gateway start``: etcd's TCP proxy to the live members of a cluster."""

    def __init__(self, reactor: Any, members: list[EtcdServer]) -> None:
        self.reactor = reactor
        self.port = free_port()
        self.process = _Output()
        endpoints = ",".join(f"127.0.0.1:{m.port}" for m in members)
        self.transport = reactor.spawnProcess(
            self.process, ETCD, [ETCD, "gateway", "start", "--endpoints", endpoints,
                                 "--listen-addr", f"127.0.0.1:{self.port}",
                                 "--retry-delay", "1s"], env=None)

    def stop(self) -> Deferred[Any]:
        ended = self.process.ended()
        if not self.process.exited:
            self.transport.signalProcess("KILL")
        return ended
