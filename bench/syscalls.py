"""System calls of running processes, counted by kind: ``perf stat`` on the kernel's
``syscalls:sys_enter_*`` tracepoints (counting, not tracing: the processes run at
their usual speed).  ``bench/cluster.py --syscalls`` counts a spread run's nodes with
it: the kernel's share of a message as a count, which the machine's load changes
little, where the system time beside it swings with the load (docs/cluster.md,
"Issue 16's 0.8, counted per node").  Needs ``perf`` and the tracepoints readable
(``perf_event_paranoid`` at most 2 for one's own processes)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

#: The kinds counted one by one (the rest are in the total).
SYSCALLS = ("sendto", "recvfrom", "epoll_wait", "epoll_ctl", "write", "read", "sendmsg",
            "recvmsg")


class SyscallCounter:
    """``perf stat`` on processes ``pids``, from now until :meth:`stop`."""

    def __init__(self, pids: list[int], out: Path) -> None:
        events = ["raw_syscalls:sys_enter",
                  *(f"syscalls:sys_enter_{name}" for name in SYSCALLS)]
        self.out = out
        self.proc = subprocess.Popen(
            ["perf", "stat", "-x,", "-o", str(out), "-e", ",".join(events),
             "-p", ",".join(map(str, pids))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, messages: int) -> dict[str, Any]:
        """System calls per message (of ``messages``), all the processes: the total and
        by kind."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        counts: dict[str, int] = {}
        for line in self.out.read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[0].isdigit():
                counts[fields[2].rsplit("_", 1)[-1] if "sys_enter_" in fields[2]
                       else "total"] = int(fields[0])
        per = {name: round(counts.get(name, 0) / messages, 3) for name in SYSCALLS}
        return {"syscalls_per_msg": round(counts.get("total", 0) / messages, 3),
                "syscalls_per_msg_by_kind": {k: v for k, v in per.items() if v}}
