"""Our own scenarios in bench/compare.py: the Redis store, the cluster and CoAP.

Why ratios against ourselves: none of the peers (Mosquitto, nats-server, aedes, amqtt)
has a Redis store, a cluster on Redis or a CoAP gateway that compares, so issue 19's
targets for these are ratios against our own broker measured in the same round
(memory store against Redis store, one node against several, MQTT against CoAP).  Each
scenario runs only for ``ours``, reuses bench/bench_store.py and bench/cluster.py (which
start their own broker and redis-server processes on fresh ports) and returns one result
line for report.py's "our own scenarios" table:

* ``redis-qos1``: bench_store's QoS 1 run (a persistent subscriber acknowledging, the
  publisher keeping 100 unacknowledged) on the memory store, then on the Redis store
  (a fresh redis-server, AOF every second), the order alternating from run to run; the
  figure is the pair's ratio (target: Redis at least 0.5 x memory).
* ``redis-connack``: bench_store's CONNACK of a persistent session with 10,000 queued
  QoS 1 messages on the Redis store, 5 reconnects (target: median under 10 ms).
* ``cluster-spread``: bench/cluster.py's spread scenario on 1, 2 and 3 clustered nodes
  (a QoS 1 publisher and a subscriber on each, (n-1)/n of the messages crossing nodes);
  the figure is node CPU per message, and 1 node's over n nodes' is the fraction of
  linear scaling (target: at least 0.8; issue 16).
* ``cluster-cross``: bench/cluster.py's QoS 0 run, publisher and subscriber on one node
  (no ``--cluster``) and then on two nodes of a cluster (the publisher on A, the
  subscriber on B); the figure is the rates' ratio (target: at least 0.8).  The
  publisher keeps at most ``cross_lag`` messages ahead of the subscriber (so that no
  QoS 0 message is dropped for overload): 20,000 (1.4 MB), since session 20.  With
  2,000 the window, not either path, bound the rate: at a fixed number in flight the
  rate is that number over the round trip (Little's law), and the crossing's trip has
  two more hops (a Redis server and another node); its ratio was 0.62-0.80 at 2,000
  and 0.83-0.94 at 10,000-50,000, where the single node's rate had stopped growing
  (``python bench/cluster.py --scenario single|cross --qos 0 --count 2000000 --lag
  N``, docs/benchmarks.md, session 20).
* ``coap-non``: bench/coap_non.py (CoAP NON POSTs beside MQTT QoS 0 through one broker
  into one subscriber, in one run), its printed ratios read off its output (``COAP``,
  below); skipped in a checkout without that script.

The machine may be shared: read the ratios of a run, not its rates.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass(frozen=True)
class Sizes:
    """How much each of our own scenarios does (full run; ``QUICK`` shrinks them)."""

    qos1_messages: int = 20_000
    window: int = 100
    queued: int = 10_000
    connacks: int = 5
    spread_messages: int = 60_000
    spread_nodes: tuple[int, ...] = (1, 2, 3)
    cross_messages: int = 2_000_000
    cross_lag: int = 20_000
    command_timeout_s: float = 300.0


FULL = Sizes()
QUICK = Sizes(qos1_messages=2_000, queued=1_000, connacks=2, spread_messages=3_000,
              cross_messages=5_000, command_timeout_s=120.0)


@dataclass(frozen=True)
class Command:
    """A scenario measured by a script of its own, in the broker's checkout: its printed
    figures become the result line's, each read by a regular expression (its last group,
    commas dropped) from the script's output.  The script absent from the checkout: not
    measurable there, ``why`` says so; none of the figures printed: a failed run."""

    script: str  # relative to the checkout, run with this Python
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()  # appended with --quick (argparse keeps the last value)
    figures: tuple[tuple[str, str], ...] = ()  # (result key, pattern), re.MULTILINE
    why: str = ""


_RATIO = r"coap-non / {}: by broker CPU per message ([\d.]+) \([^)]*\), by delivered rate "
#: The CoAP row: bench/coap_non.py (the coapnon change: CoAP NON POSTs from a C sender and
#: MQTT QoS 0 from one connection, one PUBLISH a send and in 64 KiB sends, interleaved in
#: rounds through one broker into one MQTT subscriber), read from its summary lines.
COAP = Command(
    script="bench/coap_non.py",
    args=("--rounds", "3", "--seconds", "3", "--scenarios", "coap-non,mqtt-each,mqtt-batch",
          "--paced"),  # --paced with no fractions: no paced runs
    quick_args=("--rounds", "1", "--seconds", "1", "--warmup", "0.3"),
    figures=(("coap_each_cpu_ratio", _RATIO.format("mqtt-each")),
             ("coap_each_rate_ratio", _RATIO.format("mqtt-each") + r"([\d.]+)"),
             ("coap_batch_cpu_ratio", _RATIO.format("mqtt-batch")),
             ("coap_batch_rate_ratio", _RATIO.format("mqtt-batch") + r"([\d.]+)"),
             ("coap_non_per_s", r"^coap-non +([\d,]+) \("),
             ("coap_broker_us", r"^coap-non +[\d,]+ \([^)]*\) +([\d.]+) \(")),
    why="bench/coap_non.py is not in this checkout yet (the coapnon change adds it)")

SCENARIOS = ["redis-qos1", "redis-connack", "cluster-spread", "cluster-cross", "coap-non"]


def run(scenario: str, quick: bool, run_index: int = 0, source: Path | None = None) -> dict:
    """One of our own scenarios: a result line like loadgen's (``broker``, ``scenario``,
    ``ok``, the figures; ``error`` when it failed).  ``source``: the broker's checkout
    (compare.py's ``--ours-rev`` snapshot), else this one."""
    sizes = QUICK if quick else FULL
    line: dict[str, Any] = {"broker": "ours", "scenario": scenario, "quick": quick}
    t0 = time.monotonic()
    try:
        line.update(MEASURES[scenario](sizes, run_index, source or ROOT))
        line.setdefault("ok", True)
    except (RuntimeError, OSError, SystemExit, subprocess.SubprocessError) as e:
        line.update(ok=False, error=f"{type(e).__name__}: {e}"[-600:])
    line["elapsed_s"] = round(time.monotonic() - t0, 2)
    return line


def unavailable(scenario: str, source: Path | None = None) -> str | None:
    """Why a scenario cannot be measured in ``source`` at all (None: it can)."""
    if scenario == "coap-non" and not ((source or ROOT) / COAP.script).exists():
        return COAP.why
    return None


def bench_store_for(source: Path) -> Any:
    """bench/bench_store.py, its brokers run from ``source``."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import bench_store
    bench_store.BROKER_ROOT = str(source)
    return bench_store


def cluster_for(source: Path) -> Any:
    """bench/cluster.py, its nodes run from ``source``."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import cluster
    cluster.ROOT = source  # the nodes' PYTHONPATH
    return cluster


def redis_qos1(sizes: Sizes, run_index: int, source: Path) -> dict:
    """QoS 1 on the memory store and on the Redis store, one after the other."""
    store = bench_store_for(source)
    order = ("memory", "redis") if run_index % 2 == 0 else ("redis", "memory")
    got = {name: store.bench_qos1(name, sizes.qos1_messages, sizes.window) for name in order}
    (memory, memory_us, _), (redis, redis_us, server_us) = got["memory"], got["redis"]
    return {"messages": sizes.qos1_messages, "order": list(order),
            "memory_per_s": round(memory), "redis_per_s": round(redis),
            "redis_ratio": round(redis / memory, 3),
            # The same by CPU per message (broker and redis-server's against the broker's
            # alone): steadier than the rates where other jobs share the machine.
            "redis_cpu_ratio": round(memory_us / (redis_us + server_us), 3)
            if redis_us + server_us > 0 else None,
            "memory_broker_us": round(memory_us, 1), "redis_broker_us": round(redis_us, 1),
            "redis_server_us": round(server_us, 1)}


def redis_connack(sizes: Sizes, run_index: int, source: Path) -> dict:
    """CONNACK of a Redis-stored session with ``queued`` messages, several reconnects."""
    store = bench_store_for(source)
    times = [t * 1000 for t in store.bench_connacks("redis", sizes.queued, sizes.window,
                                                    sizes.connacks)]
    return {"queued": sizes.queued, "reconnects": len(times),
            "connack_ms": round(times[len(times) // 2], 2), "connack_min_ms": round(times[0], 2),
            "connack_max_ms": round(times[-1], 2)}


def cluster_spread(sizes: Sizes, run_index: int, source: Path) -> dict:
    """Spread on 1, 2, 3 nodes (the order reversed every other run): node CPU µs per
    message at each size, and the fraction of linear scaling against one node."""
    cluster = cluster_for(source)
    nodes = sizes.spread_nodes if run_index % 2 == 0 else sizes.spread_nodes[::-1]
    line: dict[str, Any] = {"messages": sizes.spread_messages, "lost": 0}
    for n in nodes:
        c = cluster.Cluster(n, True)
        try:
            before = c.cpu()
            rate, count, delivered = cluster.spread(c, sizes.spread_messages, sizes.window)
            spent = [a - b for a, b in zip(c.cpu(), before)]
        finally:
            c.stop()
        line[f"per_s_{n}"] = round(rate)
        line[f"cpu_us_{n}"] = round(sum(spent[:-1]) / count * 1e6, 1)
        line[f"redis_us_{n}"] = round(spent[-1] / count * 1e6, 1)
        line["lost"] += count - delivered
    one = line.get("cpu_us_1")
    for n in nodes:
        if one and n > 1 and line[f"cpu_us_{n}"]:
            line[f"linear_{n}"] = round(one / line[f"cpu_us_{n}"], 3)
    line["ok"] = line["lost"] == 0
    return line


def cluster_cross(sizes: Sizes, run_index: int, source: Path) -> dict:
    """QoS 0 publisher to subscriber on one node, then across two nodes of a cluster."""
    cluster = cluster_for(source)
    kinds = ("single", "cross") if run_index % 2 == 0 else ("cross", "single")
    line: dict[str, Any] = {"messages": sizes.cross_messages}
    for kind in kinds:
        c = cluster.Cluster(2 if kind == "cross" else 1, kind == "cross")
        try:
            before = c.cpu()
            rate = cluster.run(c.ports[0], c.ports[-1], 0, sizes.cross_messages,
                               sizes.cross_lag, sizes.window, f"cmp{kind}{run_index}")
            spent = [a - b for a, b in zip(c.cpu(), before)]
        finally:
            c.stop()
        line[f"{kind}_per_s"] = round(rate)
        line[f"{kind}_cpu_us"] = round(sum(spent[:-1]) / sizes.cross_messages * 1e6, 2)
    line["cross_ratio"] = round(line["cross_per_s"] / line["single_per_s"], 3)
    if line["cross_cpu_us"] > 0:  # by node CPU per message, as spread's fraction of linear
        line["cross_cpu_ratio"] = round(line["single_cpu_us"] / line["cross_cpu_us"], 3)
    return line


def command(spec: Command, quick: bool, timeout: float, source: Path = ROOT) -> dict:
    """Run a scenario's own script in the broker's checkout and read its figures (see
    ``Command``)."""
    if not (source / spec.script).exists():
        return {"skipped": spec.why}
    argv = [sys.executable, spec.script, *spec.args, *(spec.quick_args if quick else ())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(source), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=source, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:  # its brokers too (its process group), whether it finished or not
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.communicate()
    figures: dict[str, Any] = {}
    for key, pattern in spec.figures:
        found = re.search(pattern, out, re.MULTILINE)
        if found:
            figures[key] = float(found.group(found.lastindex or 1).replace(",", ""))
    if not figures:
        raise RuntimeError(f"{' '.join(argv[1:])} (exit {proc.returncode}) printed none of "
                           f"{', '.join(k for k, _ in spec.figures)}: {(err or out)[-400:]}")
    return {**figures, "ok": proc.returncode == 0}


def coap_non(sizes: Sizes, run_index: int, source: Path) -> dict:
    return command(COAP, sizes is QUICK, sizes.command_timeout_s, source)


MEASURES = {"redis-qos1": redis_qos1, "redis-connack": redis_connack,
            "cluster-spread": cluster_spread, "cluster-cross": cluster_cross,
            "coap-non": coap_non}


if __name__ == "__main__":  # one scenario, one line: python bench/ourscen.py redis-qos1 [--quick]
    print(json.dumps(run(sys.argv[1], "--quick" in sys.argv)))
    sys.exit(0)
