"""Every connection up to the broker's descriptor limit is held (issue 19).

A real ``twistd`` broker whose soft ``RLIMIT_NOFILE`` is set to 19,000 (and with no
``--max-connections`` limit of its own) takes
idle MQTT connections until it runs out of descriptors.  Each one it accepted must
still answer a PINGREQ, the ones past the limit must be closed rather than left
hanging, a bystander connected before the flood must still get its messages, and
once some connections go a new client must be served again.
"""

from __future__ import annotations

import resource
import select
import socket
import time
from pathlib import Path

import pytest

from mqtt_twisted.codec import Connect, encode
from tests.livebroker import Bystander, LiveBroker, connect

pytestmark = pytest.mark.slow

#: Sources the connections come from (Linux routes all of 127/8 to loopback): more
#: ephemeral ports than one source address has.
_SOURCES = [f"127.0.0.{n}" for n in range(2, 18)]
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_PINGREQ = b"\xc0\x00"
_PINGRESP = b"\xd0\x00"


def _open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _open_idle(port: int, n: int, deadline: float) -> tuple[list[socket.socket], int]:
    """Try ``n`` MQTT connections (32 handshakes in flight); return the ones that got a
    CONNACK and how many were closed by the broker without one."""
    held: list[socket.socket] = []
    refused = 0
    pending: dict[int, tuple[socket.socket, bytearray]] = {}
    poller = select.poll()
    started = 0
    connect_packet = encode(Connect("", 4, True, 0), 4)
    while (started < n or pending) and time.monotonic() < deadline:
        while len(pending) < 32 and started < n:
            s = socket.socket()
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((_SOURCES[started % len(_SOURCES)], 0))
            s.connect_ex(("127.0.0.1", port))
            pending[s.fileno()] = (s, bytearray())
            poller.register(s, select.POLLOUT)
            started += 1
        for fd, events in poller.poll(100):
            s, got = pending[fd]
            try:
                if events & select.POLLOUT:
                    s.send(connect_packet)
                    poller.modify(s, select.POLLIN)
                    continue
                data = s.recv(16)
                if not data:
                    raise OSError("closed")
                got += data
                if len(got) < 4:
                    continue
                assert got[:4] == b"\x20\x02\x00\x00", bytes(got)
                held.append(s)
            except OSError:
                refused += 1
                s.close()
            poller.unregister(fd)
            del pending[fd]
    assert not pending, f"{len(pending)} connections neither accepted nor closed in time"
    return held, refused


def _all_answer_pings(held: list[socket.socket], timeout: float = 120) -> int:
    """PINGREQ on every held connection; how many answered PINGRESP in time."""
    poller = select.poll()
    waiting = {}
    for s in held:
        s.send(_PINGREQ)
        poller.register(s, select.POLLIN)
        waiting[s.fileno()] = s
    answered = 0
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for fd, _ in poller.poll(500):
            s = waiting.pop(fd)
            poller.unregister(fd)
            if s.recv(2) == _PINGRESP:
                answered += 1
    return answered


def test_every_connection_up_to_the_descriptor_limit_is_held(tmp_path: Path) -> None:
    """~19,000 idle connections at the broker's descriptor limit: all held and alive,
    the rest closed, a bystander served throughout and a newcomer once there is room."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 20000:
        pytest.fail(f"this test needs a descriptor limit of 20,000 (ulimit -Hn: {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # ours: the client side
    limit = 19000
    # (The default --max-connections, 10,000 a listener, would refuse first.)
    broker = LiveBroker(tmp_path, "--max-connections", "0")
    held: list[socket.socket] = []
    try:
        resource.prlimit(broker.proc.pid, resource.RLIMIT_NOFILE, (limit, hard))
        bystander = Bystander(broker.port)
        bystander.round_trip()
        room = limit - _open_fds(broker.proc.pid)
        held, refused = _open_idle(broker.port, room + 200, time.monotonic() + 600)
        # Twisted keeps one descriptor in reserve for closing what it cannot serve.
        assert room - 2 <= len(held) <= room, (room, len(held), refused)
        assert refused >= 190, refused
        assert bystander.round_trip(timeout=30) < 30_000
        assert _all_answer_pings(held) == len(held)
        for s in held[:20]:
            s.close()
        del held[:20]
        deadline = time.monotonic() + 30
        while True:  # the broker notices the closes on its next turns
            try:
                connect(broker.port, "newcomer", timeout=5).close()
                break
            except (OSError, AssertionError):
                assert time.monotonic() < deadline, "no room for a newcomer"
                time.sleep(0.2)
        assert broker.alive()
        assert not broker.unhandled(), broker.unhandled()
        bystander.close()
    finally:
        for s in held:
            s.close()
        broker.stop()
