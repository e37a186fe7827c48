"""Python function calls per routed message, in process: a check that a refactoring of
the core added no call to the per-message path.

Drives the sans-IO broker (``mqtt_twisted.testing``) with raw packets: one publisher,
one subscriber, QoS 0 and QoS 1 (publisher PUBACK and subscriber PUBACK included),
and counts every Python-level call with ``sys.setprofile`` over N messages.  Counts,
unlike times, do not depend on the machine's load, so two checkouts compare exactly:

    python bench/calls_per_message.py
    python bench/calls_per_message.py --checkout /path/to/older/checkout
    python bench/calls_per_message.py --more   # also per connection cycle, per SUBSCRIBE
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROGRAM = r"""
import sys
from mqtt_twisted.codec import PubAck, Publish, encode
from mqtt_twisted.testing import FakeClient, make_broker

N = int(sys.argv[1])
broker, _ = make_broker()
sub = FakeClient(broker, 4)
sub.connect("sub")
for qos in (0, 1):
    sub.subscribe(f"q{qos}/t", qos=qos)
pub = FakeClient(broker, 4)
pub.connect("pub")
calls = [0]

def count(frame, event, arg):
    if event == "call":
        calls[0] += 1

for qos in (0, 1):
    packets = [encode(Publish(f"q{qos}/t", b"x" * 16, qos, False, False,
                              (i % 60000) + 1 if qos else None), 4) for i in range(N)]
    acks = [encode(PubAck((i % 60000) + 1), 4) for i in range(N)]
    calls[0] = 0
    sys.setprofile(count)
    for i in range(N):
        pub.connection.dataReceived(packets[i])
        if qos:
            sub.connection.dataReceived(acks[i])
    sys.setprofile(None)
    sub.transport.written.clear()
    pub.transport.written.clear()
    print(f"QoS {qos}: {calls[0] / N:.1f} Python calls per message")

if "--more" in sys.argv:
    from mqtt_twisted.codec import Connect, Disconnect, Subscribe, Subscription
    from mqtt_twisted.testing import FakeTransport
    # A connection's life: built, CONNECT, CONNACK, DISCONNECT, closed.
    connects = [encode(Connect(f"cycle{i}", 4, True, 0), 4) for i in range(N)]
    bye = encode(Disconnect(0), 4)
    transports = [FakeTransport() for _ in range(N)]
    calls[0] = 0
    sys.setprofile(count)
    for i in range(N):
        conn = broker.build_connection(transports[i], "peer")
        conn.dataReceived(connects[i])
        conn.dataReceived(bye)
        conn.connectionLost(None)
    sys.setprofile(None)
    print(f"connect: {calls[0] / N:.1f} Python calls per CONNECT-CONNACK-DISCONNECT")
    # One new filter per SUBSCRIBE (SUBACK included).
    subs = [encode(Subscribe((i % 60000) + 1, [Subscription(f"s/{i}/+", 1)]), 4)
            for i in range(N)]
    calls[0] = 0
    sys.setprofile(count)
    for i in range(N):
        sub.connection.dataReceived(subs[i])
    sys.setprofile(None)
    print(f"subscribe: {calls[0] / N:.1f} Python calls per SUBSCRIBE of one new filter")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--more", action="store_true",
                        help="also count the calls per connection cycle and per SUBSCRIBE")
    args = parser.parse_args()
    print(f"checkout: {args.checkout}")
    subprocess.run([sys.executable, "-c", _PROGRAM, str(args.messages)]
                   + (["--more"] if args.more else []), check=True,
                   env={"PYTHONPATH": str(args.checkout)}, cwd=args.checkout)


if __name__ == "__main__":
    main()
