"""A broker's reactor turns and garbage collections, timed from inside its process in
CPU time (``time.thread_time``), which the machine's load does not stretch.

    python bench/probe.py OUT.json -n --pidfile= mqttbroker --listen tcp:1883 ...

runs ``twistd`` with these arguments and, when it exits, writes to ``OUT.json`` every
reactor turn's CPU time (``runUntilCurrent`` plus ``doIteration``: the timed calls due
and the I/O events of one pass of the loop) and every collection's (``gc.callbacks``),
each with its ``time.monotonic()`` start, so that a harness can keep those of an
attack's window (CLOCK_MONOTONIC is the same in every process).  ``SIGUSR1`` writes
``OUT.json.census``: the tracked objects by type, and the collector's generations;
``SIGUSR2`` unfreezes and collects everything, and writes ``OUT.json.leaks``: the
cyclic garbage that frozen objects held, and that collection's CPU time.
``PROBE_PROFILE=FILE`` also writes a cProfile of the run (which slows it).
``PROBE_WATCH=SECONDS``: when no reactor turn has ended for that long (while the
process is up), every thread's stack is appended to ``OUT.json.stopped`` (a stopped
broker: what it is stuck in), once per stop.
``PROBE_STACKS=MS`` samples the Python stack every millisecond of the process's CPU
(``ITIMER_PROF``) and keeps the samples of the turns whose CPU without collections
passed MS: ``OUT.json.stacks`` has them as folded stacks (``frame;frame;... count``, a
flame graph's input), with how many turns they came from; ``python bench/probe.py --top
OUT.json.stacks`` lists the functions those turns spent their samples in.

``bench/hostile.py --probe`` uses it; ``summary(path, start, end)`` reads the figures.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import signal
import sys
import time
from array import array
from collections import Counter
from typing import Any

_cpu = time.thread_time
_now = time.monotonic

#: Turns: CPU seconds, monotonic start and the CPU of the collections inside them;
#: collections: generation, CPU, start.
turn_cpu, turn_at, turn_gc = array("d"), array("d"), array("d")
#: The I/O events each turn handled (readable or writable sockets, accepts...).
turn_events = array("l")
gc_gen, gc_cpu, gc_at = array("b"), array("d"), array("d")
#: Each collection's unreachable objects found, and (full ones) the objects it walked.
gc_found, gc_walked = array("l"), array("l")
_state = {"turn": 0.0, "gc": 0.0, "turn_gc": 0.0, "events": 0}
#: PROBE_STACKS: the running turn's stack samples, those of the long turns (folded
#: stack -> samples), and how many long turns they are.
_samples: list[str] = []
_long_stacks: Counter[str] = Counter()
_stack_state = {"over": 0.0, "turns": 0}


def _sample(signum: int, frame: Any) -> None:
    """SIGPROF: the interrupted stack, outermost first, as ``file:function`` names."""
    names = []
    while frame is not None:
        code = frame.f_code
        names.append(f"{os.path.basename(code.co_filename)[:-3]}:{code.co_name}")
        frame = frame.f_back
    names.reverse()
    _samples.append(";".join(names))


def _turn_ended(cpu: float, gc_cpu: float) -> None:
    """Keep the turn's samples if its own work (without collections) was long."""
    if cpu - gc_cpu > _stack_state["over"]:
        _long_stacks.update(_samples)
        _stack_state["turns"] += 1
    _samples.clear()


def sample_stacks(over_ms: float, interval: float = 0.001) -> None:
    """Sample the stack every ``interval`` s of process CPU; keep long turns' samples."""
    _stack_state["over"] = over_ms / 1000
    signal.signal(signal.SIGPROF, _sample)
    signal.setitimer(signal.ITIMER_PROF, interval, interval)


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        if info["generation"] == 2:  # (a list of them: a few ms, once per full one)
            _state["walked"] = sum(len(gc.get_objects(g)) for g in range(3))
        _state["gc"] = _cpu()
    else:
        gc_gen.append(info["generation"])
        gc_cpu.append(_cpu() - _state["gc"])
        _state["turn_gc"] += gc_cpu[-1]
        gc_found.append(info["collected"] + info["uncollectable"])
        gc_walked.append(int(_state.pop("walked", 0)))
        gc_at.append(_now())


def install(out: str) -> None:
    """Time every pass of the reactor's loop and every collection; write them to
    ``out`` once the reactor has shut down (twistd then kills itself with the signal
    that stopped it, so exit handlers would not run)."""
    from twisted.internet import base, epollreactor

    run_until_current = base.ReactorBase.runUntilCurrent
    do_poll = epollreactor.EPollReactor.doPoll

    def runUntilCurrent(self: Any) -> None:
        if not _state.get("armed"):
            _state["armed"] = 1.0
            self.addSystemEventTrigger("after", "shutdown", dump, out)
        _state["turn"] = _cpu()
        turn_at.append(_now())
        run_until_current(self)

    def doPoll(self: Any, timeout: Any) -> None:
        try:
            do_poll(self, timeout)
        finally:
            turn_cpu.append(_cpu() - _state["turn"])
            turn_gc.append(_state["turn_gc"])
            if _stack_state["over"]:
                _turn_ended(turn_cpu[-1], turn_gc[-1])
            turn_events.append(int(_state["events"]))
            _state["turn_gc"] = 0.0
            _state["events"] = 0

    do_read_or_write = epollreactor.EPollReactor._doReadOrWrite

    def _doReadOrWrite(self: Any, selectable: Any, fd: int, event: int) -> None:
        if not _state.get("lean"):  # (the lean loop's poller counts its events)
            _state["events"] += 1
        do_read_or_write(self, selectable, fd, event)

    epollreactor.EPollReactor._doReadOrWrite = _doReadOrWrite  # type: ignore[method-assign]
    base.ReactorBase.runUntilCurrent = runUntilCurrent  # type: ignore[method-assign]
    epollreactor.EPollReactor.doPoll = doPoll  # type: ignore[method-assign]
    epollreactor.EPollReactor.doIteration = doPoll  # type: ignore[method-assign]
    # A plain TCP MQTT listener replaces the reactor's doIteration with the lean loop
    # (adapters/_leanpoll.py), which bypassed the wrapper above: every turn after the
    # listener started went untimed.  The lean loop is timed the same way; its plain
    # reads do not go through _doReadOrWrite, so they are counted here.
    from mqtt_twisted.adapters import _leanpoll

    lean_poll = _leanpoll._poll

    def do_poll_lean(self: Any, timeout: Any) -> None:
        poller = self._poller
        if type(poller) is not _CountingPoller:
            self._poller = _CountingPoller(poller)
        _state["lean"] = 1.0
        try:
            lean_poll(self, timeout)
        finally:
            _state["lean"] = 0.0
            turn_cpu.append(_cpu() - _state["turn"])
            turn_gc.append(_state["turn_gc"])
            if _stack_state["over"]:
                _turn_ended(turn_cpu[-1], turn_gc[-1])
            turn_events.append(int(_state["events"]))
            _state["turn_gc"] = 0.0
            _state["events"] = 0

    _leanpoll._poll = do_poll_lean  # type: ignore[assignment]
    gc.callbacks.append(_on_gc)


class _CountingPoller:
    """The reactor's epoll object, counting the events each poll returns (the lean
    loop's reads are not ``_doReadOrWrite`` calls)."""

    __slots__ = ("real",)

    def __init__(self, real: Any) -> None:
        self.real = real

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list:
        events = self.real.poll(timeout, maxevents)
        _state["events"] += len(events)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def watch(path: str, seconds: float) -> None:
    """A thread that writes every thread's stack to ``path`` when no turn has ended for
    ``seconds`` (a broker that stopped turning: a blocking call, a loop)."""
    import threading

    def run() -> None:
        seen, since, dumped = -1, _now(), False
        while True:
            time.sleep(seconds / 4)
            n = len(turn_cpu)
            if n != seen or not _state.get("armed"):
                seen, since, dumped = n, _now(), False
            elif not dumped and _now() - since >= seconds:
                dumped = True
                with open(path, "a") as f:
                    f.write(f"--- no turn for {_now() - since:.1f} s after {n} turns, "
                            f"at {_now():.3f}\n")
                    f.flush()
                    faulthandler.dump_traceback(f, all_threads=True)

    threading.Thread(target=run, name="probe-watch", daemon=True).start()


def census(path: str) -> None:
    """The tracked objects by type (what a full collection walks), and the frozen."""
    counts = Counter(type(o).__name__ for o in gc.get_objects())
    generations = [len(gc.get_objects(g)) for g in range(3)]
    with open(path, "w") as f:
        json.dump({"tracked": sum(counts.values()), "generations": generations,
                   "frozen": gc.get_freeze_count(), "at": _now(),
                   "types": counts.most_common(60)}, f, indent=1)


def leaks(path: str) -> None:
    """Unfreeze and collect everything: what the frozen objects held of cyclic garbage
    (``gc.freeze`` keeps it until then), and how long that whole collection takes."""
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    start = _cpu()
    found = gc.collect()
    cpu = _cpu() - start
    with open(path, "w") as f:
        json.dump({"frozen": frozen, "unreachable": found, "cpu_ms": cpu * 1000,
                   "tracked_after": len(gc.get_objects()), "at": _now()}, f)
    gc.freeze()


def dump(path: str) -> None:
    n = min(len(turn_cpu), len(turn_at))
    with open(path, "w") as f:
        json.dump({"turn_cpu": list(turn_cpu[:n]), "turn_at": list(turn_at[:n]),
                   "turn_gc": list(turn_gc[:n]), "turn_events": list(turn_events[:n]),
                   "gc_gen": list(gc_gen), "gc_cpu": list(gc_cpu), "gc_at": list(gc_at),
                   "gc_found": list(gc_found), "gc_walked": list(gc_walked)}, f)
    if _stack_state["over"]:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        with open(path + ".stacks", "w") as f:
            f.write(f"# {_stack_state['turns']} turns over "
                    f"{_stack_state['over'] * 1000:g} ms of CPU without collections\n")
            for stack, count in _long_stacks.most_common():
                f.write(f"{stack} {count}\n")


def top(path: str, lines: int = 40) -> None:
    """The functions the long turns' samples were in: inclusive (anywhere on the
    stack) and own (the innermost frame), as shares of all the samples."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        print(f.readline().strip())
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            n = int(count)
            total += n
            own[frames[-1]] += n
            for name in set(frames):
                inclusive[name] += n
    print(f"{total} samples (1 ms of CPU each)")
    for title, counts in (("inclusive", inclusive), ("own", own)):
        print(f"--- {title}")
        for name, n in counts.most_common(lines):
            print(f"{100 * n / total:6.1f}%  {name}")


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else 0.0


def summary(path: str, start: float = 0.0, end: float = float("inf")) -> dict[str, Any]:
    """The window's figures, in ms of CPU: turns (p50, p99, p999, max, how many over
    20 ms) and collections (per generation: how many, p50, max, total)."""
    with open(path) as f:
        data = json.load(f)
    window = [i for i, t in enumerate(data["turn_at"]) if start <= t <= end]
    turns = [data["turn_cpu"][i] * 1000 for i in window]
    # The same turns without the collections inside them: the broker's own work.
    gcs = data.get("turn_gc") or [0.0] * len(data["turn_cpu"])
    work = [(data["turn_cpu"][i] - gcs[i]) * 1000 for i in window]
    out: dict[str, Any] = {
        "turns": len(turns), "turn_p50": _pct(turns, 0.5), "turn_p99": _pct(turns, 0.99),
        "turn_p999": _pct(turns, 0.999), "turn_max": max(turns, default=0.0),
        "turns_over_20ms": sum(t > 20 for t in turns),
        "work_p99": _pct(work, 0.99), "work_max": max(work, default=0.0),
        "work_over_20ms": sum(t > 20 for t in work)}
    for g in range(3):
        pauses = [c * 1000 for gen, c, t in zip(data["gc_gen"], data["gc_cpu"], data["gc_at"])
                  if gen == g and start <= t <= end]
        out[f"gc{g}"] = {"n": len(pauses), "p50": _pct(pauses, 0.5),
                         "max": max(pauses, default=0.0), "total": sum(pauses)}
    return out


def main() -> None:
    if sys.argv[1] == "--top":
        top(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 40)
        return
    out = sys.argv[1]
    sys.argv = ["twistd", *sys.argv[2:]]
    install(out)
    if os.environ.get("PROBE_STACKS"):
        sample_stacks(float(os.environ["PROBE_STACKS"]))
    profile = os.environ.get("PROBE_PROFILE")
    if profile:  # a cProfile of the whole run as well (it slows the broker: no timings)
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        from twisted.internet import base

        stop = base.ReactorBase.stop

        def stopped(self: Any) -> None:
            stop(self)
            self.addSystemEventTrigger("after", "shutdown", profiler.dump_stats, profile)

        base.ReactorBase.stop = stopped  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, lambda *_: census(out + ".census"))
    signal.signal(signal.SIGUSR2, lambda *_: leaks(out + ".leaks"))
    faulthandler.register(signal.SIGQUIT, all_threads=True)  # a stuck broker's stack
    if os.environ.get("PROBE_WATCH"):
        watch(out + ".stopped", float(os.environ["PROBE_WATCH"]))
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
