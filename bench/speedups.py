"""Our broker with the compiled codec against the same broker with the pure one.

The same checkout, the same options; only ``MQTT_TWISTED_PURE=1`` differs in the broker's
environment (docs/speedups.md).  Runs are interleaved (compiled, pure, pure, compiled, ...)
so that the load of a shared machine falls on both alike, and each reports the broker
process's CPU time per message (``/proc/PID/stat`` utime + stime over the scenario), which
load disturbs much less than a rate:

    python bench/speedups.py [--runs 3] [--scenarios fan-in,fan-out] [--quick]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default="fan-in,fan-out")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ours-args", default="--max-inflight 1000")
    args = parser.parse_args()
    from mqtt_twisted.codec import _accel
    if _accel.speedups is None:
        raise SystemExit("the compiled codec is not built: pip install . (with a C compiler)")
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
