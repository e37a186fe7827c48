"""``mqtt-twisted bench``: a short load test against any MQTT broker.

It is the load generator of ``bench/loadgen.py``, packaged (:mod:`mqtt_twisted.loadgen`):
raw sockets with pre-encoded MQTT 3.1.1 packets, publishers and subscribers in
separate processes so that the generator is not the bottleneck, every phase bounded
by a count and by time.  ``--clients`` publishers each publish on ``TOPIC/INDEX``;
``--subscribers`` sockets subscribed to ``TOPIC/+`` receive everything and time every
message from its send time (in its payload) to its arrival.  Each publisher keeps at
most ``--window`` messages ahead (unacknowledged at QoS 1/2, not yet received at
QoS 0), so the rate is what the broker sustains, not what its buffers absorb.

No reactor: the workers are blocking processes, as in ``bench/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from mqtt_twisted.cli._options import Parser, UsageError
from mqtt_twisted.loadgen.roles import PublisherRole, SubscriberRole
from mqtt_twisted.loadgen.workers import NS, Control, ScenarioError, Worker, percentile

__all__ = ["main", "parse"]

#: Bytes of a benchmark payload's header (send time, sequence, publisher).
MIN_SIZE = 16


def parse(argv: list[str]) -> argparse.Namespace:
    parser = Parser(prog="mqtt-twisted bench", add_help=False,
                    description="A short load test against any MQTT broker: messages/s and "
                                "latency percentiles.")
    add = parser.add_argument
    add("--help", action="help", help="show this help and exit")
    add("-h", "--host", default="localhost")
    add("-p", "--port", type=int, default=1883)
    add("-t", "--topic", default="bench/mqtt-twisted",
        help="publishers use TOPIC/INDEX, subscribers TOPIC/+ (default bench/mqtt-twisted)")
    add("-q", "--qos", type=int, choices=[0, 1, 2], default=0)
    add("--clients", type=int, default=1, help="publishers, one process each (default 1)")
    add("--subscribers", type=int, default=1, help="subscriber connections (default 1)")
    add("--count", type=int, default=1_000_000,
        help="messages per publisher at most (default 1000000)")
    add("--size", type=int, default=64, help=f"payload bytes, >= {MIN_SIZE} (default 64)")
    add("--duration", type=float, default=5.0, help="seconds of publishing (default 5)")
    add("--window", type=int, default=100,
        help="messages a publisher keeps in flight (default 100)")
    add("--drain", type=float, default=10.0,
        help="seconds to wait for deliveries after publishing (default 10)")
    add("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise UsageError(f"port {args.port} is out of range 1..65535")
    if not 1 <= args.clients <= 64 or not 1 <= args.subscribers <= 1000:
        raise UsageError("--clients takes 1..64, --subscribers 1..1000")
    if args.count < 1 or args.duration <= 0 or args.drain < 0:
        raise UsageError("--count >= 1, --duration > 0 and --drain >= 0")
    if not MIN_SIZE <= args.size <= 256 * 1024 * 1024:
        raise UsageError(f"--size takes {MIN_SIZE} bytes (the timestamp) to 256 MiB")
    if not 1 <= args.window <= 65535:
        raise UsageError("--window takes 1..65535")
    if "+" in args.topic or "#" in args.topic or not args.topic:
        raise UsageError(f"invalid topic {args.topic!r}")
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the test; the figures as a dict.  ScenarioError when a worker fails."""
    control = Control(publishers=args.clients)
    tag = f"b{os.getpid():x}"
    workers: list[Worker] = []
    bound = args.duration + args.drain + 30.0
    try:
        sub = Worker(SubscriberRole, args.port, control, tag, None, 0, args.host)
        workers.append(sub)
        sub.call("connect", bound, clients=args.subscribers)
        refused = sub.call("subscribe", bound, filters=[[f"{args.topic}/+"]] * args.subscribers,
                           qos=args.qos, timeout=bound)["refused"]
        if refused:
            raise ScenarioError(f"the broker refused the subscription to {args.topic}/+")
        pubs = [Worker(PublisherRole, args.port, i, tag, control, args.host)
                for i in range(args.clients)]
        workers += pubs
        for wk in pubs:
            wk.call("connect", bound)
        sub.send("count", mode="stamped", idle_s=2.0,
                 deadline_s=args.duration + args.drain)
        start = time.monotonic_ns() + NS // 20
        for i, wk in enumerate(pubs):
            wk.send("stamped", topic=f"{args.topic}/{i}", size=args.size, qos=args.qos,
                    window=args.window, count=args.count, duration_s=args.duration,
                    drain_s=args.drain, start_ns=start,
                    share=args.subscribers)
        published = [wk.reply(bound) for wk in pubs]
        sent = sum(r["sent"] for r in published)
        control.finish(sent)
        got = sub.reply(bound)
    finally:
        for wk in workers:
            wk.stop()
    delivered = sum(got["counts"])
    last = got["last_ns"]
    lat = sorted(v / 1e6 for v in got["lat"])
    expected = sent * args.subscribers
    seconds = (last - start) / NS if last > start else 0.0
    return {
        "host": args.host, "port": args.port, "qos": args.qos, "clients": args.clients,
        "subscribers": args.subscribers, "size": args.size,
        "sent": sent, "delivered": delivered, "expected": expected,
        "missing": expected - delivered, "seconds": round(seconds, 3),
        "messages_per_s": round(delivered / seconds) if seconds else 0,
        "p50_ms": round(percentile(lat, 50), 3) if lat else None,
        "p99_ms": round(percentile(lat, 99), 3) if lat else None,
        "p999_ms": round(percentile(lat, 99.9), 3) if lat else None,
        "max_ms": round(lat[-1], 3) if lat else None, "reason": got["reason"],
    }


def report(figures: dict[str, Any]) -> str:
    f = figures
    lines = [
        f"{f['host']}:{f['port']}  QoS {f['qos']}, {f['clients']} publisher(s) -> "
        f"{f['subscribers']} subscriber(s), {f['size']}-byte payloads",
        f"sent {f['sent']:,}, delivered {f['delivered']:,} of {f['expected']:,} "
        f"in {f['seconds']:.2f} s: {f['messages_per_s']:,} messages/s delivered",
    ]
    if f["p50_ms"] is not None:
        lines.append(f"latency ms: p50 {f['p50_ms']:.3f}  p99 {f['p99_ms']:.3f}  "
                     f"p99.9 {f['p999_ms']:.3f}  max {f['max_ms']:.3f}")
    if f["missing"]:
        lines.append(f"missing: {f['missing']:,} messages not delivered")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    try:
        args = parse(argv)
    except UsageError as e:
        print(f"Error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        figures = measure(args)
    except (ScenarioError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    print(json.dumps(figures) if args.json else report(figures), flush=True)
    raise SystemExit(0 if figures["missing"] == 0 or args.qos == 0 else 2)
