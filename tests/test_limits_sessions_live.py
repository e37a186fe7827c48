"""Sessions left behind, against a real ``twistd`` broker: what each costs, and
``--max-sessions`` refusing more over real sockets (issue 14; docs/limits.md)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from mqtt_twisted.codec import Connect, Subscribe, Subscription, encode
from tests.livebroker import LiveBroker, sys_value


def leave_session(port: int, client_id: str, version: int) -> int:
    """Connect with a persistent session, subscribe once, go away; the CONNACK code."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        props = {0x11: 0xFFFFFFFF} if version == 5 else {}
        sock.sendall(encode(Connect(client_id, version, False, 30, None, None, None, props),
                            version))
        head = sock.recv(2)
        body = sock.recv(head[1])
        code = body[1]
        if code == 0:
            sock.sendall(encode(Subscribe(1, [Subscription(f"devices/{client_id}/cmd", 1)]),
                                version))
            sock.recv(16)
        return code


def run(tmp_path: Path, sessions: int, limit: int) -> tuple[list[int], float]:
    broker = LiveBroker(tmp_path, "--max-sessions", str(limit), "--sys-interval", "1")
    try:
        time.sleep(1)
        before = broker.rss_kib()
        codes = [leave_session(broker.port, f"left-behind-{i:06d}", 4 + (i % 2))
                 for i in range(sessions)]
        time.sleep(1.5)
        kib = (broker.rss_kib() - before) / max(1, codes.count(0))
        assert int(sys_value(broker.port, "clients/disconnected")) == codes.count(0)
        assert int(sys_value(broker.port, "limits/sessions")) == sessions - codes.count(0)
        assert broker.unhandled() == []
        return codes, kib
    finally:
        broker.stop()


def test_max_sessions_refuses_new_persistent_sessions(tmp_path: Path) -> None:
    """With --max-sessions 300, 300 sessions are left behind; the next v3.1.1 and v5
    clients asking for persistent sessions get CONNACK 0x03 and 0x97, counted in
    $SYS/broker/limits/sessions."""
    codes, _ = run(tmp_path, 320, 300)
    assert codes[:300] == [0] * 300
    assert codes[300:] == [3, 0x97] * 10


@pytest.mark.slow
def test_left_behind_session_costs_under_4_kib(tmp_path: Path) -> None:
    """20,000 sessions left behind (half v3.1.1, half v5 asking for 'never'), each with
    a subscription: under 4 KiB of RSS each (measured 2.6 KiB), so the default
    --max-sessions 100,000 bounds them to ~400 MiB."""
    codes, kib = run(tmp_path, 20_000, 100_000)
    print(f"{kib:.2f} KiB of RSS per session left behind")
    assert codes == [0] * 20_000
    assert kib < 4, kib
