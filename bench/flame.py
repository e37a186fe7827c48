"""A py-spy flame graph (SVG) of our broker while bench/loadgen.py runs one scenario.

Why a sampling profiler on the real process: the figures that limit us (fan-in QoS 0
against nats-server, connection setup against Mosquitto) come from the whole stack,
Twisted's reactor and the kernel calls included, which an in-process cProfile of the
core alone does not show, and py-spy adds no overhead to the code it samples.

Starts ``twistd -n mqttbroker`` as ``bench/compare.py`` does (the working tree, or
``--rev REV`` for a committed revision), attaches ``py-spy record`` to it, runs the
scenario, and writes ``docs/img/flame-SCENARIO-LABEL.svg``:

    python bench/flame.py --scenario fan-in --label before [--rev HEAD] [--quick]
    python bench/flame.py --scenario all --label after --rev main   # one build, each scenario
    python bench/flame.py --widest docs/img/flame-qos1-after.svg    # what a flame shows
    python bench/flame.py --scenario redis-qos1 --scenario cluster-cross --label after

``redis-qos1`` and ``cluster-cross`` are two of bench/ourscen.py's own scenarios, their
halves that compare.py sets against the memory store and one node: the Redis store's
QoS 1 run (bench_store.py) and a QoS 0 stream from node A to node B (cluster.py, an SVG
per node).

After each SVG it prints the widest frames by self time (the samples in a function itself,
not in what it calls), summed over the graph: what limits the scenario, in one look.

py-spy must be on PATH or in this Python's environment (``pip install py-spy``); it
samples with ``--nonblocking`` (no ptrace stops of the broker), so it needs no root
when the kernel lets a process read its children's memory.
"""

from __future__ import annotations

import argparse
import bisect
import html
import itertools
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402  (bench/ is not a package)
import loadgen  # noqa: E402
import ourscen  # noqa: E402


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append",
                        choices=[*loadgen.BROKER_SCENARIOS, *OWN, "all"],
                        help="repeatable; all: every loadgen scenario (default fan-in); "
                             f"{', '.join(OWN)}: our own (bench/ourscen.py's brokers)")
    parser.add_argument("--label", default="now", help="file name suffix (before, after...)")
    parser.add_argument("--rev", help="profile this git revision instead of the working tree")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--quick", action="store_true", help="loadgen's short sizes")
    parser.add_argument("--ours-args", default="--max-inflight 100")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--widest", type=Path, metavar="SVG",
                        help="only print the widest frames of a py-spy SVG")
    args = parser.parse_args()
    if args.widest:
        print(widest_text(args.widest))
        return
    scenarios = args.scenario or ["fan-in"]
    if "all" in scenarios:
        scenarios = list(loadgen.BROKER_SCENARIOS)
    spy = py_spy()
    loadgen.raise_fd_limit()
    ours = compare.BROKER_TYPES["ours"]
    ours.extra = tuple(args.ours_args.split())
    if args.rev:
        ours.use_revision(args.rev)  # built once (its compiled modules too) for every scenario
    print(ours.version(), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        for scenario in scenarios:
            if scenario in OWN:
                OWN[scenario](spy, ours.source or ROOT, args)
            else:
                record(spy, ours, scenario, args)
    finally:
        if ours.source:
            shutil.rmtree(ours.source, ignore_errors=True)


def record(spy: str, ours: compare.Ours, scenario: str, args: argparse.Namespace) -> None:
    """One scenario under py-spy: the SVG, loadgen's line and the widest frames."""
    svg = args.out / f"flame-{scenario}-{args.label}.svg"
    running = compare.start(ours, Path(tempfile.mkdtemp(prefix="flame-")))
    try:
        recorder = subprocess.Popen(
            [spy, "record", "--nonblocking", "--rate", str(args.rate), "--format", "flamegraph",
             "--output", str(svg), "--pid", str(running.proc.pid)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)  # py-spy attached
        cfg = loadgen.QUICK if args.quick else loadgen.FULL
        line = compare.run_loadgen(
            ["--port", str(running.port), "--scenario", scenario, "--broker", "ours",
             "--broker-pid", str(running.proc.pid)] + (["--quick"] if args.quick else []),
            cfg.scenario_timeout_s + 30)[0]
        recorder.send_signal(signal.SIGINT)
        out, _ = recorder.communicate(timeout=60)
    finally:
        compare.stop(running)
    print(report_line(line))
    print(out.strip().splitlines()[-1] if out.strip() else "py-spy printed nothing")
    if not svg.exists():
        raise SystemExit(f"py-spy wrote no {svg}")
    size = svg.stat().st_size
    print(f"wrote {svg.relative_to(ROOT) if svg.is_relative_to(ROOT) else svg} "
          f"({size / 1024:.0f} KiB{'; over 1 MiB: shorten the run' * (size > 2**20)})")
    print(widest_text(svg), flush=True)


def spy_on(spy: str, pid: int, svg: Path, rate: int) -> subprocess.Popen:
    recorder = subprocess.Popen(
        [spy, "record", "--nonblocking", "--rate", str(rate), "--format", "flamegraph",
         "--output", str(svg), "--pid", str(pid)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # py-spy attached
    return recorder


def spied(recorders: list[tuple[subprocess.Popen, Path]]) -> None:
    """Stop the recorders; print each SVG's size and widest frames."""
    for recorder, svg in recorders:
        recorder.send_signal(signal.SIGINT)
        recorder.communicate(timeout=60)
        if not svg.exists():
            raise SystemExit(f"py-spy wrote no {svg}")
        print(f"wrote {svg.name} ({svg.stat().st_size / 1024:.0f} KiB)")
        print(widest_text(svg), flush=True)


def own_redis_qos1(spy: str, source: Path, args: argparse.Namespace) -> None:
    """ourscen's redis-qos1, its Redis-store half, longer: bench_store's QoS 1 run."""
    store = ourscen.bench_store_for(source)
    n = 20_000 if args.quick else 200_000
    services = store.Services("redis", n)
    try:
        sub = store.subscribe(services.port, "bench-sub")
        svg = args.out / f"flame-redis-qos1-{args.label}.svg"
        recorder = spy_on(spy, services.broker.pid, svg, args.rate)
        elapsed = store.publish_all(services.port, n, 100, sub)
        print(f"redis-qos1: {n / elapsed:,.0f} msg/s")
        spied([(recorder, svg)])
    finally:
        services.close()


def own_cluster_cross(spy: str, source: Path, args: argparse.Namespace) -> None:
    """ourscen's cluster-cross, its two-node half: node A (publisher's) and node B
    (subscriber's), one SVG each."""
    cluster = ourscen.cluster_for(source)
    n = 30_000 if args.quick else 300_000
    c = cluster.Cluster(2, True)
    try:
        recorders = [(spy_on(spy, proc.pid, svg, args.rate), svg) for proc, svg in zip(
            c.procs, [args.out / f"flame-cluster-cross-{node}-{args.label}.svg"
                      for node in ("a", "b")])]
        rate = cluster.run(c.ports[0], c.ports[1], 0, n, 2000, 100, f"flame{args.label}")
        print(f"cluster-cross: {rate:,.0f} msg/s, node A to node B, QoS 0")
        spied(recorders)
    finally:
        c.stop()


OWN = {"redis-qos1": own_redis_qos1, "cluster-cross": own_cluster_cross}

Frame = tuple[str, int, int]  # name, first sample, samples


def frames(svg: Path) -> dict[int, list[Frame]]:
    """A py-spy flame graph's frames by depth (its ``y``), each sorted by position."""
    pattern = re.compile(r'<title>(.*?) \((?:[\d,]+) samples?, [\d.]+%\)</title>'
                         r'<rect [^>]*?y="(\d+)"[^>]*?fg:x="(\d+)" fg:w="(\d+)"')
    levels: dict[int, list[Frame]] = {}
    for name, y, x, w in pattern.findall(svg.read_text()):
        levels.setdefault(int(y), []).append((html.unescape(name), int(x), int(w)))
    for level in levels.values():
        level.sort(key=lambda f: f[1])
    return levels


def self_samples(svg: Path) -> tuple[dict[str, int], int]:
    """Samples in each function itself (its frames' width less their callees'), summed
    over the graph by function (all its lines), and all samples."""
    levels = frames(svg)
    ys = sorted(levels)
    step = min((b - a for a, b in itertools.pairwise(ys)), default=16)
    own: dict[str, int] = {}
    for y in ys:
        below = levels.get(y + step, [])  # py-spy draws callees below their caller
        starts = [f[1] for f in below]
        for name, x, w in levels[y]:
            i = bisect.bisect_left(starts, x)
            inner = 0
            while i < len(below) and below[i][1] < x + w:
                inner += below[i][2]
                i += 1
            function = re.sub(r":\d+\)$", ")", name)  # py-spy names frames by line
            own[function] = own.get(function, 0) + w - inner
    total = sum(w for _, _, w in levels[ys[0]]) if ys else 0
    return own, total


def widest_text(svg: Path, n: int = 8) -> str:
    own, total = self_samples(svg)
    top = sorted(own.items(), key=lambda kv: -kv[1])[:n]
    return (f"{svg.name}: {total} samples; widest by self time: "
            + "; ".join(f"{name} {100 * k / max(1, total):.1f}%" for name, k in top))


def report_line(line: dict) -> str:
    import report
    return report.summary(line)


if __name__ == "__main__":
    try:
        main()
    finally:
        compare.stop_all()
