"""What ``--workers N`` buys and costs: N broker processes on one port against one.

Starts a redis-server, then for each round and each configuration our broker, runs one
``bench/loadgen.py`` scenario against it and stops it.  Configurations: one process on
the memory store (``memory``), and ``--workers N`` on the Redis store for each
``--workers`` given (``w1`` is one process on the Redis store, a cluster node that has
no peer; ``w2`` two workers, whose messages between a publisher and a subscriber on
different workers cross through Redis).  Per run it prints the rate and the CPU per
message of all the broker's processes together (the supervisor and its workers,
``/proc/PID/stat``) and of redis-server, and at the end the medians and each
configuration's rate against the memory store's.  Redis runs without its pub/sub
output limit (``--redis-default-limit`` keeps it): with it, the fan-in's QoS 0 flood
across workers loses what Redis drops (docs/cluster.md, "Guarantees").

    python bench/workers.py [--workers 1 --workers 2] [--scenario fan-in --scenario qos1]
                            [--rounds 3] [--quick]

On this project's 2-core machines the load generator needs a core of its own, so two
workers share one core with redis-server: the figure that carries to a machine with
more cores is the CPU per message, what a message costs all the workers together
(docs/benchmarks.md, "Workers").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402  (bench/ is not a package)
import loadgen  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
#: What each scenario's line counts as its messages, and its rate.
COUNTED = {"connections": ("first", "connects_per_s")}


def tree_ticks(pid: int) -> int:
    """CPU ticks (user + system) of ``pid`` and its children (the workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total


def listening_sockets(port: int) -> int:
    """Sockets listening on TCP ``port`` (each worker binds one of its own)."""
    with open("/proc/net/tcp") as f:
        return sum(1 for line in f.readlines()[1:]
                   if int(line.split()[1].split(":")[1], 16) == port
                   and line.split()[3] == "0A")


class Configured(compare.Ours):
    """Our broker with extra options (the store, --workers)."""

    def __init__(self, name: str, extra: tuple[str, ...], workers: int) -> None:
        super().__init__(name, "mqtt-twisted")
        self.extra = ("--max-inflight", "100", *extra)
        self.workers = workers


def start_redis(directory: Path, default_limit: bool) -> tuple[subprocess.Popen[bytes], int]:
    """redis-server on a free port; its pub/sub output limit off unless
    ``default_limit`` (docs/cluster.md, "QoS 0 between nodes is not held back")."""
    port = compare.free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory),
         *([] if default_limit else ["--client-output-buffer-limit", "pubsub 0 0 0"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("redis-server did not start")
        time.sleep(0.05)


def measure(broker: Configured, scenario: str, quick: bool, redis_pid: int,
            logdir: Path) -> dict[str, Any]:
    running = compare.start(broker, logdir)
    try:
        deadline = time.monotonic() + 60
        while listening_sockets(running.port) < broker.workers:
            if time.monotonic() > deadline or not running.alive():
                raise SystemExit(f"{broker.name} did not start: {running.log_tail()}")
            time.sleep(0.1)
        cfg = loadgen.QUICK if quick else loadgen.FULL
        before, redis_before = tree_ticks(running.proc.pid), tree_ticks(redis_pid)
        line = compare.run_loadgen(
            ["--port", str(running.port), "--scenario", scenario, "--broker", broker.name]
            + (["--quick"] if quick else []), cfg.scenario_timeout_s + 30)[0]
        spent = (tree_ticks(running.proc.pid) - before) / TICK
        redis_spent = (tree_ticks(redis_pid) - redis_before) / TICK
    finally:
        compare.stop(running)
    count_key, rate_key = COUNTED.get(scenario, ("delivered", "delivered_per_s"))
    count = line.get(count_key) or 0
    return {"broker": broker.name, "scenario": scenario, "ok": line.get("ok"),
            "rate": line.get(rate_key), "count": count, "lost": line.get("lost"),
            "broker_cpu_us": round(spent / count * 1e6, 2) if count else None,
            "redis_cpu_us": round(redis_spent / count * 1e6, 2) if count else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, action="append")
    parser.add_argument("--scenario", action="append")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--redis-default-limit", action="store_true",
                        help="keep Redis's client-output-buffer-limit pubsub (32 MB): a "
                             "QoS 0 flood across workers then loses messages")
    args = parser.parse_args()
    counts = args.workers or [1, 2]
    scenarios = args.scenario or ["fan-in", "qos1"]
    directory = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    redis, redis_port = start_redis(directory, args.redis_default_limit)
    url = f"redis://127.0.0.1:{redis_port}/0"
    brokers = [Configured("memory", (), 1)] + [
        Configured(f"w{n}", ("--store", url, "--workers", str(n)), n) for n in counts]
    results: list[dict[str, Any]] = []
    try:
        for round_ in range(args.rounds):
            for scenario in scenarios:
                for broker in brokers:
                    result = {**measure(broker, scenario, args.quick, redis.pid, directory),
                              "round": round_}
                    print(json.dumps(result), flush=True)
                    results.append(result)
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(directory, ignore_errors=True)
    print("\nmedians over rounds (rate; broker CPU µs a message, all its processes; "
          "redis-server's):")
    for scenario in scenarios:
        memory = None
        for broker in brokers:
            mine = [r for r in results if r["broker"] == broker.name
                    and r["scenario"] == scenario and r["rate"]]
            if not mine:
                continue
            rate = statistics.median(r["rate"] for r in mine)
            cpu = statistics.median(r["broker_cpu_us"] for r in mine)
            redis_cpu = statistics.median(r["redis_cpu_us"] for r in mine)
            memory = memory or rate
            print(f"  {scenario:12} {broker.name:7} {rate:>12,.0f}/s  {rate / memory:5.2f}x "
                  f"memory  broker {cpu:7.2f} µs  redis {redis_cpu:6.2f} µs  "
                  f"lost {sum(r['lost'] or 0 for r in mine)}")


if __name__ == "__main__":
    main()
