"""What a log line costs: one client event through the observer twistd installs.

Two figures, in CPU time (``time.process_time``: other processes on a busy machine
count less than in wall time), best of several repeats:

- one ``disconnect`` line (mqtt_twisted/core/clientlog.py) through the real observer
  (level filter, then text or JSON, written and flushed to /dev/null), and the same
  event filtered out (``--log-level warn``);
- a whole connect and disconnect of an in-process client (``FakeClient``, memory
  store: no sockets), which writes two lines at info, at each level and format.

Usage: ``python bench/log_cost.py [--events N] [--cycles N]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from types import SimpleNamespace

from twisted.logger import globalLogBeginner

from mqtt_twisted import logs
from mqtt_twisted.core import clientlog
from mqtt_twisted.testing import FakeClient, make_broker

REPEATS = 5


def best_of(calls: int, work: Callable[[], None]) -> float:
    """Microseconds of CPU per call, the best of REPEATS rounds."""
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(calls):
            work()
        best = min(best, (time.process_time() - started) / calls * 1e6)
    return best


def line_cost(events: int) -> None:
    conn = SimpleNamespace(client_id="sensor-17", peer="192.0.2.7:53122", listener=None,
                           virtual=False, ended=("normal", None, None))
    for fmt, level in (("text", "info"), ("json", "info"), ("text", "warn")):
        logs.set_log_level(level)
        logs.set_log_format(fmt)
        cost = best_of(events, lambda: clientlog.disconnected(conn))
        what = "filtered out" if level == "warn" else f"{fmt} line written"
        print(f"one disconnect event, {what:18}: {cost:6.2f} µs")


def cycle_cost(cycles: int) -> None:
    broker, _ = make_broker()
    count = [0]

    def cycle() -> None:
        count[0] += 1
        client = FakeClient(broker)
        client.connect(f"c{count[0]}")
        client.disconnect()

    for fmt, level in (("text", "warn"), ("text", "info"), ("json", "info")):
        logs.set_log_level(level)
        logs.set_log_format(fmt)
        cost = best_of(cycles, cycle)
        print(f"connect + disconnect in process, {fmt} at {level:4}: {cost:6.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--cycles", type=int, default=10_000)
    args = parser.parse_args()
    out = open("/dev/null", "w")  # for the life of the process
    globalLogBeginner.beginLoggingTo([logs.observer(out)], discardBuffer=True,
                                     redirectStandardIO=False)
    line_cost(args.events)
    cycle_cost(args.cycles)


if __name__ == "__main__":
    main()
