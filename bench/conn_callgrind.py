"""User-space instructions per connection cycle of our broker, counted by callgrind.

``bench/conn_memory.py``'s CPU per cycle moves by ±20% with the machine's load (2
shared cores), more than most single changes to the connect path are worth.  This
counts instructions instead, which the load does not change: the broker runs under
``valgrind --tool=callgrind`` with instrumentation off, is warmed up with 300 cycles,
then counts only while the client runs ``--cycles`` cycles of connect, CONNECT, CONNACK,
DISCONNECT, close (``conn_memory.cycles``: 16 in flight), and prints the instructions
per cycle (``Ir``; the kernel's work is not counted).  Valgrind slows the broker down
about fifty times, so more of the client's cycles meet in one reactor turn than on a
normal run: work done once per turn weighs less here.

    python bench/conn_callgrind.py [--cycles 2000] [--checkout DIR] [--runs 1] [--window 16]

Needs ``valgrind`` (with ``callgrind_control``).  A run of 2,000 cycles takes about
half a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402  (bench/ is not a package)
import conn_memory  # noqa: E402


def instructions_per_cycle(checkout: Path, cycles: int, window: int = 16) -> float:
    """Start our broker from ``checkout`` under callgrind; count ``cycles`` cycles."""
    ours = conn_memory.OursAt("ours", "mqtt-twisted")
    ours.checkout = checkout.resolve()
    port = compare.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="conn-callgrind-"))
    out = workdir / "callgrind.out"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={out}", *ours.command(port, workdir)]
    with open(workdir / "broker.log", "wb") as log:
        proc = subprocess.Popen(command, cwd=ours.cwd(), env=ours.env(), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:  # (twistd's start-up under valgrind takes a while)
            try:
                compare.open_client(port, "probe", timeout=2.0).close()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"the broker did not start: see {workdir}/broker.log") from None
                time.sleep(1)
        conn_memory.cycles(port, 300, "w")
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(proc.pid)], check=True, capture_output=True)
        conn_memory.cycles(port, cycles, "c", window)
        subprocess.run([*control, "-i", "off", str(proc.pid)], check=True, capture_output=True)
        subprocess.run([*control, "-d", str(proc.pid)], check=True, capture_output=True)
        time.sleep(1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    counted = 0
    for name in glob.glob(f"{out}*"):
        with open(name) as f:
            for line in f:
                if line.startswith("totals:"):
                    counted = max(counted, int(line.split()[1]))
    return counted / cycles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--checkout", type=Path, default=BENCH.parent,
                        help="run our broker from this tree (default: this one)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--window", type=int, default=16,
                        help="cycles in flight at once (1: every event a reactor turn of "
                             "its own, so that per-turn work counts in full)")
    args = parser.parse_args()
    for run in range(args.runs):
        ir = instructions_per_cycle(args.checkout, args.cycles, args.window)
        print(f'{{"run": {run}, "checkout": "{args.checkout}", "cycles": {args.cycles}, '
              f'"window": {args.window}, '
              f'"instructions_per_cycle": {ir:.0f}}}', flush=True)


if __name__ == "__main__":
    main()
