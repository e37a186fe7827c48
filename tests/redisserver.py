"""A real redis-server for the store tests: an ephemeral port, a temporary data directory.

Started with ``reactor.spawnProcess`` (Debian's ``/usr/bin/redis-server``, which the
test setup installs), polled with ``deferLater`` until it answers PING, and stopped
(or killed) in the test's cleanup.  It can be stopped and started again on the same
port and data directory, to take Redis away in the middle of a test.
"""

from __future__ import annotations

import os
import shutil
import signal as signal_module
import socket
import tempfile
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

#: Seconds redis-server may take to answer PING after it is started.
START_TIMEOUT = 15.0


def temp_dir(testcase: Any) -> str:
    """A fresh directory outside the checkout, removed after ``testcase``."""
    path = tempfile.mkdtemp(prefix="mqtt-twisted-redis-")
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


#: Every port free_port has handed out in this process: the kernel may hand the same
#: one out again as soon as the probing socket is closed, before its taker has bound it.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, never one this test
    run was given before (a broker given ``tcp:P`` and ``ssl:P`` cannot start)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class _Output(ProcessProtocol):
    """Keeps what a child process writes, and fires ``ended`` when it has exited."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.exited = False
        self._waiters: list[Deferred[None]] = []

    def ended(self) -> Deferred[None]:
        """Fires once the process has exited."""
        d: Deferred[None] = Deferred()
        if self.exited:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    def outReceived(self, data: bytes) -> None:
        self.output += data[-65536:]
        del self.output[:-65536]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.exited = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)


class _Ping(Protocol):
    def __init__(self) -> None:
        self.answer: Deferred[bytes] = Deferred()
        self._data = b""

    def connectionMade(self) -> None:
        self.transport.write(b"PING\r\n")

    def dataReceived(self, data: bytes) -> None:
        self._data += data
        if b"\r\n" in self._data and not self.answer.called:
            self.answer.callback(self._data)
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.answer.called:
            self.answer.errback(reason)


class RedisServer:
    """One redis-server process (and its successors, after ``restart``)."""

    def __init__(self, reactor: Any, directory: str, *extra: str, port: int | None = None,
                 password: str | None = None) -> None:
        self.reactor = reactor
        self.directory = os.path.abspath(directory)
        self.port = port or free_port()
        self.password = password
        self.extra = list(extra)
        self.process: _Output | None = None
        self.transport: Any = None
        os.makedirs(directory, exist_ok=True)

    def url(self, db: int = 0, **query: Any) -> str:
        auth = f":{self.password}@" if self.password else ""
        options = "&".join(f"{k}={v}" for k, v in query.items())
        return f"redis://{auth}127.0.0.1:{self.port}/{db}" + (f"?{options}" if options else "")

    @inlineCallbacks
    def start(self) -> Any:
        """Start redis-server and wait until it answers PING."""
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes", "--dir", self.directory,
                "--daemonize", "no", *self.extra]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = _Output()
        self.transport = self.reactor.spawnProcess(self.process, REDIS_SERVER, args,
                                                   env=None, path=self.directory)
        waited = 0.0
        while True:
            if self.process.exited:
                raise RuntimeError("redis-server exited: " + self.process.output.decode(
                    "utf-8", "replace"))
            try:
                ping = _Ping()
                yield connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port),
                                      ping)
                answer = yield ping.answer
                if answer.startswith((b"+PONG", b"-NOAUTH")):
                    return self
            except Exception:
                pass
            if waited >= START_TIMEOUT:
                raise RuntimeError("redis-server did not answer in time: " +
                                   self.process.output.decode("utf-8", "replace"))
            yield deferLater(self.reactor, 0.02, lambda: None)
            waited += 0.02

    @inlineCallbacks
    def command(self, *command: Any) -> Any:
        """One command on a txredisapi connection of the caller's own (bytes in, bytes out)."""
        import txredisapi

        conn = yield txredisapi.Connection("127.0.0.1", self.port, reconnect=False,
                                           charset=None, convertNumbers=False,
                                           password=self.password)
        try:
            result = yield conn.execute_command(*command)
        finally:
            yield conn.disconnect()
        return result

    def signal(self, number: int) -> None:
        """Send a signal (signal.SIGSTOP, signal.SIGCONT, ...) to the running redis-server."""
        if self.process is not None and not self.process.exited:
            self.transport.signalProcess(number)

    def stop(self, signal: str = "TERM") -> Deferred[Any]:
        """Stop it (TERM: a clean shutdown that flushes the append-only file; KILL: a crash);
        fires once it has exited."""
        process = self.process
        if process is None or process.exited:
            d: Deferred[Any] = Deferred()
            d.callback(None)
            return d
        ended = process.ended()
        self.signal(signal_module.SIGCONT)  # a stopped process would not act on TERM
        self.transport.signalProcess(signal)
        return ended

    def restart(self) -> Deferred[Any]:
        """Start again on the same port and data directory."""
        return self.start()
