"""What a QoS 1 message costs our broker: in process, and in a real broker under loadgen.

In process (the default): the sans-IO broker (``mqtt_twisted.testing``), one publisher
and one QoS 1 subscriber with ``--max-inflight 100`` as ``bench/compare.py`` runs
ours; the publisher sends ``--ahead`` PUBLISHes first (the window full, so that, as in
loadgen's qos1, messages queue behind it), then each round one read of ``--read``
PUBLISHes and one read of as many PUBACKs from the subscriber.  Prints the CPU
microseconds per message (min and median of ``--reps`` runs, ``time.process_time``)
and, exactly, the Python calls per message, which do not depend on the machine's load:

    python bench/qos1_cost.py [--read 50] [--ahead 100] [--rounds 400] [--reps 7]
    python bench/qos1_cost.py --root /path/to/another/checkout   # its code, in process

``--broker``: ``twistd -n mqttbroker`` from each ``--root`` checkout in turn (its
compiled modules built there), ``bench/loadgen.py --scenario qos1`` against it, and
the broker's CPU per delivered message from ``/proc/PID/stat`` (utime and stime over
the scenario); the checkouts alternate, ``--rounds`` times, so that a shared
machine's load falls on each alike:

    python bench/qos1_cost.py --broker --root /path/to/main --root . --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TICK = os.sysconf("SC_CLK_TCK")
#: The options bench/compare.py gives our broker (its QoS 1 window included).
BROKER_OPTIONS = ["--sys-interval", "0", "--max-queued", "100000", "--max-queued-bytes", "0",
                  "--max-connections", "0", "--max-inflight", "100"]


def in_process(root: Path, read: int, ahead: int, rounds: int, reps: int) -> None:
    sys.path.insert(0, str(root))
    from mqtt_twisted.codec import PubAck, Publish, _accel, encode
    from mqtt_twisted.core.settings import BrokerSettings
    from mqtt_twisted.testing import FakeClient, make_broker

    payload = b"x" * 64

    def publishes(first: int, last: int) -> bytes:
        return b"".join(encode(Publish("bench/qos1", payload, 1, False, False,
                                       i % 65535 + 1), 4) for i in range(first, last))

    start = publishes(0, ahead)
    reads = [(publishes(ahead + r * read, ahead + (r + 1) * read),
              b"".join(encode(PubAck(i % 65535 + 1), 4)
                       for i in range(r * read, (r + 1) * read))) for r in range(rounds)]
    calls = [0]

    def count(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call":
            calls[0] += 1

    def once(profile: bool) -> float:
        broker, _ = make_broker(BrokerSettings(max_inflight=100, max_queued=100000))
        sub = FakeClient(broker, 4)
        sub.connect("sub")
        sub.subscribe("bench/qos1", qos=1)
        pub = FakeClient(broker, 4)
        pub.connect("pub")
        written = (sub.transport.written, pub.transport.written)
        to_sub, to_pub = sub.connection.dataReceived, pub.connection.dataReceived
        to_pub(start)
        began = time.process_time()
        if profile:
            sys.setprofile(count)
        for publish, ack in reads:
            to_pub(publish)
            to_sub(ack)
            for buffer in written:
                buffer.clear()
        sys.setprofile(None)
        spent = time.process_time() - began
        session = broker.sessions["sub"]
        assert len(session.inflight) + len(session.queue) == ahead, "messages lost"
        return spent * 1e6 / (rounds * read)

    once(True)
    times = [once(False) for _ in range(reps)]
    codec = "compiled" if _accel.compiled_in_use() else "pure Python"
    print(f"{root} ({codec} codec): QoS 1, reads of {read}, {ahead} ahead: "
          f"{calls[0] / (rounds * read):.2f} Python calls per message; CPU µs per message "
          f"min {min(times):.2f} median {statistics.median(times):.2f} ({reps} runs)")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def one_broker_run(root: Path, port: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root))
    broker = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "mqttbroker", "--listen", f"tcp:{port}:interface=127.0.0.1",
         *BROKER_OPTIONS], env=env, cwd="/tmp", stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT)
    try:
        time.sleep(2.5)
        before = cpu_seconds(broker.pid)
        out = subprocess.run(
            [sys.executable, str(BENCH / "loadgen.py"), "--port", str(port), "--scenario",
             "qos1", "--broker", "ours", "--broker-pid", str(broker.pid)],
            capture_output=True, text=True, timeout=120, check=True).stdout
        cpu = cpu_seconds(broker.pid) - before
    finally:
        broker.terminate()
        broker.wait(10)
    line = json.loads(out.strip().splitlines()[-1])
    delivered = line.get("delivered") or 0
    return {"rate": line.get("delivered_per_s"), "lost": line.get("lost"),
            "us": cpu * 1e6 / delivered if delivered else float("nan")}


def brokers(roots: list[Path], rounds: int) -> None:
    results: dict[Path, list[dict]] = {root: [] for root in roots}
    port = 18900
    for i in range(rounds):
        for root in roots if i % 2 == 0 else roots[::-1]:
            port += 1
            load = os.getloadavg()[0]
            r = one_broker_run(root, port)
            results[root].append(r)
            print(f"round {i + 1} load {load:4.1f} {root}: {r['rate']} msg/s, broker CPU "
                  f"{r['us']:.2f} µs per message, lost {r['lost']}", flush=True)
    for root, rs in results.items():
        us = [r["us"] for r in rs]
        print(f"{root}: broker CPU µs per QoS 1 message median {statistics.median(us):.2f} "
              f"({min(us):.2f}-{max(us):.2f}); rate median "
              f"{statistics.median(r['rate'] for r in rs):.0f} msg/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--read", type=int, default=50)
    parser.add_argument("--ahead", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=0,
                        help="in process: reads (default 400); --broker: rounds (default 3)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--broker", action="store_true")
    parser.add_argument("--root", type=Path, action="append")
    args = parser.parse_args()
    if args.broker:
        brokers([r.resolve() for r in args.root or [ROOT]], args.rounds or 3)
    else:
        in_process((args.root or [ROOT])[0].resolve(), args.read, args.ahead,
                   args.rounds or 400, args.reps)


if __name__ == "__main__":
    main()
