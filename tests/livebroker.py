"""A real ``twistd -n mqttbroker`` process for tests that attack it from outside, and a
bystander client that measures what the attack costs everybody else.

Plain blocking sockets, no reactor: these tests run as plain pytest functions (most
behind the ``slow`` marker), the broker in its own process as in production."""

from __future__ import annotations

import re
import select
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from mqtt_twisted.codec import Connect, Publish, StreamDecoder, Subscribe, Subscription, encode
from tests.redisserver import free_port
from tests.test_twistd_run import _env, twistd_command

#: Log lines that mean the broker met an error it did not handle as a protocol error.
UNHANDLED = re.compile(r"Unhandled|Traceback|Error:|Exception")


def connect(port: int, client_id: str, version: int = 4, timeout: float = 10) -> socket.socket:
    """A connected MQTT client socket (CONNACK read)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(encode(Connect(client_id, version, True, 0), version))
    head = sock.recv(2)
    assert head[:1] == b"\x20", head
    sock.recv(head[1])
    return sock


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveBroker:
    """``twistd -n mqttbroker --listen tcp:PORT ARGS`` in ``directory``; ``stop()`` it.
    ``listen`` adds listeners (``coap=udp:5683:interface=127.0.0.1``), each as one more
    ``--listen``; the MQTT one on ``port`` is always there (the start-up probe uses it)."""

    def __init__(self, directory: Path, *args: str, port: int | None = None,
                 listen: tuple[str, ...] | list[str] = ()) -> None:
        self.port = port or free_port()
        self.log_path = directory / "twistd.log"
        self._log = open(self.log_path, "wb")
        extra = [arg for endpoint in listen for arg in ("--listen", endpoint)]
        self.proc = subprocess.Popen(
            [*twistd_command(), "-n", "--pidfile=", "mqttbroker", "--listen",
             f"tcp:{self.port}:interface=127.0.0.1", *extra, "--sys-interval", "0", *args],
            env=_env(), cwd=directory, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.alive(), f"twistd exited:\n{self.log()}"
            try:
                connect(self.port, "probe", timeout=2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the broker did not start:\n{self.log()}") from None
                time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        """The broker's resident memory."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def unhandled(self) -> list[str]:
        """Log lines of errors the broker did not handle as protocol errors."""
        return [line for line in self.log().splitlines() if UNHANDLED.search(line)]

    def stop(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        self._log.close()


class Bystander:
    """A client publishing to itself through the broker: round trips in milliseconds."""

    def __init__(self, port: int, name: str = "bystander") -> None:
        self.echo = connect(port, f"{name}-echo")
        self.echo.sendall(encode(Subscribe(1, [Subscription(f"{name}/echo", 0)])))
        assert self.echo.recv(5)[:1] == b"\x90"
        self.pinger = connect(port, f"{name}-pinger")
        self.topic = f"{name}/echo"
        self._decoder = StreamDecoder(4)
        self.times: list[float] = []

    def round_trip(self, timeout: float = 10) -> float:
        start = time.perf_counter()
        self.pinger.sendall(encode(Publish(self.topic, b"p", 0)))
        # poll, not select: a test holding 1,000 sockets gives the bystander's socket a
        # descriptor past select()'s 1,024 (ValueError in CI's test_paced_mass).
        poller = select.poll()
        poller.register(self.echo, select.POLLIN)
        while True:
            ready = poller.poll(timeout * 1000)
            assert ready, f"the bystander's message did not come back within {timeout} s"
            data = self.echo.recv(65536)
            # A closed connection polls readable forever: fail, do not spin.
            assert data, "the broker closed the bystander's connection"
            if self._decoder.feed(data):
                elapsed = (time.perf_counter() - start) * 1000
                self.times.append(elapsed)
                return elapsed

    def percentile(self, p: float) -> float:
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]

    def close(self) -> None:
        self.echo.close()
        self.pinger.close()


def bystander_during(bystander: Bystander, finished: Callable[[], bool]) -> None:
    """Round trips every 5 ms until ``finished()`` (an attack running elsewhere)."""
    while not finished():
        bystander.round_trip()
        time.sleep(0.005)


def sys_value(port: int, name: str, timeout: float = 5) -> str:
    """A ``$SYS/broker/NAME`` value, as its retained message says (the broker must
    publish $SYS: ``--sys-interval`` above 0)."""
    sock = connect(port, f"sys-reader-{time.monotonic_ns()}", timeout=timeout)
    try:
        sock.sendall(encode(Subscribe(1, [Subscription(f"$SYS/broker/{name}", 0)])))
        decoder = StreamDecoder(4)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for packet in decoder.feed(sock.recv(65536)):
                if isinstance(packet, Publish):
                    return packet.payload.decode()
        raise AssertionError(f"no $SYS/broker/{name}")
    finally:
        sock.close()


def judge(broker: LiveBroker, bystander: Bystander, rss_before: int, what: str,
          allowance_kib: int = 0) -> None:
    """What every live attack must leave: no error the broker did not handle, a
    bystander p99 under 50 ms, and less than 64 MiB of RSS kept after it (plus
    ``allowance_kib`` for what the attack may keep by right, sessions left behind)."""
    bystander.round_trip()
    rss_after = broker.rss_kib()
    p50, p99 = bystander.percentile(0.5), bystander.percentile(0.99)
    print(f"{what}; bystander p50 {p50:.2f} ms, p99 {p99:.2f} ms, max "
          f"{max(bystander.times):.1f} ms over {len(bystander.times)} round trips; "
          f"RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB")
    assert broker.unhandled() == [], broker.unhandled()[:20]
    assert p99 < 50, (p50, p99)
    assert rss_after - rss_before < 64 * 1024 + allowance_kib, (rss_before, rss_after)
