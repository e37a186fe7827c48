"""What Prometheus metrics cost: our broker with and without a metrics listener that a
scraper reads every second.

The issue's target: no more than 3% slower with metrics.  The hot path only increments
plain integers (core/stats.py); the scrape reads them and walks the sessions once.  The
two brokers run interleaved (the order alternating each run), each started afresh per
run (``compare.measure``), under the same load generator; the scraper is a thread here
doing ``GET /metrics`` once a second for as long as the broker runs, and its scrape
count and failures are printed with each line.

    python bench/metrics_cost.py [--runs 3] [--quick] [--scenarios fan-in] [--interval 1]
                                 [--rev HEAD]

Prints one JSON line per measurement, then the medians and the ratio metrics / none, of
messages a second and of the broker's CPU time per delivered message (the steadier
figure when other processes share the machine).
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    parser.add_argument("--scenarios", default="fan-in")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument("--rev", default=None,
                        help="run this git revision (git archive), not the working tree")
    args = parser.parse_args(argv)
    plain = compare.Ours("ours", "mqtt-twisted")
    metered = compare.Ours("ours-metrics", "mqtt-twisted --listen metrics=... scraped")
    if args.rev:
        for broker in (plain, metered):
            broker.use_revision(args.rev)
    logdir = compare.RESULTS / time.strftime("metrics-%Y%m%d-%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    figures: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    try:
        for run in range(args.runs):
            for scenario in args.scenarios.split(","):
                order = [plain, metered] if run % 2 == 0 else [metered, plain]
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
    for scenario in args.scenarios.split(","):
        base = figures.get(("ours", scenario), [])
        metered_figures = figures.get(("ours-metrics", scenario), [])
        if not base or not metered_figures:
            print(f"{scenario}: no result for one of the brokers", file=sys.stderr)
            failed = True
            continue
        b, m = statistics.median(base), statistics.median(metered_figures)
        print(f"{scenario}: without metrics {b:,.0f} msg/s, scraped every {args.interval:g} s "
              f"{m:,.0f} msg/s, ratio {m / b:.3f} (medians of {len(base)} and "
              f"{len(metered_figures)})")
        cb, cm = cpu.get(("ours", scenario), []), cpu.get(("ours-metrics", scenario), [])
        if cb and cm:
            b, m = statistics.median(cb), statistics.median(cm)
            print(f"{scenario}: broker CPU per delivered message: without metrics {b:.2f} us, "
                  f"with {m:.2f} us, ratio {m / b:.3f} (medians; steadier than msg/s when "
                  f"other processes share the machine)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
