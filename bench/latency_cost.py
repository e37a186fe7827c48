"""Where a lone message's time goes at 1,000 msg/s: per message, the broker's CPU,
reactor turns, timers, system calls and collections, ours beside Mosquitto.

``bench/compare.py``'s latency scenario (QoS 0, 1,000 msg/s paced, a timestamp in the
payload) gives p50/p99/p99.9, which on a shared 2-core machine move 2-4x between runs.
This runs the same scenario (``bench/loadgen.py --scenario latency``) against each
broker in turn, round after round (A, B, A, B ...), and records beside the latencies
what the load does not change, per message:

- the broker's CPU (``/proc/PID/task/*/schedstat``, nanoseconds);
- for ours, from inside the process (:func:`install`): reactor loop passes (``epoll_wait``
  calls, those with no wait, those with no event), events, reads and writes, timers
  armed (``callLater``, by function), collections by generation and their CPU
  (``gc.callbacks``), and for the turns that handled one event and wrote (a lone
  message): the time from ``epoll_wait``'s return to the first ``write(2)`` (what the
  broker adds to that message's latency) and the turn's CPU, as percentiles;
- with ``--strace``, one more pass per broker under ``strace -c -f``: system calls per
  message (its latencies are strace's, not reported);
- with ``--calls``, one more pass per checkout with ``sys.setprofile``: the Python calls per
  message of the whole process (reactor loop included), by function.

    python bench/latency_cost.py [--checkout DIR]... [--no-mosquitto] [--rounds 3]
                                 [--seconds 10] [--rate 1000] [--strace] [--calls]

``--checkout`` repeats (default: this tree); each is run with ``PYTHONPATH`` set to it,
so build its compiled modules first (``python setup.py build_ext --inplace``).  The
broker's options are ``compare.py``'s (``--ours-args`` too).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
#: The signal that has the instrumented broker write a snapshot of its counters.
SNAPSHOT = signal.SIGRTMIN + 5

# --- inside the broker ----------------------------------------------------------------

_counts: Counter[str] = Counter()
_timers: Counter[str] = Counter()
_calls: Counter[str] = Counter()
#: Lone-message turns: ns from epoll_wait's return to the first write, and turn CPU ns.
_prewrite, _lone_cpu = array("q"), array("q")
_gc_n, _gc_ns = [0, 0, 0], [0, 0, 0]
_state: dict[str, int] = {"polled_at": 0, "cpu0": 0, "events": 0, "wrote": 0, "gc0": 0,
                          "snap": 0}


class _TimedPoller:
    """The reactor's epoll object, noting when each ``poll`` returns and with what."""

    __slots__ = ("real",)

    def __init__(self, real: Any) -> None:
        self.real = real

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list:
        events = self.real.poll(timeout, maxevents)
        _state["polled_at"] = time.perf_counter_ns()
        _state["cpu0"] = time.thread_time_ns()
        _state["wrote"] = 0
        _state["events"] = n = len(events)
        _counts["polls"] += 1
        _counts["events"] += n
        if timeout == 0:
            _counts["polls_no_wait"] += 1
        if not n:
            _counts["polls_no_event"] += 1
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _TimedOs:
    """``os`` for ``_leanserver``: its reads and writes counted, the turn's first write
    timed from the poll's return."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def write(fd: int, data: Any) -> int:
        if not _state["wrote"]:
            _state["wrote"] = 1
            if _state["events"] == 1:
                _prewrite.append(time.perf_counter_ns() - _state["polled_at"])
        _counts["writes"] += 1
        return os.write(fd, data)

    @staticmethod
    def read(fd: int, n: int) -> bytes:
        _counts["reads"] += 1
        return os.read(fd, n)


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _state["gc0"] = time.thread_time_ns()
    else:
        g = info["generation"]
        _gc_n[g] += 1
        _gc_ns[g] += time.thread_time_ns() - _state["gc0"]


def _profile(frame: Any, event: str, arg: Any) -> None:
    if event == "call":
        code = frame.f_code
        _calls[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
    elif event == "c_call":
        _calls[f"C:{getattr(arg, '__qualname__', arg)}"] += 1


def _snapshot(out: str) -> None:
    """Write the counters so far to ``out.N`` (N: 0, 1, ...); with ``LATENCY_COST_CALLS``
    the first snapshot starts counting Python calls and the second stops."""
    n = _state["snap"]
    _state["snap"] = n + 1
    if os.environ.get("LATENCY_COST_CALLS"):
        sys.setprofile(_profile if n == 0 else None)
    data = {"counts": dict(_counts), "timers": dict(_timers), "calls": dict(_calls),
            "prewrite_ns": list(_prewrite), "lone_cpu_ns": list(_lone_cpu),
            "gc_n": _gc_n, "gc_ns": _gc_ns, "gc_count": gc.get_count(),
            "gc_threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
            "tracked": len(gc.get_objects())}
    with open(f"{out}.{n}.tmp", "w") as f:
        json.dump(data, f)
    os.replace(f"{out}.{n}.tmp", f"{out}.{n}")


def install(out: str) -> None:
    """Count and time what the broker does (see the module docstring); ``SNAPSHOT``
    writes the figures so far.  Before twistd runs: the lean loop is bound when the
    listener starts, so its wrapper is in place by then."""
    from twisted.internet import base

    from mqtt_twisted.adapters import _leanpoll, _leanserver

    signal.signal(SNAPSHOT, lambda *_: _snapshot(out))
    if os.environ.get("LATENCY_COST_BARE"):
        return  # (callgrind: nothing of ours counted among the broker's instructions)
    lean_poll = _leanpoll._poll

    def _poll(self: Any, timeout: Any) -> None:
        if type(self._poller) is not _TimedPoller:
            self._poller = _TimedPoller(self._poller)
        _state["events"] = 0
        lean_poll(self, timeout)
        if _state["events"] == 1 and _state["wrote"]:
            _lone_cpu.append(time.thread_time_ns() - _state["cpu0"])

    _leanpoll._poll = _poll  # type: ignore[assignment]
    _leanserver.os = _TimedOs()  # type: ignore[assignment]
    call_later = base.ReactorBase.callLater

    def callLater(self: Any, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        _timers[f"{getattr(f, '__qualname__', f)} ({'0' if not delay else '>0'})"] += 1
        return call_later(self, delay, f, *args, **kw)

    base.ReactorBase.callLater = callLater  # type: ignore[method-assign]
    gc.callbacks.append(_on_gc)


def _inside(argv: list[str]) -> None:
    """``latency_cost.py --inside OUT twistd-args...``: the instrumented broker."""
    install(argv[0])
    sys.argv = ["twistd", *argv[1:]]
    from twisted.scripts.twistd import run

    run()


# --- the harness ----------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def cpu_ns(pid: int) -> int:
    """Nanoseconds the process (all its threads) has run."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def _brokers(args: argparse.Namespace) -> list[tuple[str, Any]]:
    import compare

    class OursAt(compare.Ours):
        checkout: Path
        out: str | None = None

        def cwd(self) -> Path:
            return self.checkout

        def env(self) -> dict[str, str]:
            env = {**os.environ, "PYTHONPATH": str(self.checkout)}
            env.pop("LATENCY_COST_CALLS", None)
            env.pop("LATENCY_COST_BARE", None)
            if self.calls:
                env["LATENCY_COST_CALLS"] = "1"
            if self.bare:
                env["LATENCY_COST_BARE"] = "1"
            return env

        def command(self, port: int, workdir: Path) -> list[str]:
            twistd_args = compare.Ours.command(self, port, workdir)[1:]
            self.out = str(workdir / "counts")
            return [sys.executable, str(Path(__file__).resolve()), "--inside", self.out,
                    *twistd_args]

    brokers: list[tuple[str, Any]] = []
    for checkout in args.checkout or [BENCH.parent]:
        ours = OursAt("ours", "mqtt-twisted")
        ours.checkout = checkout.resolve()
        ours.extra = tuple(args.ours_args.split())
        ours.calls = False
        rev = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        brokers.append((f"ours@{checkout.name}:{rev}", ours))
    if args.mosquitto:
        brokers.append(("mosquitto", compare.Mosquitto("mosquitto", "Mosquitto")))
    return brokers


def _snap(running: Any, broker: Any, n: int) -> dict | None:
    out = getattr(broker, "out", None)
    if out is None:
        return None
    os.kill(running.proc.pid, SNAPSHOT)
    path = f"{out}.{n}"
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no snapshot from the broker ({path})")
        time.sleep(0.05)
    with open(path) as f:
        return json.load(f)


def _per_message(a: dict, b: dict, messages: int) -> dict:
    """What the broker did per message between snapshots ``a`` and ``b``."""
    per = {k: round((b["counts"].get(k, 0) - a["counts"].get(k, 0)) / messages, 3)
           for k in b["counts"]}
    timers = {k: round((v - a["timers"].get(k, 0)) / messages, 4)
              for k, v in b["timers"].items() if v - a["timers"].get(k, 0)}
    pre = [v / 1000 for v in b["prewrite_ns"][len(a["prewrite_ns"]):]]
    lone = [v / 1000 for v in b["lone_cpu_ns"][len(a["lone_cpu_ns"]):]]
    gcs = {f"gen{g}": {"per_1k_messages": round(1000 * (b["gc_n"][g] - a["gc_n"][g]) / messages, 2),
                       "us_each": round((b["gc_ns"][g] - a["gc_ns"][g]) / 1000
                                        / max(1, b["gc_n"][g] - a["gc_n"][g]), 1)}
           for g in range(3)}
    out = {"per_message": per, "timers_per_message": timers, "collections": gcs,
           "lone_turns": len(pre),
           "prewrite_us": {q: round(_pct(pre, p), 1) for q, p in
                           (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))},
           "lone_turn_cpu_us": {q: round(_pct(lone, p), 1) for q, p in
                                (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))}}
    calls = {k: v - a["calls"].get(k, 0) for k, v in b["calls"].items()}
    if calls:
        total = sum(v for k, v in calls.items() if not k.startswith("C:"))
        out["python_calls_per_message"] = round(total / messages, 2)
        out["c_calls_per_message"] = round(
            sum(v for k, v in calls.items() if k.startswith("C:")) / messages, 2)
        out["calls_top"] = [(k, round(v / messages, 3))
                            for k, v in Counter(calls).most_common(40)]
    return out


def _strace_start(pid: int, path: str) -> subprocess.Popen:
    proc = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", path],
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # (attached)
    return proc


def _strace_read(path: str, messages: int) -> dict:
    calls: dict[str, float] = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                calls[parts[-1]] = round(int(parts[3]) / messages, 3)
    return calls


class _Callgrind:
    """A broker run under ``valgrind --tool=callgrind``, counting nothing until told."""

    def __init__(self, inner: Any, out: Path) -> None:
        self.inner, self.out, self.name = inner, out, inner.name

    def cwd(self) -> Path:
        return self.inner.cwd()

    def env(self) -> dict[str, str] | None:
        return self.inner.env()

    def command(self, port: int, workdir: Path) -> list[str]:
        return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={self.out}", *self.inner.command(port, workdir)]


def _callgrind(pid: int, what: str) -> None:
    subprocess.run(["callgrind_control", *what.split(), str(pid)], check=True, capture_output=True)


def _callgrind_read(out: Path, messages: int) -> dict:
    """Instructions per message, and the functions with the most (own cost)."""
    files = sorted(glob.glob(f"{out}*"), key=os.path.getsize)
    if not files:
        return {}
    name = files[-1]
    total = 0
    with open(name) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                total = max(total, int(line.split()[1]))
    annotate = subprocess.run(["callgrind_annotate", "--threshold=95", name],
                              capture_output=True, text=True).stdout
    top = []
    for line in annotate.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)", line)
        if m and len(top) < 25:
            top.append((m.group(3).strip()[-90:], round(int(m.group(1).replace(",", ""))
                                                         / messages)))
    return {"instructions_per_message": round(total / messages), "callgrind_top": top}


def measure(label: str, broker: Any, args: argparse.Namespace, logdir: Path,
            mode: str = "") -> dict:
    import compare

    broker.calls = mode == "calls"
    broker.bare = mode == "callgrind"
    outer = broker
    if mode == "callgrind":
        outer = _Callgrind(broker, logdir / f"callgrind-{label.replace('/', '_')}.out")
    running = compare.start(outer, logdir, timeout=600 if mode == "callgrind" else 30)
    line: dict[str, Any] = {"broker": label, "mode": mode or "latency",
                            "loadavg": open("/proc/loadavg").read().split()[0]}
    try:
        pid = running.proc.pid
        a = _snap(running, broker, 0)
        strace = None
        if mode == "strace":
            strace = _strace_start(pid, str(logdir / f"strace-{pid}"))
        rate, seconds = args.rate, args.seconds
        if mode == "callgrind":  # (about fifty times slower: every message still alone)
            rate, seconds = args.callgrind_rate, args.callgrind_seconds
            compare.run_loadgen(["--port", str(running.port), "--scenario", "latency",
                                 "--set", "latency_s=1", "--set", f"latency_rate={rate}"], 600)
            _callgrind(pid, "-i on")
        cpu0 = cpu_ns(pid)
        result = compare.run_loadgen(
            ["--port", str(running.port), "--scenario", "latency", "--broker", label,
             "--broker-pid", str(pid), "--set", f"latency_s={seconds}",
             "--set", f"latency_rate={rate}"], seconds + 600)[0]
        cpu1 = cpu_ns(pid)
        if mode == "callgrind":
            _callgrind(pid, "-i off")
            _callgrind(pid, "-d")
            time.sleep(1)
        b = _snap(running, broker, 1)
        messages = max(1, result.get("delivered", 0))
        line.update({k: result.get(k) for k in ("sent", "delivered", "p50_ms", "p99_ms",
                                                 "p999_ms", "max_ms")})
        line["cpu_us_per_message"] = round((cpu1 - cpu0) / 1000 / messages, 2)
        if strace is not None:
            strace.send_signal(signal.SIGINT)
            strace.wait(30)
            line["syscalls_per_message"] = _strace_read(str(logdir / f"strace-{pid}"),
                                                        messages)
        if a is not None and b is not None:
            line.update(_per_message(a, b, messages))
        if mode == "callgrind":
            line.update(_callgrind_read(outer.out, messages))
    finally:
        compare.stop(running)
    return line


def _summary(lines: list[dict]) -> None:
    by: dict[str, list[dict]] = {}
    for ln in lines:
        if ln["mode"] == "latency":
            by.setdefault(ln["broker"], []).append(ln)
    print("\nmedians (min-max) over rounds:")
    for label, rows in by.items():
        cells = []
        for key in ("p50_ms", "p99_ms", "p999_ms", "cpu_us_per_message"):
            values = [r[key] for r in rows if r.get(key) is not None]
            if values:
                cells.append(f"{key} {statistics.median(values):.4g} "
                             f"({min(values):.4g}-{max(values):.4g})")
        print(f"  {label}: " + ", ".join(cells))
    labels = list(by)
    if "mosquitto" in by:
        for label in labels:
            if label == "mosquitto":
                continue
            for key in ("p50_ms", "p99_ms"):
                ratios = [o[key] / m[key] for o, m in zip(by[label], by["mosquitto"])
                          if o.get(key) and m.get(key)]
                if ratios:
                    print(f"  {label} / mosquitto {key}: median {statistics.median(ratios):.2f} "
                          f"({min(ratios):.2f}-{max(ratios):.2f}), rounds {len(ratios)}")


def main() -> None:
    if sys.argv[1:2] == ["--inside"]:
        _inside(sys.argv[2:])
        return
    sys.path.insert(0, str(BENCH))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, action="append",
                        help="run our broker from this tree (repeatable; default: this one)")
    parser.add_argument("--no-mosquitto", dest="mosquitto", action="store_false")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--ours-args", default="--max-inflight 100")
    parser.add_argument("--strace", action="store_true",
                        help="one more pass per broker under strace -c: system calls")
    parser.add_argument("--calls", action="store_true",
                        help="one more pass per checkout: Python calls per message")
    parser.add_argument("--callgrind", action="store_true",
                        help="one more pass per checkout under callgrind: instructions (not Mosquitto: "
                             "it drops root, and callgrind_control cannot reach it then)")
    parser.add_argument("--callgrind-rate", type=int, default=200)
    parser.add_argument("--callgrind-seconds", type=float, default=5.0)
    parser.add_argument("--only-extra", action="store_true",
                        help="no latency rounds: only the --strace/--calls/--callgrind passes")
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="latency-cost-"))
    brokers = _brokers(args)
    lines = []
    for r in range(0 if args.only_extra else args.rounds):
        order = brokers if r % 2 == 0 else brokers[::-1]
        for label, broker in order:
            line = measure(label, broker, args, logdir)
            line["round"] = r
            print(json.dumps(line), flush=True)
            lines.append(line)
    for label, broker in brokers:
        modes = (["strace"] if args.strace else []) + (
            ["calls"] if args.calls and label != "mosquitto" else []) + (
            ["callgrind"] if args.callgrind and label != "mosquitto" else [])
        for mode in modes:
            line = measure(label, broker, args, logdir, mode)
            print(json.dumps(line), flush=True)
            lines.append(line)
    _summary(lines)


if __name__ == "__main__":
    main()
