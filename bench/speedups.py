"""Our broker with the compiled codec against the same broker with the pure one.

The same checkout, the same options; only ``MQTT_TWISTED_PURE=1`` differs in the broker's
environment (docs/speedups.md).  Runs are interleaved (compiled, pure, pure, compiled, ...)
so that the load of a shared machine falls on both alike, and each reports the broker
process's CPU time per message (``/proc/PID/stat`` utime + stime over the scenario), which
load disturbs much less than a rate:

    python bench/speedups.py [--runs 3] [--scenarios fan-in,fan-out] [--quick]
    python bench/speedups.py --in-process [--runs 7]

``--in-process`` drives the sans-IO broker instead (``mqtt_twisted.testing``: no sockets,
no reactor), switching the codec with ``_accel.use`` and the QoS 0 PUBLISH handler
(``core/fastpath.py``) between rounds: fan-in is 10
publishers sending 50 QoS 0 PUBLISHes (64-byte payloads) a read to one ``bench/+``
subscriber, fan-out one publisher sending 10 a read to 20 subscribers of one topic.

Prints one line per run and the medians; needs the extension built (``pip install .``
with a C compiler, or ``python setup.py build_ext --inplace``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402  (bench/ is not a package)
import loadgen  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def one_run(impl: str, scenario: str, quick: bool, logdir: Path) -> dict:
    """Start the broker with ``impl`` codec, run ``scenario``, return rate and CPU/message."""
    ours = compare.BROKER_TYPES["ours"]
    flag = "1" if impl == "pure" else "0"
    ours.env = lambda: {**os.environ, "MQTT_TWISTED_PURE": flag}  # type: ignore[method-assign]
    running = compare.start(ours, logdir)
    try:
        pid = running.proc.pid
        before = cpu_seconds(pid)
        args = ["--port", str(running.port), "--scenario", scenario, "--broker", f"ours-{impl}",
                "--broker-pid", str(pid)] + (["--quick"] if quick else [])
        [line] = compare.run_loadgen(args, timeout=300)
        cpu = cpu_seconds(pid) - before
    finally:
        compare.stop(running)
    delivered = line.get("delivered") or 0
    return {"impl": impl, "scenario": scenario, "rate": line.get("delivered_per_s", 0),
            "delivered": delivered, "lost_pct": round(100 - line.get("delivered_pct", 0), 3),
            "cpu_us": 1e6 * cpu / delivered if delivered else float("nan")}


def _use_qos0(compiled: bool) -> None:
    """The QoS 0 PUBLISH handler of the same kind (core/fastpath.py), where it exists."""
    try:
        from mqtt_twisted.core import connection, fastpath
    except ImportError:  # a checkout from before core/qos0.py
        return
    connection._HANDLERS[3] = fastpath.handler(compiled)


def in_process(runs: int) -> None:
    """CPU µs per delivered message of the sans-IO broker, compiled and pure alternately."""
    import time

    from mqtt_twisted.codec import Publish, _accel, encode
    from mqtt_twisted.testing import FakeClient, make_broker

    def fan_in():
        broker, _ = make_broker()
        sub = FakeClient(broker, 4)
        sub.connect("sub")
        sub.subscribe("bench/+", qos=0)
        pubs = [FakeClient(broker, 4) for _ in range(10)]
        for i, pub in enumerate(pubs):
            pub.connect(f"pub{i}")
        chunk = b"".join(encode(Publish(f"bench/{i}", bytes(64)), 4) for i in range(50))

        def run(reads):
            for k in range(reads):
                pubs[k % 10].connection.dataReceived(chunk)
                if k % 20 == 0:
                    sub.transport.written.clear()
            return reads * 50
        return run

    def fan_out():
        broker, _ = make_broker()
        subs = [FakeClient(broker, 4) for _ in range(20)]
        for i, sub in enumerate(subs):
            sub.connect(f"sub{i}")
            sub.subscribe("bench/t", qos=0)
        pub = FakeClient(broker, 4)
        pub.connect("pub")
        chunk = b"".join(encode(Publish("bench/t", bytes(64)), 4) for _ in range(10))

        def run(reads):
            for _ in range(reads):
                pub.connection.dataReceived(chunk)
                for sub in subs:
                    sub.transport.written.clear()
            return reads * 10 * 20
        return run

    print(f"{'scenario':<9} {'compiled µs':>12} {'pure µs':>9} {'ratio':>6}  (CPU per delivered "
          f"message, median of {runs})")
    for name, make in (("fan-in", fan_in), ("fan-out", fan_out)):
        times: dict[bool, list[float]] = {True: [], False: []}
        run = make()
        for r in range(runs):
            for compiled in ((True, False) if r % 2 == 0 else (False, True)):
                _accel.use(compiled)
                _use_qos0(compiled)
                run(50)  # warm
                t = time.process_time()
                n = run(1000)
                times[compiled].append((time.process_time() - t) / n * 1e6)
        c, p = statistics.median(times[True]), statistics.median(times[False])
        print(f"{name:<9} {c:>12.2f} {p:>9.2f} {c / p:>6.2f}")
    _accel.use_default()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default="fan-in,fan-out")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ours-args", default="--max-inflight 1000")
    parser.add_argument("--in-process", action="store_true",
                        help="the sans-IO broker in this process, no sockets")
    args = parser.parse_args()
    from mqtt_twisted.codec import _accel
    if _accel.speedups is None:
        raise SystemExit("the compiled codec is not built: pip install . (with a C compiler)")
    if args.in_process:
        in_process(args.runs)
        return
    loadgen.raise_fd_limit()
    compare.BROKER_TYPES["ours"].extra = tuple(args.ours_args.split())
    logdir = Path(tempfile.mkdtemp(prefix="bench-speedups-"))
    results: list[dict] = []
    print(f"{'scenario':<9} {'codec':<9} {'delivered/s':>12} {'CPU µs/msg':>11} {'lost %':>7}")
    try:
        for run in range(args.runs):
            for scenario in args.scenarios.split(","):
                order = ("compiled", "pure") if run % 2 == 0 else ("pure", "compiled")
                for impl in order:
                    r = one_run(impl, scenario, args.quick, logdir)
                    results.append(r)
                    print(f"{scenario:<9} {impl:<9} {r['rate']:>12,} {r['cpu_us']:>11.2f} "
                          f"{r['lost_pct']:>7}", flush=True)
    finally:
        compare.stop_all()
    print("\nmedians (CPU µs per delivered message; fan-out counts every copy)")
    for scenario in args.scenarios.split(","):
        med = {impl: (statistics.median(r["rate"] for r in results
                                        if r["impl"] == impl and r["scenario"] == scenario),
                      statistics.median(r["cpu_us"] for r in results
                                        if r["impl"] == impl and r["scenario"] == scenario))
               for impl in ("compiled", "pure")}
        (cr, cc), (pr, pc) = med["compiled"], med["pure"]
        print(f"{scenario:<9} compiled {cr:>10,.0f}/s {cc:6.2f} µs   pure {pr:>10,.0f}/s "
              f"{pc:6.2f} µs   rate x{cr / pr if pr else float('nan'):.2f}, "
              f"CPU x{cc / pc if pc else float('nan'):.2f}")


if __name__ == "__main__":
    main()
