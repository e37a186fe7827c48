"""What Prometheus metrics cost: our broker with and without a metrics listener that a
scraper reads every second.

The issue's target: no more than 3% slower with metrics.  The hot path only increments
plain integers (core/stats.py); the scrape reads them and walks the sessions once.  The
two brokers run interleaved (the order alternating each run), each started afresh per
run (``compare.measure``), under the same load generator; the scraper is a thread here
doing ``GET /metrics`` once a second for as long as the broker runs, and its scrape
count and failures are printed with each line.

    python bench/metrics_cost.py [--runs 3] [--quick] [--scenarios fan-in] [--interval 1]
                                 [--rev HEAD] [--baseline main]

Prints one JSON line per measurement, then the medians and the ratio metrics / none, of
messages a second and of the broker's CPU time per delivered message (the steadier
figure when other processes share the machine).  ``--baseline main`` adds a third arm,
that revision without metrics: what the counters added to the message path cost.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.request

import compare
from acl_cost import rate


def free_port() -> int:
    with socket.socket() as s:
        s.bind((compare.HOST, 0))
        return int(s.getsockname()[1])


class Scraper(threading.Thread):
    """GET http://127.0.0.1:PORT/metrics every ``interval`` seconds until stopped."""

    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.stopped = threading.Event()
        self.scrapes = self.failures = 0
        self.bytes = 0

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    self.bytes = len(answer.read())
                self.scrapes += 1
            except OSError:
                self.failures += 1  # before the broker listens, or after it stopped


def cpu_per_message(line: dict) -> float | None:
    """The broker's CPU microseconds per delivered message (compare.measure's broker_cpu_s)."""
    delivered = line.get("delivered")
    if not line.get("broker_cpu_s") or not delivered:
        return None
    return 1e6 * float(line["broker_cpu_s"]) / float(delivered)


def scrape_cost(scrapes: int, logdir) -> float:
    """The broker's CPU milliseconds per scrape, idle (no clients): started afresh, scraped
    ``scrapes`` times in a row; its CPU clock ticks before and after."""
    broker = compare.Ours("ours-metrics", "mqtt-twisted --listen metrics=...")
    port = free_port()
    broker.extra = ("--listen", f"metrics=tcp:{port}:interface=127.0.0.1")
    running = compare.start(broker, logdir)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        before = compare.process_ticks(running.proc.pid)
        for _ in range(scrapes):
            urllib.request.urlopen(url, timeout=5).read()
        ticks = compare.process_ticks(running.proc.pid) - before
    finally:
        compare.stop(running)
    return 1000.0 * ticks / os.sysconf("SC_CLK_TCK") / scrapes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    parser.add_argument("--scenarios", default="fan-in")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument("--rev", default=None,
                        help="run this git revision (git archive), not the working tree")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also run this revision without metrics (e.g. main: what the "
                             "counters themselves cost)")
    parser.add_argument("--scrape-cost", type=int, default=0, metavar="N",
                        help="only measure the broker's CPU per scrape over N scrapes, idle")
    args = parser.parse_args(argv)
    if args.scrape_cost:
        logdir = compare.RESULTS / time.strftime("metrics-%Y%m%d-%H%M%S")
        logdir.mkdir(parents=True, exist_ok=True)
        ms = scrape_cost(args.scrape_cost, logdir)
        print(f"broker CPU per scrape: {ms:.2f} ms over {args.scrape_cost} scrapes "
              f"(scraped every {args.interval:g} s: {ms / 10 / args.interval:.2f}% of a core)")
        return 0
    plain = compare.Ours("ours", "mqtt-twisted")
    metered = compare.Ours("ours-metrics", "mqtt-twisted --listen metrics=... scraped")
    if args.rev:
        for broker in (plain, metered):
            broker.use_revision(args.rev)
    arms = [plain, metered]
    if args.baseline:
        baseline = compare.Ours("ours-baseline", f"mqtt-twisted at {args.baseline}")
        baseline.use_revision(args.baseline)
        arms.append(baseline)
    logdir = compare.RESULTS / time.strftime("metrics-%Y%m%d-%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    figures: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    try:
        for run in range(args.runs):
            for scenario in args.scenarios.split(","):
                order = arms[run % len(arms):] + arms[:run % len(arms)]  # rotated
                for broker in order:
                    scraper = None
                    if broker is metered:
                        port = free_port()
                        broker.extra = ("--listen", f"metrics=tcp:{port}:interface=127.0.0.1")
                        scraper = Scraper(port, args.interval)
                        scraper.start()
                    try:
                        line = compare.measure(broker, scenario, args.quick, logdir)
                    finally:
                        if scraper is not None:
                            scraper.stopped.set()
                            scraper.join()
                            line["scrapes"] = scraper.scrapes
                            line["scrape_bytes"] = scraper.bytes
                    print(json.dumps(line), flush=True)
                    value = rate(line)
                    if value is not None:
                        figures.setdefault((broker.name, scenario), []).append(value)
                        per = cpu_per_message(line)
                        if per is not None:
                            cpu.setdefault((broker.name, scenario), []).append(per)
    finally:
        compare.stop_all()
    failed = False
    pairs = [("ours-metrics", "ours", "scraped metrics / none")]
    if args.baseline:
        pairs.append(("ours", "ours-baseline", f"this tree / {args.baseline}"))
    for scenario in args.scenarios.split(","):
        for name, base_name, what in pairs:
            failed |= report(figures, cpu, scenario, name, base_name, what)
    return 1 if failed else 0


def report(figures: dict, cpu: dict, scenario: str, name: str, base_name: str,
           what: str) -> bool:
    """Print the medians of two arms and their ratios; True if one has no result."""
    base, other = figures.get((base_name, scenario), []), figures.get((name, scenario), [])
    if not base or not other:
        print(f"{scenario}: no result for {name} or {base_name}", file=sys.stderr)
        return True
    b, m = statistics.median(base), statistics.median(other)
    print(f"{scenario}, {what}: {m:,.0f} / {b:,.0f} msg/s, ratio {m / b:.3f} (medians of "
          f"{len(other)} and {len(base)})")
    cb, cm = cpu.get((base_name, scenario), []), cpu.get((name, scenario), [])
    if cb and cm:
        b, m = statistics.median(cb), statistics.median(cm)
        print(f"{scenario}, {what}: broker CPU per delivered message {m:.2f} / {b:.2f} us, "
              f"ratio {m / b:.3f} (medians; steadier than msg/s on a shared machine)")
    return False


if __name__ == "__main__":
    sys.exit(main())
