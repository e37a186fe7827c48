"""``twistd`` with a call counter: how ``bench/cluster.py --calls`` runs each node.

Why: the CPU a node spends per message depends on the machine's load (on two shared
cores, by half or more); the Python calls it makes per message do not, and unlike
``bench/calls_per_message.py --cluster`` (Redis replaced in process) these are the
calls of a real node over a real socket to a real ``redis-server``: the RESP parser,
the Redis client, the reactor's events, as many batches as the run really made.

    python bench/node_calls.py OUT.json twistd -n mqttbroker ...

runs ``twistd`` with the given arguments; ``SIGUSR1`` starts counting (``cProfile``),
``SIGUSR2`` stops and writes ``OUT.json``: ``{"calls": Python calls, "c_calls": calls
of C functions (msgpack, socket, ...), "modules": {module: Python calls}, "functions":
{"module:line(name)": calls}}``.  The count slows the node (about 1.5 times), which makes
its batches somewhat bigger than an uncounted node's: the calls per batch are exact,
the batches per message are those of the counted run (``bench/cluster.py`` prints
them from Redis's own command counts).

With ``NODE_CALLS_OPCODES=1`` (``bench/cluster.py --opcodes``) it counts the bytecodes
each Python function executes instead (``sys.settrace`` with opcode events; about 30
times slower): ``"calls"`` is then every bytecode, ``"functions"`` each function's
(with ``NODE_CALLS_LINES=1`` too, each line's: ``FILE:FIRSTLINE(NAME):LINE``).
Why: what a crossing message costs beyond a local one is mostly bytecode inside a few
long functions (docs/cluster.md), which call counts do not see and callgrind, below
the interpreter, cannot attribute to them.
"""

from __future__ import annotations

import collections
import cProfile
import json
import os
import pstats
import signal
import sys
from pathlib import Path
from typing import Any

#: Where a function's file puts it (the first match, in this order).
GROUPS = (
    ("mqtt_twisted/cluster/resp.py", "redis: RESP parser"),
    ("mqtt_twisted/cluster/client.py", "redis: client"),
    ("mqtt_twisted/cluster/", "cluster"),
    ("mqtt_twisted/store/", "store"),
    ("mqtt_twisted/", "broker"),
    ("twisted/internet/defer.py", "twisted: Deferred"),
    ("twisted/", "twisted: reactor"),
)


def group(filename: str) -> str:
    for part, name in GROUPS:
        if part in filename:
            return name
    return "other"


def summary(profile: cProfile.Profile) -> dict[str, Any]:
    """Call counts of ``profile``: Python functions by module group and by function."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    python = c_calls = 0
    modules: dict[str, int] = {}
    functions: dict[str, int] = {}
    #: Each function's own time (cProfile's tottime, seconds): where a counted run's
    #: time went, inflated by the count's own cost, which falls on every call alike.
    own: dict[str, float] = {}
    for (filename, line, name), (_, ncalls, tottime, *_rest) in stats.items():
        if filename == "~":  # a C function (msgpack, a socket call, a builtin)
            c_calls += ncalls
            functions[f"C:{name}"] = functions.get(f"C:{name}", 0) + ncalls
            own[f"C:{name}"] = own.get(f"C:{name}", 0.0) + tottime
            continue
        python += ncalls
        key = group(filename)
        modules[key] = modules.get(key, 0) + ncalls
        short = filename.split("site-packages/")[-1].split("/work/")[-1]
        functions[f"{short}:{line}({name})"] = ncalls
        own[f"{short}:{line}({name})"] = tottime
    return {"calls": python, "c_calls": c_calls, "modules": modules,
            "functions": functions, "own_time": own}


def _short(filename: str) -> str:
    return filename.split("site-packages/")[-1].split("/work/")[-1]


def count_opcodes(out: Path) -> tuple[Any, Any]:
    """SIGUSR1 and SIGUSR2 handlers that count each function's bytecodes."""
    counts: collections.Counter[Any] = collections.Counter()

    by_line = os.environ.get("NODE_CALLS_LINES") == "1"

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            counts[(frame.f_code, frame.f_lineno) if by_line else frame.f_code] += 1
        return local

    def called(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return local

    def start(signum: int, frame: Any) -> None:
        while frame is not None:  # the frames running now (the reactor's loop) too
            frame.f_trace, frame.f_trace_opcodes = local, True
            frame = frame.f_back
        sys.settrace(called)

    def stop(signum: int, frame: Any) -> None:
        sys.settrace(None)
        while frame is not None:
            frame.f_trace = None
            frame = frame.f_back
        functions: dict[str, int] = collections.Counter()
        for key, n in counts.items():
            code, line = key if by_line else (key, None)
            name = f"{_short(code.co_filename)}:{code.co_firstlineno}({code.co_name})"
            functions[name if line is None else f"{name}:{line}"] += n
        total = sum(counts.values())
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"calls": total, "c_calls": 0, "modules": {"bytecodes": total},
                                   "functions": functions}))
        tmp.rename(out)

    return start, stop


def per_message(counts: list[dict], messages: int) -> dict[str, Any]:
    """``bench/cluster.py --calls``: the nodes' counts (``counts``, each node's file)
    as Python calls per message of all nodes, of each, and by module group (with
    ``NODE_CALLS_OPCODES=1``: bytecodes, and the functions that run the most)."""
    groups: dict[str, int] = {}
    functions: dict[str, int] = {}
    for c in counts:
        for name, n in c["modules"].items():
            groups[name] = groups.get(name, 0) + n
        for name, n in c["functions"].items():
            functions[name] = functions.get(name, 0) + n
    if os.environ.get("NODE_CALLS_OPCODES"):
        top = sorted(functions.items(), key=lambda i: -i[1])[:25 if os.environ.get("NODE_CALLS_LINES") != "1" else 1000]
        return {
            "bytecodes_per_msg": round(sum(c["calls"] for c in counts) / messages, 1),
            "bytecodes_per_msg_by_node": [round(c["calls"] / messages, 1) for c in counts],
            "bytecodes_per_msg_by_function": {k: round(v / messages, 1) for k, v in top},
        }
    return {
        "calls_per_msg": round(sum(c["calls"] for c in counts) / messages, 1),
        "calls_per_msg_by_node": [round(c["calls"] / messages, 1) for c in counts],
        "c_calls_per_msg": round(sum(c["c_calls"] for c in counts) / messages, 1),
        "calls_per_msg_by_group": {k: round(v / messages, 2)
                                   for k, v in sorted(groups.items(), key=lambda i: -i[1])},
    }


def main() -> None:
    out = Path(sys.argv[1])
    profile = cProfile.Profile()

    def start(signum: int, frame: Any) -> None:
        profile.enable()

    def stop(signum: int, frame: Any) -> None:
        profile.disable()
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary(profile)))
        tmp.rename(out)  # whole or absent: the benchmark waits for it

    if os.environ.get("NODE_CALLS_OPCODES"):
        start, stop = count_opcodes(out)  # type: ignore[assignment]
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = sys.argv[2:]
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
