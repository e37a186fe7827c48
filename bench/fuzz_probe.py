"""The live fuzz (``tests/test_live_fuzz.py``) against a broker run under ``bench/probe.py``:
the bystander's round trips and the broker's reactor turns in CPU time, side by side.

    FUZZ_SEED=12345 python bench/fuzz_probe.py --streams 20000 [--workers 2]
    python bench/fuzz_probe.py --streams 0     # no attack: the bystander alone for 20 s
    PROBE_STACKS=10 FUZZ_SEED=12345 python bench/fuzz_probe.py --streams 20000

The attack, the bystander (a round trip every 5 ms) and the broker's options are the
test's; what differs is that nothing is asserted and the broker is ended with SIGTERM
(so that the probe writes its figures), not killed.  It prints the bystander's p50,
p99 and max, the sessions left behind, the load average before and after, and the
probe's summary over the attack's window (turn CPU p50/p99/p999/max, turns over
20 ms, collections); with ``PROBE_STACKS=MS`` the folded stacks of the turns over MS
ms of CPU are in the file it names (``python bench/probe.py --top FILE`` ranks them).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import hostile  # noqa: E402  (bench/ is not a package)

from tests import livebroker  # noqa: E402
from tests.test_live_fuzz import attack  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=1,
                        help="attacking processes (the slow test uses 2)")
    parser.add_argument("broker_args", nargs="*", help="extra options for the broker")
    args = parser.parse_args()
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(1 << 32)))
    directory = Path(tempfile.mkdtemp(prefix="fuzz-probe-"))
    out = str(directory / "probe.json")
    # The test's broker, under the probe.
    livebroker.twistd_command = lambda: [sys.executable, str(BENCH / "probe.py"), out]
    load_before = os.getloadavg()
    broker = livebroker.LiveBroker(directory, "--sys-interval", "1", *args.broker_args)
    try:
        bystander = livebroker.Bystander(broker.port)
        for _ in range(20):
            bystander.round_trip()
        bystander.times.clear()
        rss_before = broker.rss_kib()
        context = multiprocessing.get_context("fork")
        started = time.monotonic()
        with context.Pool(args.workers) as pool:
            jobs = [pool.apply_async(attack, (broker.port, seed + n, args.streams // args.workers))
                    for n in range(args.workers)]
            if args.streams:
                livebroker.bystander_during(bystander, lambda: all(j.ready() for j in jobs))
            else:  # the bystander alone for as many trips: the machine's own floor
                deadline = time.monotonic() + 20
                livebroker.bystander_during(bystander, lambda: time.monotonic() > deadline)
            sent = sum(job.get() for job in jobs)
        ended = time.monotonic()
        load_after = os.getloadavg()
        time.sleep(2)
        held = livebroker.sys_value(broker.port, "clients/disconnected")
        rss_after = broker.rss_kib()
        times = bystander.times
        print(f"seed {seed}: {sent} streams in {ended - started:.1f} s, {held} sessions left "
              f"behind; load average {load_before[0]:.1f} -> {load_after[0]:.1f}; RSS "
              f"{rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB")
        print(f"bystander p50 {bystander.percentile(0.5):.2f} ms, p99 "
              f"{bystander.percentile(0.99):.2f} ms, max {max(times):.1f} ms over "
              f"{len(times)} round trips; unhandled log lines: {len(broker.unhandled())}")
        bystander.close()
    finally:
        if broker.alive():
            broker.proc.send_signal(signal.SIGTERM)
            try:
                broker.proc.wait(60)
            except Exception:
                pass
        broker.stop()
    print(hostile.probe_line(out, (started, ended)).strip(), f"[{out}]")
    if os.environ.get("PROBE_STACKS"):
        print(f"stacks of the long turns: {out}.stacks")


if __name__ == "__main__":
    main()
