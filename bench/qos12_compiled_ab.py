"""Instructions per QoS 1 and QoS 2 message with the QoS 1/2 path's modules compiled as
they are (core/_qos12.py) or pure, in process, counted by callgrind (docs/benchmarks.md,
"The QoS 1/2 path compiled as it is: slower").

QoS 1 is ``bench/qos1_cost.py``'s scenario (window 100, 100 ahead, reads of 50
PUBLISHes then 50 PUBACKs, 400 reads); QoS 2 is ``bench/calls_per_message.py``'s (both
handshakes, a packet a read).  Only the loop is counted (``CALLGRIND_TOGGLE_COLLECT``,
the helper of ``bench/crossing_callgrind.py``).  ``--only NAME`` binds one compiled
module's functions and keeps the others pure:

    python bench/qos12_compiled_ab.py [--only inbound --only delivery ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

_PROGRAM = r'''
import os, sys
import cgmark
from mqtt_twisted.codec import PubAck, PubComp, Publish, PubRec, PubRel, encode
from mqtt_twisted.core import _qos12
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.testing import FakeClient, make_broker

only = [m for m in os.environ["ONLY"].split(",") if m]
_qos12.use(os.environ["MODE"] == "compiled" and not only)
for (holder, key, name, path) in _qos12.SITES:
    if name in only:
        _qos12._set(holder, key, _qos12._find(_qos12.compiled[name], path))
if os.environ["QOS"] == "1":
    def publishes(first, last):
        return b"".join(encode(Publish("bench/qos1", b"x" * 64, 1, False, False,
                                       i % 65535 + 1), 4) for i in range(first, last))
    reads = [(publishes(100 + r * 50, 150 + r * 50),
              b"".join(encode(PubAck(i % 65535 + 1), 4) for i in range(r * 50, r * 50 + 50)))
             for r in range(400)]
    broker, _ = make_broker(BrokerSettings(max_inflight=100, max_queued=100000))
    sub = FakeClient(broker, 4)
    sub.connect("sub")
    sub.subscribe("bench/qos1", qos=1)
    pub = FakeClient(broker, 4)
    pub.connect("pub")
    written = (sub.transport.written, pub.transport.written)
    pub.connection.dataReceived(publishes(0, 100))
    cgmark.toggle()
    for publish, ack in reads:
        pub.connection.dataReceived(publish)
        sub.connection.dataReceived(ack)
        for buffer in written:
            buffer.clear()
    cgmark.toggle()
    print("messages", 400 * 50)
else:
    broker, _ = make_broker()
    pub = FakeClient(broker, 4)
    pub.connect("pub")
    sub = FakeClient(broker, 4)
    sub.connect("sub")
    sub.subscribe("q2/t", qos=2)
    n = 5000
    packets = [[encode(c(i % 60000 + 1), 4) for c in (
        lambda p: Publish("q2/t", b"x" * 16, 2, False, False, p), PubRec, PubComp, PubRel)]
        for i in range(n)]
    def flow(i):
        p, rec, comp, rel = packets[i]
        pub.connection.dataReceived(p)
        sub.connection.dataReceived(rec)
        sub.connection.dataReceived(comp)
        pub.connection.dataReceived(rel)
    for i in range(200):
        flow(i)
    cgmark.toggle()
    for i in range(200, n):
        flow(i)
    cgmark.toggle()
    print("messages", n - 200)
'''


def count(helper: Path, mode: str, qos: str, only: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{helper}", MODE=mode, QOS=qos,
               ONLY=",".join(only))
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--dump-instr=no", "--collect-atstart=no",
         "--callgrind-out-file=/dev/null", sys.executable, "-c", _PROGRAM],
        env=env, capture_output=True, text=True, check=True)
    collected = int(re.search(r"Collected : (\d+)", result.stderr).group(1))  # type: ignore[union-attr]
    messages = int(re.search(r"messages (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    return collected / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[])
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH))
    from crossing_callgrind import build_helper

    with tempfile.TemporaryDirectory() as where:
        build_helper(Path(where))
        for qos in ("1", "2"):
            pure = count(Path(where), "pure", qos, [])
            rows = [("compiled", count(Path(where), "compiled", qos, []))]
            rows += [(f"only {m}", count(Path(where), "compiled", qos, [m])) for m in args.only]
            print(f"QoS {qos}: pure {pure:,.0f} instructions per message; " + "; ".join(
                f"{label} {n:,.0f} ({(n - pure) / pure:+.1%})" for label, n in rows), flush=True)


if __name__ == "__main__":
    main()
