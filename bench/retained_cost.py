"""What one retained message costs the broker, in process: storing it, and delivering it
to a new ``#`` subscriber (issue 19's retained scenario without sockets or a reactor).

Drives the sans-IO broker (``mqtt_twisted.testing``) with raw packets: a publisher
sends N retained QoS 0 PUBLISHes to distinct topics (``bench/retained/NNNNNN``, 64-byte
payloads, as ``bench/loadgen.py``'s retained scenario), then a new subscriber sends
SUBSCRIBE ``#`` and the fake clock runs the slices until every retained message is
written.  For each half it prints the Python calls per message (``sys.setprofile``:
exact, independent of the machine's load) and the CPU time per message (best of
``--repeat``, ``time.process_time``: noisy on a shared machine, compare runs made
together)::

    python bench/retained_cost.py
    python bench/retained_cost.py --checkout /path/to/other/checkout
    python bench/retained_cost.py --profile store      # cProfile's top functions
    MQTT_TWISTED_PURE=1 python bench/retained_cost.py  # the pure codec
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROGRAM = r"""
import cProfile, pstats, sys, time
from mqtt_twisted.codec import Publish, Subscribe, Subscription, encode
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker

N, REPEAT, PROFILE, VERSION = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
try:
    from mqtt_twisted.codec import _accel
    print("codec:", "compiled" if _accel.compiled_in_use() else "pure Python")
except ImportError:
    print("codec: pure Python")
payload = bytes(64)
packets = [encode(Publish(f"bench/retained/{i:06d}", payload, 0, True), 4) for i in range(N)]
chunk = 64 * 1024  # what one socket read hands the broker
stream = b"".join(packets)
reads = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
calls = [0]


def count(frame, event, arg):
    if event == "call":
        calls[0] += 1


def broker_and_publisher():
    # The limits compare.py gives the broker (no queue bound to meet, retained quota off).
    off = {name: 0 for name in ("max_retained_per_client", "max_retained_bytes_per_client")
           if name in BrokerSettings.__dataclass_fields__}  # (older checkouts lack them)
    settings = BrokerSettings(max_queued=100_000, max_queued_bytes=0, max_retained_bytes=0,
                              max_retained_messages=0, **off)
    broker, clock = make_broker(settings)
    pub = FakeClient(broker, 4)
    pub.connect("pub")
    return broker, clock, pub


def turns(clock):
    # What is due now, as the reactor's next turns would run it (a read's packets past
    # the connection's budget, the next slice of retained messages).
    while any(call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()):
        clock.advance(0)


def store(pub, clock):
    for data in reads:
        pub.connection.dataReceived(data)
        turns(clock)


def deliver(broker, clock):
    sub = FakeClient(broker, VERSION)
    sub.connect("sub")
    sub.send(Subscribe(1, [Subscription("#", 0)]))
    turns(clock)
    return sub


def measured(what, prof=None):
    best_cpu, n_calls = None, 0
    for attempt in range(REPEAT + 1):
        broker, clock, pub = broker_and_publisher()
        if what == "deliver":
            store(pub, clock)
            assert broker.store.countRetained().result == N
        counting = attempt == REPEAT  # the last run counts calls; the others time
        if counting:
            calls[0] = 0
            sys.setprofile(count)
        elif prof is not None and attempt == 0:
            prof.enable()
        t0 = time.process_time()
        sub = store(pub, clock) if what == "store" else deliver(broker, clock)
        cpu = time.process_time() - t0
        sys.setprofile(None)
        if prof is not None:
            prof.disable()
        if counting:
            n_calls = calls[0]
        else:
            best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
        if what == "deliver":
            got = sum(isinstance(p, Publish) for p in sub.received())
            assert got == N, (got, N)
    return n_calls / N, best_cpu / N * 1e6


for what in ("store", "deliver"):
    prof = cProfile.Profile() if PROFILE == what else None
    per_calls, per_us = measured(what, prof)
    print(f"{what:7}: {per_calls:5.1f} Python calls, {per_us:5.2f} us CPU per retained "
          f"message (best of {REPEAT}, {N} messages)")
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each half")
    parser.add_argument("--version", type=int, default=4, choices=(4, 5),
                        help="the subscriber's MQTT version (4: 3.1.1)")
    parser.add_argument("--profile", choices=("store", "deliver"),
                        help="print cProfile's top functions of one half (first timed run)")
    args = parser.parse_args()
    print(f"checkout: {args.checkout}")
    env = {"PYTHONPATH": str(args.checkout)}
    env.update((k, v) for k, v in os.environ.items() if k.startswith("MQTT_TWISTED_"))
    subprocess.run([sys.executable, "-c", _PROGRAM, str(args.messages), str(args.repeat),
                    args.profile or "", str(args.version)],
                   check=True, env=env, cwd=args.checkout)


if __name__ == "__main__":
    main()
