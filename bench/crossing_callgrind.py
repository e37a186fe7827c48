"""Instructions per stage of a QoS 1 message crossing from node A to node B, in
process, counted by callgrind: where what a crossing message costs beyond a local one
goes (docs/cluster.md, "Where a crossing message's instructions go").

The scenario is ``bench/calls_per_message.py --cluster``'s (two ``ClusterNode`` objects on
sans-IO brokers, Redis played by the harness, ``--turn`` PUBLISHes a reactor turn; the
subscriber's in-flight window the broker's default), cut into stages: A reading the
PUBLISHes (routing, the outbox), A's end of turn (packing the entry, the ``XADD``), the
entry's reply (the PUBACKs), the harness making B's ``XREADGROUP`` reply (not a node's
work), B parsing it, B delivering the entry, the subscriber's PUBACKs, the ``XACK``'s
reply; and a local QoS 1 message on one node (its PUBLISHes, its subscriber's
PUBACKs).  Each stage runs between two callgrind client requests (a small C helper,
built here with ``gcc``: ``CALLGRIND_TOGGLE_COLLECT``), one valgrind run per stage and
size, ``--collect-atstart=no``; a stage's instructions per message are those of a
``--messages`` run less those of a 2,000 one, over the difference.  Counts, unlike
times, do not move with the machine's load: two checkouts compare exactly.

    python bench/crossing_callgrind.py [--checkout DIR] [--messages 12000] [--turn 100]
        [--stage stage_a_flush ...]

Needs ``valgrind``, its ``callgrind.h`` and ``gcc``; about 20 runs of half a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CROSSING = ["stage_a_publish", "stage_a_flush", "stage_a_replies", "stage_harness",
            "stage_b_parse", "stage_b_deliver", "stage_b_acks", "stage_b_xack"]
LOCAL = ["stage_local_publish", "stage_local_acks"]

_HELPER = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <valgrind/callgrind.h>
static PyObject *toggle(PyObject *self, PyObject *args) {
    CALLGRIND_TOGGLE_COLLECT;
    Py_RETURN_NONE;
}
static PyMethodDef methods[] = {{"toggle", toggle, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "cgmark", NULL, -1, methods};
PyMODINIT_FUNC PyInit_cgmark(void) { return PyModule_Create(&module); }
"""

_PROGRAM = r'''
import os
import sys

import cgmark

WANT = os.environ["STAGE"]


def run(stage, fn):
    if stage == WANT:
        cgmark.toggle()
        fn()
        cgmark.toggle()
    else:
        fn()


from twisted.internet.defer import Deferred
from mqtt_twisted.cluster.node import ClusterNode
from mqtt_twisted.cluster.resp import Parser, encode_reply
from mqtt_twisted.cluster.routes import ADD
from mqtt_twisted.codec import PubAck, Publish, encode
from mqtt_twisted.store.redis import parse_url
from mqtt_twisted.testing import FakeClient, make_broker

MODE, N, TURN = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
packets = [encode(Publish("x/t", b"x" * 16, 1, False, False, (i % 60000) + 1), 4)
           for i in range(N)]
acks = [encode(PubAck((i % 60000) + 1), 4) for i in range(N)]

if MODE == "local":
    broker, _ = make_broker()
    sub = FakeClient(broker, 4)
    sub.connect("sub")
    sub.subscribe("x/t", qos=1)
    pub = FakeClient(broker, 4)
    pub.connect("pub")
    for first in range(0, N, TURN):
        last = min(N, first + TURN)
        def publish():
            for i in range(first, last):
                pub.connection.dataReceived(packets[i])
        def suback():
            for i in range(first, last):
                sub.connection.dataReceived(acks[i])
        run("stage_local_publish", publish)
        run("stage_local_acks", suback)
        sub.transport.written.clear()
        pub.transport.written.clear()
    sys.exit()


class Redis:
    def __init__(self):
        self.sent = []

    def command(self, *args):
        d = Deferred()
        self.sent.append((args, d))
        return d

    def command_blocking(self, block, *args):
        return self.command(*args)

    def pipeline(self, commands):
        d = Deferred()
        self.sent += [(args, None) for args in commands[:-1]]
        self.sent.append((commands[-1], d))
        return d


def node(name):
    broker, clock = make_broker()
    n = ClusterNode(clock, parse_url("redis://127.0.0.1:1/0"), name, broker)
    locate = broker.locate_session
    n.install()
    broker.locate_session = locate
    n.commands, n.reader = Redis(), Redis()
    n.fence.confirmed_at = clock.seconds()
    return n, broker, clock


a, broker_a, clock_a = node("A")
b, broker_b, clock_b = node("B")
a.router.routes.apply(ADD, "B", "x/t")
sub = FakeClient(broker_b, 4)
sub.connect("sub")
sub.subscribe("x/t", qos=1)
pub = FakeClient(broker_a, 4)
pub.connect("pub")
b.inbox.start()
a.commands.sent.clear()
b.commands.sent.clear()
parser = Parser()
entry = [0]
at_b = [0]
for first in range(0, N, TURN):
    last = min(N, first + TURN)
    state = {}

    def publish():
        for i in range(first, last):
            pub.connection.dataReceived(packets[i])

    def flush():
        clock_a.advance(0)

    def replies():
        sent = list(a.commands.sent)
        a.commands.sent.clear()
        out = []
        for args, d in sent:
            entry[0] += 1
            entry_id = b"1-%d" % entry[0]
            d.callback(entry_id)
            if args[1] == b"mqtt:cluster:inbox:B":
                out.append([entry_id, list(args[args.index(b"*") + 1:])])
        state["replies"] = out

    def harness():
        state["wire"] = encode_reply([[b"mqtt:cluster:inbox:B", state["replies"]]])

    def parse():
        for args, d in b.reader.sent[:-1]:
            d.callback(len(args) - 3)
        [(_, read)] = b.reader.sent[-1:]
        b.reader.sent.clear()
        state["read"] = read
        [state["reply"]] = parser.feed(state["wire"])

    def deliver():
        state["read"].callback(state["reply"])

    def subacks():
        while at_b[0] < last:
            sub.connection.dataReceived(acks[at_b[0]])
            at_b[0] += 1

    def xack():
        for args, d in b.commands.sent:
            d.callback(len(args) - 3)
        b.commands.sent.clear()

    run("stage_a_publish", publish)
    run("stage_a_flush", flush)
    run("stage_a_replies", replies)
    if not state["replies"]:
        continue
    run("stage_harness", harness)
    run("stage_b_parse", parse)
    run("stage_b_deliver", deliver)
    run("stage_b_acks", subacks)
    run("stage_b_xack", xack)
    sub.transport.written.clear()
    pub.transport.written.clear()
got = at_b[0]
assert got == N, got
'''


def build_helper(where: Path) -> None:
    """The ``cgmark`` extension module (``toggle()``) in ``where``."""
    source = where / "cgmark.c"
    source.write_text(_HELPER)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    include = sysconfig.get_paths()["include"]
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{include}", "-o",
                    str(where / f"cgmark{suffix}"), str(source)], check=True)


def collected(checkout: Path, helper: Path, stage: str, messages: int, turn: int) -> int:
    """Instructions callgrind counted in ``stage`` over a run of ``messages``."""
    mode = "local" if stage in LOCAL else "cross"
    env = dict(os.environ, PYTHONPATH=f"{checkout}{os.pathsep}{helper}", STAGE=stage)
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--dump-instr=no", "--collect-atstart=no",
         "--callgrind-out-file=/dev/null", sys.executable, "-c", _PROGRAM, mode,
         str(messages), str(turn)],
        env=env, cwd=checkout, capture_output=True, text=True, check=True)
    found = re.findall(r"Collected : (\d+)", result.stderr)
    if not found:
        raise SystemExit(f"no count from callgrind: {result.stderr[-2000:]}")
    return int(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--messages", type=int, default=12000)
    parser.add_argument("--turn", type=int, default=100)
    parser.add_argument("--stage", action="append", choices=CROSSING + LOCAL,
                        help="only these stages (default: all)")
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    stages = args.stage or CROSSING + LOCAL
    base = 2000
    print(f"checkout: {checkout}, {args.turn} a turn, {args.messages} less {base} messages")
    with tempfile.TemporaryDirectory(prefix="crossing-callgrind-") as tmp:
        helper = Path(tmp)
        build_helper(helper)
        # A run outside valgrind first: the checkout's bytecode is compiled before counting.
        for mode in ("cross", "local"):
            subprocess.run([sys.executable, "-c", _PROGRAM, mode, "200", str(args.turn)],
                           env=dict(os.environ, PYTHONPATH=f"{checkout}{os.pathsep}{helper}",
                                    STAGE="none"), cwd=checkout, check=True,
                           capture_output=True)
        totals = {"cross": 0.0, "local": 0.0}
        for stage in stages:
            per = (collected(checkout, helper, stage, args.messages, args.turn)
                   - collected(checkout, helper, stage, base, args.turn)) / (args.messages - base)
            if stage != "stage_harness":
                totals["local" if stage in LOCAL else "cross"] += per
            print(f"{stage:22} {per:9.0f} instructions per message", flush=True)
        if args.stage is None:
            print(f"crossing message, both nodes (harness left out): {totals['cross']:.0f}; "
                  f"local message: {totals['local']:.0f}; "
                  f"ratio {totals['cross'] / totals['local']:.2f}")


if __name__ == "__main__":
    main()
