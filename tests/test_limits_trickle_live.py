"""Issue 14's trickling sockets, against a real ``twistd`` broker: on a broker that
required a JWT, 19,988 unauthenticated sockets trickling HTTP request heads used every
file descriptor and a valid token holder was refused for 55 s.  Now a listener holds at
most ``--max-connections`` sockets, each head has an absolute 10 s deadline, and the
other listeners are untouched (docs/limits.md)."""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.livebroker import Bystander, LiveBroker, connect, judge
from tests.redisserver import free_port

SOCKETS, LIMIT = 300, 200


@pytest.mark.slow
@pytest.mark.timing
def test_trickling_sockets_fill_one_listener_only(tmp_path: Path) -> None:
    """300 sockets trickle heads at an http= listener of 200 places: 100 are refused at
    once, the 200 others get 408 near the 10 s deadline; meanwhile MQTT clients connect
    on the MQTT listener and the bystander's p99 stays under 50 ms; afterwards the
    http= listener answers again."""
    http_port = free_port()
    broker = LiveBroker(tmp_path, "--max-connections", str(LIMIT),
                        listen=[f"http=tcp:{http_port}:interface=127.0.0.1"])
    socks: list[socket.socket] = []
    try:
        bystander = Bystander(broker.port)
        rss_before = broker.rss_kib()
        for _ in range(SOCKETS):
            sock = socket.create_connection(("127.0.0.1", http_port), timeout=5)
            sock.sendall(b"G")
            socks.append(sock)
        start = time.monotonic()
        answers: dict[int, bytes] = {}

        def trickle() -> None:  # a byte every 2 s to those still open, as the attack did
            head = b"ET /retained?topic=a HTTP/1.1\r\nHost: x\r\n"
            for byte in head:
                if time.monotonic() - start > 16:
                    return
                collect(0)
                for i, sock in enumerate(socks):
                    if i not in answers:
                        try:
                            sock.sendall(bytes([byte]))
                        except OSError:  # closed after its 408: read what is left
                            answers[i] = leftover(sock)
                for _ in range(20):
                    collect(0.1)

        def leftover(sock: socket.socket) -> bytes:
            """The answer already received on a socket the broker has closed (a byte
            written after its 408 draws a reset, but the 408 is still buffered)."""
            try:
                sock.setblocking(False)
                return sock.recv(4096)
            except OSError:
                return b""

        def collect(wait: float) -> None:  # answers (and closes) read before they are lost
            open_ = [sock for i, sock in enumerate(socks) if i not in answers]
            ready, _, _ = select.select(open_, [], [], wait) if open_ else ([], [], [])
            for sock in ready:
                try:
                    answers[socks.index(sock)] = sock.recv(4096)
                except OSError:
                    answers[socks.index(sock)] = b""

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        connected = 0
        while time.monotonic() - start < 14:
            bystander.round_trip()
            if connected < 20:  # the other listener takes clients all along
                connect(broker.port, f"device-{connected}").close()
                connected += 1
            time.sleep(0.005)
        thread.join()
        collect(2)
        for i, sock in enumerate(socks):
            if i not in answers:
                sock.settimeout(2)
                try:
                    answers[i] = sock.recv(4096)
                except OSError:
                    answers[i] = b""
        timed_out = [a for a in answers.values() if a.startswith(b"HTTP/1.1 408")]
        assert len(timed_out) == LIMIT, {a[:12] for a in answers.values()}
        assert sum(a == b"" for a in answers.values()) == SOCKETS - LIMIT
        assert connected == 20
        with socket.create_connection(("127.0.0.1", http_port), timeout=5) as again:
            again.sendall(b"GET /retained?topic=a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert again.recv(4096).startswith(b"HTTP/1.1 200"), "the listener is free again"
        judge(broker, bystander, rss_before, f"{SOCKETS} trickling sockets")
        bystander.close()
    finally:
        for sock in socks:
            sock.close()
        broker.stop()
