"""A py-spy flame graph (SVG) of our broker while bench/loadgen.py runs one scenario.

Why a sampling profiler on the real process: the figures that limit us (fan-in QoS 0
against nats-server, connection setup against Mosquitto) come from the whole stack,
Twisted's reactor and the kernel calls included, which an in-process cProfile of the
core alone does not show, and py-spy adds no overhead to the code it samples.

Starts ``twistd -n mqttbroker`` as ``bench/compare.py`` does (the working tree, or
``--rev REV`` for a committed revision), attaches ``py-spy record`` to it, runs the
scenario, and writes ``docs/img/flame-SCENARIO-LABEL.svg``:

    python bench/flame.py --scenario fan-in --label before [--rev HEAD] [--quick]

py-spy must be on PATH or in this Python's environment (``pip install py-spy``); it
samples with ``--nonblocking`` (no ptrace stops of the broker), so it needs no root
when the kernel lets a process read its children's memory.
"""

from __future__ import annotations

import argparse
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


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="fan-in", choices=loadgen.BROKER_SCENARIOS)
    parser.add_argument("--label", default="now", help="file name suffix (before, after...)")
    parser.add_argument("--rev", help="profile this git revision instead of the working tree")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--quick", action="store_true", help="loadgen's short sizes")
    parser.add_argument("--ours-args", default="--max-inflight 100")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    spy = py_spy()
    loadgen.raise_fd_limit()
    ours = compare.BROKER_TYPES["ours"]
    ours.extra = tuple(args.ours_args.split())
    if args.rev:
        ours.use_revision(args.rev)
    args.out.mkdir(parents=True, exist_ok=True)
    svg = args.out / f"flame-{args.scenario}-{args.label}.svg"
    running = compare.start(ours, Path(tempfile.mkdtemp(prefix="flame-")))
    try:
        recorder = subprocess.Popen(
            [spy, "record", "--nonblocking", "--rate", str(args.rate), "--format", "flamegraph",
             "--output", str(svg), "--pid", str(running.proc.pid)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)  # py-spy attached
        cfg = loadgen.QUICK if args.quick else loadgen.FULL
        line = compare.run_loadgen(
            ["--port", str(running.port), "--scenario", args.scenario, "--broker", "ours",
             "--broker-pid", str(running.proc.pid)] + (["--quick"] if args.quick else []),
            cfg.scenario_timeout_s + 30)[0]
        recorder.send_signal(signal.SIGINT)
        out, _ = recorder.communicate(timeout=60)
    finally:
        compare.stop(running)
        if ours.source:
            shutil.rmtree(ours.source, ignore_errors=True)
    print(report_line(line))
    print(out.strip().splitlines()[-1] if out.strip() else "py-spy printed nothing")
    if not svg.exists():
        raise SystemExit(f"py-spy wrote no {svg}")
    print(f"wrote {svg.relative_to(ROOT) if svg.is_relative_to(ROOT) else svg}")


def report_line(line: dict) -> str:
    import report
    return report.summary(line)


if __name__ == "__main__":
    try:
        main()
    finally:
        compare.stop_all()
