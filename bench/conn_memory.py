"""What an idle MQTT connection costs the broker: memory held, and CPU to set it up.

Two figures that, unlike throughput, do not depend on how busy the machine is:

* **RSS per idle connection**: the broker's VmRSS before and after N clients have
  connected (MQTT 3.1.1, clean session, keep alive 0 or ``--keepalive``) and sit idle,
  divided by N.
* **CPU per connection cycle**: the broker's own CPU time (``/proc/PID/schedstat``,
  nanoseconds on CPU, so other processes' load does not count) over M cycles of TCP
  connect, CONNECT, CONNACK, DISCONNECT and close, divided by M; and the same split
  into user and kernel time (``/proc/PID/stat``, in 10 ms ticks).

It also gives the rate at which the N idle connections were opened (32 handshakes in
flight, as ``loadgen``'s connections scenario) and the cycles' rate: both depend on the
load, and the client's share of the machine bounds them.

Our broker runs as ``twistd -n mqttbroker`` from this checkout (or ``--checkout DIR``, to
compare with an older tree); ``--brokers`` adds Mosquitto and nats-server (their MQTT
listeners, started as ``bench/compare.py`` starts them) in the same run.  ``--trace``
also runs ours under ``tracemalloc`` and prints where the idle connections' memory was
allocated (by source line) and which object types grew (``gc``): tracing slows the broker
and adds its own bookkeeping to the RSS, so the RSS figure of a traced run is not reported.

    python bench/conn_memory.py [--connections 5000] [--cycles 3000] [--brokers ours,mosquitto]
    python bench/conn_memory.py --trace --connections 2000 --brokers ours
    python bench/conn_memory.py --checkout /path/to/older/checkout --brokers ours
    python bench/conn_memory.py --cold --cycles 0   # counted as bench/compare.py counts
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import struct
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402  (bench/ is not a package)
import loadgen  # noqa: E402

from mqtt_twisted.loadgen import wire as w  # noqa: E402

#: Started instead of twistd when tracing: tracemalloc from the first import, and on
#: SIGUSR2 a snapshot plus the gc type counts written next to the given path.
_TRACED = r"""
import collections, gc, json, signal, sys, tracemalloc
out = sys.argv.pop(1)
tracemalloc.start(1)
dumps = [0]
def dump(*_):
    gc.collect()
    n = dumps[0]; dumps[0] += 1
    tracemalloc.take_snapshot().dump(f"{out}.{n}.snap")
    counts = collections.Counter()
    sizes = collections.Counter()
    for o in gc.get_objects():
        t = type(o)
        name = f"{getattr(t, '__module__', '?')}.{getattr(t, '__qualname__', t.__name__)}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(o)
    with open(f"{out}.{n}.types", "w") as f:
        json.dump({"counts": counts, "sizes": sizes}, f)
signal.signal(signal.SIGUSR2, dump)
sys.argv[0] = "twistd"
from twisted.scripts.twistd import run
run()
"""


class OursAt(compare.Ours):
    """Our broker from a given checkout, optionally under tracemalloc."""

    checkout: Path = ROOT
    trace_to: str | None = None

    def cwd(self) -> Path:
        return self.checkout

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.checkout)}

    def command(self, port: int, workdir: Path) -> list[str]:
        args = compare.Ours.command(self, port, workdir)[1:]  # after the twistd path
        if self.trace_to:
            return [sys.executable, "-c", _TRACED, self.trace_to, *args]
        return [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
                "from twisted.scripts.twistd import run; run()", *args]


def rss_kib(pid: int) -> int:
    return loadgen.broker_rss_kib(pid) or 0


def cpu_ns(pid: int) -> int:
    """Nanoseconds the process (all its threads) has spent on a CPU."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def user_sys_us(pid: int) -> tuple[float, float]:
    """Microseconds the process has spent in user mode and in the kernel
    (``/proc/PID/stat`` utime and stime, in clock ticks: 10 ms each, so give it
    thousands of cycles)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * tick, int(fields[12]) * tick


def hold(port: int, n: int, tag: str, keepalive: int = 0) -> list[socket.socket]:
    """Open ``n`` idle MQTT connections (CONNACK received on each)."""
    held: list[socket.socket] = []
    ok, failed, why = loadgen.open_many(port, n, held, time.monotonic() + 120, tag,
                                        keepalive=keepalive)
    if ok != n:
        raise SystemExit(f"only {ok} of {n} connections opened ({failed} failed; {why})")
    return held


def close_all(held: list[socket.socket]) -> None:
    linger = struct.pack("ii", 1, 0)  # a reset: no TIME_WAIT leftovers
    for s in held:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.close()
    held.clear()


def cycles(port: int, n: int, tag: str, window: int = 16) -> None:
    """``n`` times: connect, CONNECT, wait for CONNACK, DISCONNECT, wait for the broker
    to close; up to ``window`` at once."""
    sel = selectors.DefaultSelector()
    started = done = 0
    live: dict[socket.socket, int] = {}  # 0: connecting, 1: awaiting CONNACK, 2: awaiting EOF
    while done < n:
        while len(live) < window and started < n:
            s = socket.socket()
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_IP, loadgen.IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((loadgen.SOURCES[started % len(loadgen.SOURCES)], 0))
            s.connect_ex((loadgen.HOST, port))
            live[s] = 0
            sel.register(s, selectors.EVENT_WRITE)
            started += 1
        for key, _ in sel.select(5):
            s = key.fileobj
            phase = live[s]
            if phase == 0:
                s.send(w.connect(loadgen.client_id(tag)))
                sel.modify(s, selectors.EVENT_READ)
                live[s] = 1
                continue
            data = s.recv(64)
            if phase == 1 and data[:1] == b"\x20":
                s.send(w.DISCONNECT)
                live[s] = 2
                if len(data) <= 4:
                    continue
                data = data[4:]
            if data:
                raise SystemExit(f"unexpected bytes: {data!r}")
            sel.unregister(s)
            s.close()
            del live[s]
            done += 1
    sel.close()


def measure(broker: compare.Broker, args: argparse.Namespace, logdir: Path) -> dict:
    running = compare.start(broker, logdir)
    pid, port = running.proc.pid, running.port
    try:
        if not args.cold:  # warm up: lazy imports, allocator pools, first-time paths
            cycles(port, 300, "w")
            close_all(hold(port, 300, "w"))
            time.sleep(0.5)
        result: dict = {"broker": broker.name}
        traced = isinstance(broker, OursAt) and broker.trace_to
        if traced:
            os.kill(pid, signal.SIGUSR2)
            time.sleep(2)
        rss0 = rss_kib(pid)
        t0 = time.monotonic()
        held = hold(port, args.connections, "i", args.keepalive)
        opened_s = time.monotonic() - t0
        time.sleep(1.0)
        rss1 = rss_kib(pid)
        alive = loadgen.count_alive(held)
        if traced:
            os.kill(pid, signal.SIGUSR2)
            time.sleep(2 + args.connections / 2000)
        else:
            result.update(rss_base_kib=rss0, held=alive,
                          kib_per_conn=round((rss1 - rss0) / args.connections, 2),
                          connects_per_s=round(args.connections / opened_s))
        close_all(held)
        time.sleep(1.0)
        if args.cycles:
            c0, t0, us0 = cpu_ns(pid), time.monotonic(), user_sys_us(pid)
            cycles(port, args.cycles, "c")
            c1, t1, us1 = cpu_ns(pid), time.monotonic(), user_sys_us(pid)
            result.update(cycle_cpu_us=round((c1 - c0) / 1000 / args.cycles, 1),
                          cycle_user_us=round((us1[0] - us0[0]) / args.cycles, 1),
                          cycle_sys_us=round((us1[1] - us0[1]) / args.cycles, 1),
                          cycles_per_s=round(args.cycles / (t1 - t0)))
        return result
    finally:
        compare.stop(running)


def trace_report(prefix: str, n: int, top: int) -> None:
    """Where the memory of ``n`` connections went: per source line and per type."""
    before = tracemalloc.Snapshot.load(f"{prefix}.0.snap")
    after = tracemalloc.Snapshot.load(f"{prefix}.1.snap")
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
              tracemalloc.Filter(False, "*/linecache.py")]
    stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"\ntracemalloc: {total / n:.0f} bytes per connection in Python objects; by line:")
    for s in stats[:top]:
        frame = s.traceback[0]
        where = f"{frame.filename.split('site-packages/')[-1].split(str(ROOT) + '/')[-1]}"
        print(f"  {s.size_diff / n:7.1f} B  {s.count_diff / n:5.2f} blocks  "
              f"{where}:{frame.lineno}")
    t0 = json.loads(Path(f"{prefix}.0.types").read_text())
    t1 = json.loads(Path(f"{prefix}.1.types").read_text())
    grown = sorted(((t1["sizes"][k] - t0["sizes"].get(k, 0), t1["counts"][k]
                     - t0["counts"].get(k, 0), k) for k in t1["counts"]), reverse=True)
    print("gc-tracked objects per connection (count, shallow bytes):")
    for size, count, name in grown[:top]:
        if count <= 0:
            break
        print(f"  {count / n:5.2f}  {size / n:7.1f} B  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--cycles", type=int, default=3000)
    parser.add_argument("--brokers", default="ours,mosquitto",
                        help="comma-separated: ours, mosquitto, nats")
    parser.add_argument("--checkout", type=Path, default=ROOT,
                        help="run our broker from this tree (default: this one)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keepalive", type=int, default=0,
                        help="the idle clients' keep alive in seconds (paho's default: 60)")
    parser.add_argument("--cold", action="store_true",
                        help="no warm-up, as bench/compare.py's connections scenario: the "
                             "idle connections are the broker's first (a warm-up's closes "
                             "leave the per-connection sets elsewhere in their resizes)")
    parser.add_argument("--trace", action="store_true",
                        help="run ours under tracemalloc and show where the memory went")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    loadgen.raise_fd_limit()
    names = [b.strip() for b in args.brokers.split(",") if b.strip()]
    compare.install([n for n in names if n != "ours"])
    ours = OursAt("ours", "mqtt-twisted")
    ours.checkout = args.checkout.resolve()
    brokers = {"ours": ours, **{n: compare.BROKER_TYPES[n] for n in names if n != "ours"}}
    logdir = Path(tempfile.mkdtemp(prefix="conn-memory-"))
    print(f"checkout: {ours.checkout}; {args.connections} idle connections, "
          f"{args.cycles} connect cycles, keep alive {args.keepalive}; "
          f"load {os.getloadavg()[0]:.1f}")
    for run in range(args.runs):
        for name in names:
            broker = brokers[name]
            if args.trace and name == "ours":
                ours.trace_to = str(logdir / "trace")
            print(json.dumps({"run": run, **measure(broker, args, logdir)}), flush=True)
            if args.trace and name == "ours":
                trace_report(ours.trace_to, args.connections, args.top)
                ours.trace_to = None


if __name__ == "__main__":
    try:
        main()
    finally:
        compare.stop_all()
