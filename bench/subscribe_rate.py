"""CPU time and memory per subscription in process (issue 19), without sockets.

A sans-IO broker (memory store, no subscription limit) takes SUBSCRIBE packets of
``--per-packet`` filters from ``--clients`` clients with ``--filters`` filters each, a
third exact, a third with ``+``, a third with ``#`` (the shapes of bench/loadgen.py's
many-subscriptions scenario), fed as bytes to ``dataReceived``; SUBACKs are written to
fake transports.  It prints the CPU time (user + sys of this process) per filter and
the memory traced per subscription, one line per run::

    python bench/subscribe_rate.py --runs 5
    PYTHONPATH=/path/to/other/checkout python bench/subscribe_rate.py --runs 5

(the second line measures another checkout's broker with the same program: alternate
the two to compare under the same load).  ``MQTT_TWISTED_PURE=1`` measures the pure
codec.
"""

from __future__ import annotations

import argparse
import gc
import os
import tracemalloc

from mqtt_twisted.codec import Subscribe, Subscription, encode
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker


def packets_of(client: int, filters: int, per_packet: int) -> list[bytes]:
    """Client ``client``'s SUBSCRIBEs, encoded (MQTT 3.1.1)."""
    c = f"bench/m/{client:02d}"
    names = [f"{c}/{i:04d}/e{i:04d}" if i % 3 == 0 else f"{c}/+/p{i:04d}" if i % 3 == 1
             else f"{c}/{i:04d}/#" for i in range(filters)]
    return [encode(Subscribe(n + 1, [Subscription(f) for f in names[k:k + per_packet]]), 4)
            for n, k in enumerate(range(0, filters, per_packet))]


def run(clients: int, filters: int, per_packet: int, trace: bool) -> tuple[float, float]:
    """One run: (CPU µs per filter, traced bytes per subscription or 0)."""
    broker, _ = make_broker(BrokerSettings(max_subscriptions=0))
    conns = []
    for c in range(clients):
        client = FakeClient(broker, 4)
        client.connect(f"client{c}")
        conns.append(client)
    data = [packets_of(c, filters, per_packet) for c in range(clients)]
    gc.collect()
    if trace:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    t0 = os.times()
    for client, packets in zip(conns, data):
        receive = client.connection.dataReceived
        for packet in packets:
            receive(packet)
        client.transport.written.clear()  # the SUBACKs
    t1 = os.times()
    per_sub = 0.0
    if trace:
        gc.collect()
        per_sub = (tracemalloc.get_traced_memory()[0] - before) / (clients * filters)
        tracemalloc.stop()
    assert len(broker.tree) == clients * filters, "not every filter was subscribed"
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    return cpu * 1e6 / (clients * filters), per_sub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--filters", type=int, default=1000, help="filters per client")
    parser.add_argument("--per-packet", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", action="store_true",
                        help="also trace memory (tracemalloc slows the runs: a run of its own)")
    args = parser.parse_args()
    from mqtt_twisted.codec import _accel
    codec = "compiled" if _accel.compiled_in_use() else "pure"
    for _ in range(args.runs):
        us, _unused = run(args.clients, args.filters, args.per_packet, False)
        line = f"codec {codec}: {us:.2f} CPU µs per filter"
        if args.memory:
            _unused, per_sub = run(args.clients, args.filters, args.per_packet, True)
            line += f", {per_sub:.0f} traced bytes per subscription"
        print(line, flush=True)


if __name__ == "__main__":
    main()
