"""bench/spread_linear.py's arithmetic (issue 16's fraction of linear scaling per node)
and bench/syscalls.py's reading of ``perf stat``'s output: on figures made up here, so
that what the benchmark prints is checked without running it."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.test_bench import load


class ExtrapolateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.linear = load("spread_linear")

    def test_counted_per_node(self) -> None:
        """One node: 60k instructions in 15 µs of user time, 0.2 system calls in 2 µs
        of system time (10 µs a call).  Three nodes: 75k instructions (18.75 µs) and
        0.25 calls (2.5 µs), 21.25 against 17: 0.8; with the contended 4 µs of system
        time measured instead 17 / 22.75; the measured CPU 17 / 30."""
        result = self.linear.extrapolate(
            instructions={1: [60000, 61000, 59000], 3: [75000, 74000, 76000]},
            syscalls={1: [0.2, 0.2, 0.2], 3: [0.25, 0.3, 0.2]},
            cpu={1: [17.0, 16.0, 18.0], 3: [30.0, 29.0, 31.0]},
            system={1: [2.0, 2.0, 1.0], 3: [4.0, 5.0, 3.0]})
        self.assertEqual(result["us_per_syscall"], 10.0)
        one, three = result["sizes"][1], result["sizes"][3]
        self.assertEqual((one["linear_by_instructions"], one["linear_counted"],
                          one["linear_measured_cpu"]), (1.0, 1.0, 1.0))
        self.assertEqual((three["user_us"], three["kernel_us"]), (18.75, 2.5))
        self.assertEqual(three["linear_by_instructions"], 0.8)
        self.assertEqual(three["linear_counted"], 0.8)
        self.assertEqual(three["linear_contended_system"], round(17 / 22.75, 3))
        self.assertEqual(three["linear_measured_cpu"], round(17 / 30, 3))

    def test_more_system_calls_cost_more(self) -> None:
        base = {"instructions": {1: [60000], 2: [66000]}, "syscalls": {1: [0.2], 2: [0.2]},
                "cpu": {1: [17.0], 2: [20.0]}, "system": {1: [2.0], 2: [3.0]}}
        same = self.linear.extrapolate(**base)["sizes"][2]["linear_counted"]
        base["syscalls"] = {1: [0.2], 2: [0.4]}
        more = self.linear.extrapolate(**base)["sizes"][2]["linear_counted"]
        self.assertLess(more, same)
        self.assertEqual(same, round(17 / (16.5 + 2.0), 3))


class PerfStatTests(SynchronousTestCase):
    def test_counts_read_per_message(self) -> None:
        """``perf stat -x,`` lines: the total and each kind, per message; a kind not
        seen is left out, comments and unsupported events skipped."""
        syscalls = load("syscalls")
        out = Path(self.mktemp())
        out.write_text("# started on Fri Dec  4\n\n"
                       "2000,,raw_syscalls:sys_enter,100,100.00,,\n"
                       "500,,syscalls:sys_enter_write,100,100.00,,\n"
                       "0,,syscalls:sys_enter_sendto,100,100.00,,\n"
                       "<not supported>,,syscalls:sys_enter_recvmsg,0,100.00,,\n")
        counter = object.__new__(syscalls.SyscallCounter)
        counter.out = out
        counter.proc = _Stopped()
        self.assertEqual(counter.stop(1000), {"syscalls_per_msg": 2.0,
                                              "syscalls_per_msg_by_kind": {"write": 0.5}})
        self.assertTrue(counter.proc.interrupted)


class _Stopped:
    """Stands for the perf process: interrupted, then waited for."""

    interrupted = False

    def send_signal(self, signum: int) -> None:
        self.interrupted = True

    def wait(self, timeout: float) -> int:
        return 0
