"""Issue 16's fraction of linear scaling per added node, from per-node counts.

On a 2-core machine three nodes, Redis and the load generator's clients share the
cores, so a node's measured CPU time holds the sharing too: preemptions (none on one
node, 0.07 a message on three), caches shared, and the runs' noise is as large as
what is measured.  A node on a core of its own, which linear scaling supposes, pays
its own work only.  So this counts that work per message, as counts the load does
not move (docs/cluster.md, "Issue 16's 0.8, counted per node"):

- user space: instructions, all nodes (``bench/cluster.py --callgrind``);
- the kernel: system calls, all nodes (``bench/cluster.py --syscalls``), at what one
  costs on one node (its system time over its system calls, where nothing preempts it);

each turned into time at one node's rate (its user time over its instructions), and
prints, per cluster size, the medians and the fraction of linear (one node's cost
over n nodes'); beside them the same with the system time as measured (contended),
and the measured CPU time alone.

    python bench/spread_linear.py [--rounds 3] [--callgrind-count 6000] [--count 60000]

About three minutes a round.  Needs what ``bench/cluster.py --callgrind --syscalls``
needs (valgrind, perf).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def spread(*options: str) -> list[dict[str, Any]]:
    """One ``bench/cluster.py --scenario spread`` run of 1, 2 and 3 nodes: its lines."""
    out = subprocess.run([sys.executable, str(BENCH / "cluster.py"), "--scenario", "spread",
                          *options], capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def extrapolate(instructions: dict[int, list[float]], syscalls: dict[int, list[float]],
                cpu: dict[int, list[float]], system: dict[int, list[float]]
                ) -> dict[str, Any]:
    """Per cluster size (keys: nodes), from each round's figures per message, all
    nodes: ``instructions``, ``syscalls``, ``cpu`` (user and system µs, measured) and
    ``system`` (system µs, measured).  One node's figures set the rates."""
    med = {name: {n: statistics.median(v) for n, v in figures.items()}
           for name, figures in (("instructions", instructions), ("syscalls", syscalls),
                                 ("cpu", cpu), ("system", system))}
    user_1 = med["cpu"][1] - med["system"][1]
    per_instruction = user_1 / med["instructions"][1]  # µs
    per_syscall = med["system"][1] / med["syscalls"][1]  # µs
    sizes: dict[int, Any] = {}
    for n in sorted(instructions):
        user = med["instructions"][n] * per_instruction
        kernel = med["syscalls"][n] * per_syscall
        sizes[n] = {
            "instructions_per_msg": round(med["instructions"][n]),
            "syscalls_per_msg": round(med["syscalls"][n], 3),
            "user_us": round(user, 2), "kernel_us": round(kernel, 2),
            "linear_by_instructions": round(med["instructions"][1] / med["instructions"][n],
                                            3),
            "linear_counted": round((user_1 + med["system"][1]) / (user + kernel), 3),
            "linear_contended_system": round((user_1 + med["system"][1])
                                             / (user + med["system"][n]), 3),
            "linear_measured_cpu": round(med["cpu"][1] / med["cpu"][n], 3),
        }
    return {"us_per_instruction": per_instruction, "us_per_syscall": round(per_syscall, 2),
            "sizes": sizes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callgrind-count", type=int, default=6000)
    parser.add_argument("--count", type=int, default=60000)
    args = parser.parse_args(argv)
    instructions: dict[int, list[float]] = {}
    syscalls: dict[int, list[float]] = {}
    cpu: dict[int, list[float]] = {}
    system: dict[int, list[float]] = {}
    for _ in range(args.rounds):
        for line in spread("--count", str(args.callgrind_count), "--callgrind"):
            instructions.setdefault(line["nodes"], []).append(line["instructions_per_msg"])
        for line in spread("--count", str(args.count), "--syscalls"):
            if line["delivered"] < line["messages"]:
                continue  # a subscriber fell behind: not comparable
            n = line["nodes"]
            syscalls.setdefault(n, []).append(line["syscalls_per_msg"])
            cpu.setdefault(n, []).append(line["node_cpu_run_us_per_msg"])
            system.setdefault(n, []).append(line["node_sys_run_us_per_msg"])
    result = extrapolate(instructions, syscalls, cpu, system)
    print(json.dumps(result))
    print("nodes  instructions  syscalls  user µs  kernel µs  of linear: by instructions, "
          "counted, with contended system time, measured CPU")
    for n, size in result["sizes"].items():
        print(f"{n:5}  {size['instructions_per_msg']:12}  {size['syscalls_per_msg']:8}  "
              f"{size['user_us']:7}  {size['kernel_us']:9}  "
              f"{size['linear_by_instructions']}, {size['linear_counted']}, "
              f"{size['linear_contended_system']}, {size['linear_measured_cpu']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
