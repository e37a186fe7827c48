"""The load generator's plumbing: loopback-safe client sockets, worker processes driven
over a pipe, and the counters they share (moved here from ``bench/loadgen.py`` so that
``mqtt-twisted bench`` and the ``bench/`` scripts share one implementation).

``host`` defaults to 127.0.0.1: ``bench/loadgen.py`` only ever targets it; ``mqtt-twisted
bench`` passes the host it was given.
"""

from __future__ import annotations

import fcntl
import itertools
import multiprocessing as mp
import os
import resource
import socket
import struct
import termios
import time

from mqtt_twisted.loadgen import wire as w

HOST = "127.0.0.1"
NS = 1_000_000_000


class ScenarioError(Exception):
    """A scenario could not complete: timeout, refused connection, dead worker."""


# -- sockets -------------------------------------------------------------------------------


def tune_socket(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes (within the socket's timeout)."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ScenarioError("connection closed by the broker")
        data += chunk
    return data


def open_client(port: int, client_id: str, timeout: float = 10.0,
                host: str = HOST) -> socket.socket:
    """Connect, send CONNECT and wait for a successful CONNACK."""
    sock = socket.create_connection((host, port), timeout=timeout)
    tune_socket(sock)
    sock.sendall(w.connect(client_id))
    ack = recv_exact(sock, w.CONNACK_LEN)
    if ack[0] != 0x20 or ack[3] != 0:
        sock.close()
        raise ScenarioError(f"CONNACK refused: {ack.hex()}")
    return sock


_IDS = itertools.count()


def client_id(tag: str) -> str:
    """A client identifier unique on this machine for the run (pid + counter), 3.1.1-safe:
    alphanumeric, at most 23 characters.  A duplicate would make the broker take over (close)
    the older connection."""
    return f"lg{tag}{os.getpid():x}n{next(_IDS):x}"


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (SIOCOUTQ)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]


def broker_cpu_s(pid: int | None) -> float | None:
    """The broker's CPU time so far (user + system, seconds) from /proc, or None: what
    a phase cost it, whatever else the machine was doing meanwhile."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def broker_rss_kib(pid: int | None) -> int | None:
    """The broker's resident set size (VmRSS, KiB) from /proc, or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def broker_cpu_ticks(pid: int | None) -> int:
    """The broker's user + system CPU time in clock ticks (0 when unknown)."""
    if not pid:
        return 0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def wait_until(t_ns: int) -> None:
    delay = t_ns - time.monotonic_ns()
    if delay > 0:
        time.sleep(delay / NS)


# -- worker processes ----------------------------------------------------------------------


class Worker:
    """A child process running one ``*Role`` object, driven by ``(command, kwargs)`` messages."""

    def __init__(self, role: type, *args) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=_serve, args=(role, child, *args), daemon=True)
        self.proc.start()
        self.name = f"{role.__name__.removesuffix('Role').lower()} (pid {self.proc.pid})"
        child.close()

    def send(self, command: str, **kwargs) -> None:
        self.conn.send((command, kwargs))

    def reply(self, timeout: float):
        """The answer to the last command; ScenarioError on timeout, error or death."""
        try:
            if not self.conn.poll(max(0.0, timeout)):
                raise ScenarioError(f"{self.name} gave no answer within {timeout:.0f} s")
            answer = self.conn.recv()
        except (EOFError, OSError) as e:
            raise ScenarioError(f"{self.name} died") from e
        if isinstance(answer, dict) and "error" in answer:
            raise ScenarioError(f"{self.name}: {answer['error']}")
        return answer

    def call(self, command: str, wait: float, **kwargs):
        self.send(command, **kwargs)
        return self.reply(wait)

    def stop(self) -> None:
        """End the process (politely, then by force)."""
        try:
            self.send("close")
        except OSError:
            pass
        self.proc.join(0.5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(1.0)
        self.conn.close()


def _serve(role: type, conn, *args) -> None:
    """Child process main loop: run commands on the role object until ``close``."""
    obj = role(*args)
    while True:
        try:
            command, kwargs = conn.recv()
        except EOFError:
            return
        try:
            answer = getattr(obj, command)(**kwargs)
        except Exception as e:
            answer = {"error": f"{type(e).__name__}: {e}"}
        try:
            conn.send(answer)
        except OSError:
            return
        if command == "close":
            return


class Control:
    """Values the parent, subscriber and publisher processes share while they count.

    ``expected`` is the number of PUBLISHes each subscriber socket should get on average (-1
    until known): a process with k sockets stops once it has counted k times that.  ``done``
    says the publishers have finished, which lets the idle timeout apply.  Each subscriber
    process also publishes its running count in its own slot (no lock needed), which lets a
    publisher stay a bounded number of messages ahead of delivery.  With ``publishers``,
    a (single) subscriber process also counts what it got from each publisher, so that
    each stays ahead of its own deliveries, not of everybody's.
    """

    SLOTS = 16  # subscriber processes at most

    def __init__(self, publishers: int = 0) -> None:
        self._arr = mp.RawArray("d", 2 + self.SLOTS)
        self._from = mp.RawArray("d", max(publishers, 1))
        self.reset()

    def reset(self) -> None:
        self._arr[0] = -1
        self._arr[1] = 0
        for i in range(self.SLOTS):
            self._arr[2 + i] = 0
        for i in range(len(self._from)):
            self._from[i] = 0

    def set_received_from(self, publisher: int, n: int) -> None:
        self._from[publisher] = n

    def received_from(self, publisher: int) -> int:
        return int(self._from[publisher])

    def set_received(self, slot: int, n: int) -> None:
        self._arr[2 + slot] = n

    @property
    def received(self) -> int:
        return int(sum(self._arr[2:]))

    def expect(self, per_socket: float) -> None:
        self._arr[0] = per_socket

    def finish(self, per_socket: float) -> None:
        self._arr[0] = per_socket
        self._arr[1] = 1

    @property
    def expected(self) -> int:
        return self._arr[0]

    @property
    def done(self) -> bool:
        return bool(self._arr[1])


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]
