"""What an ACL costs on the per-message path: our broker with and without ``--acl``.

The issue's target: a ``#``-style subscriber under an ACL costs no more than 10% of
throughput.  The ACL used here is the expensive case: the subscriber's ``bench/#`` only
overlaps a deny rule (``bench/secret/#``), so the filter is granted and every delivery
is checked against the rules (cached per session), and every PUBLISH is checked for
write access (cached per client and topic).  The two brokers run interleaved, each
started afresh per run (``compare.measure``), under the same load generator.

    python bench/acl_cost.py [--runs 3] [--quick] [--scenarios fan-in,qos1]

Prints one JSON line per measurement, then the medians and the ratio ACL / no ACL.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import compare

ACL = """\
# anonymous clients (the load generator connects without a user name)
topic readwrite bench/#
topic deny bench/secret/#
"""

#: Scenarios whose subscriber uses a wildcard filter (fan-in: bench/#).
SCENARIOS = ["fan-in"]


def rate(line: dict) -> float | None:
    """The scenario's headline figure: messages per second."""
    if not line.get("ok", True):
        return None
    for key in ("messages_per_s", "delivered_per_s"):
        if key in line:
            return float(line[key])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args(argv)
    acl_path = Path(tempfile.mkdtemp(prefix="bench-acl-")) / "acl"
    acl_path.write_text(ACL)
    plain = compare.Ours("ours", "mqtt-twisted")
    with_acl = compare.Ours("ours-acl", "mqtt-twisted --acl")
    with_acl.extra = ("--acl", str(acl_path))
    logdir = compare.RESULTS / time.strftime("acl-%Y%m%d-%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    figures: dict[tuple[str, str], list[float]] = {}
    try:
        for run in range(args.runs):
            for scenario in args.scenarios.split(","):
                order = [plain, with_acl] if run % 2 == 0 else [with_acl, plain]
                for broker in order:
                    line = compare.measure(broker, scenario, args.quick, logdir)
                    print(json.dumps(line), flush=True)
                    value = rate(line)
                    if value is not None:
                        figures.setdefault((broker.name, scenario), []).append(value)
    finally:
        compare.stop_all()
    failed = False
    for scenario in args.scenarios.split(","):
        base = figures.get(("ours", scenario), [])
        acl = figures.get(("ours-acl", scenario), [])
        if not base or not acl:
            print(f"{scenario}: no result for one of the brokers", file=sys.stderr)
            failed = True
            continue
        b, a = statistics.median(base), statistics.median(acl)
        print(f"{scenario}: no ACL {b:,.0f} msg/s, ACL {a:,.0f} msg/s, ratio {a / b:.3f} "
              f"(medians of {len(base)} and {len(acl)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
