"""What sockets that never send a byte cost the broker when its connect deadline closes them.

Starts ``twistd -n mqttbroker`` from a checkout (this one, or ``--checkout DIR`` for an
older one, to compare), opens N TCP sockets that stay silent, and measures the broker's
CPU time from just before their deadline until they are all closed, while a bystander
client sends PINGREQ every 50 ms and records its round trips.

    python bench/silent_sockets.py --sockets 2000
    python bench/silent_sockets.py --sockets 2000 --checkout /path/to/older/checkout
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the broker did not listen on {port}")


def bystander(port: int, stop: threading.Event, rtts: list[float]) -> None:
    """Connect, then PINGREQ every 50 ms and time each PINGRESP."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(bytes.fromhex("10 10 00 04 4d 51 54 54 04 02 00 00 00 04 62 79 73 74"))
    sock.recv(4)
    while not stop.is_set():
        start = time.perf_counter()
        sock.sendall(b"\xc0\x00")
        if sock.recv(2) != b"\xd0\x00":
            raise SystemExit("bystander: no PINGRESP")
        rtts.append(time.perf_counter() - start)
        time.sleep(0.05)
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--deadline", type=float, default=3.0, help="connect timeout, s")
    parser.add_argument("--checkout", type=Path, default=ROOT)
    args = parser.parse_args()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(args.checkout))
    with tempfile.TemporaryDirectory() as tmp:
        broker = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
             "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "--logfile", os.path.join(tmp, "broker.log"), "mqttbroker",
             "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--connect-timeout", str(args.deadline), "--sys-interval", "0"],
            cwd=tmp, env=env)
        try:
            wait_listening(port)
            stop = threading.Event()
            rtts: list[float] = []
            watcher = threading.Thread(target=bystander, args=(port, stop, rtts))
            watcher.start()
            opened = time.monotonic()
            silent = [socket.create_connection(("127.0.0.1", port))
                      for _ in range(args.sockets)]
            # Just before the first deadline: measure from here until all are closed.
            time.sleep(max(0.0, args.deadline - (time.monotonic() - opened) - 0.5))
            before = cpu_seconds(broker.pid)
            time.sleep(max(0.0, opened + args.deadline + 1.0 - time.monotonic()))
            for s in silent:  # wait until the broker closed each (recv returns b"")
                s.settimeout(30)
                try:
                    s.recv(1)
                except OSError:
                    pass
            after = cpu_seconds(broker.pid)
            time.sleep(0.5)
            stop.set()
            watcher.join()
            for s in silent:
                s.close()
        finally:
            broker.terminate()
            broker.wait(10)
    rtts_ms = sorted(r * 1000 for r in rtts)
    p99 = rtts_ms[min(len(rtts_ms) - 1, int(len(rtts_ms) * 0.99))]
    print(f"checkout: {args.checkout}")
    print(f"{args.sockets} silent sockets closed at a {args.deadline:g} s deadline: "
          f"broker CPU {after - before:.2f} s")
    print(f"bystander: {len(rtts_ms)} round trips, p50 {statistics.median(rtts_ms):.2f} ms, "
          f"p99 {p99:.2f} ms, max {rtts_ms[-1]:.2f} ms")


if __name__ == "__main__":
    main()
