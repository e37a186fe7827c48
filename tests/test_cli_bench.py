"""``mqtt-twisted bench`` against a real twistd and a real Mosquitto (short runs), its
usage errors, and ``bench/loadgen.py`` still working on the moved load generator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.clitools import MOSQUITTO, Mosquitto, cli, free_port, have, shared, start_ours

ROOT = Path(__file__).resolve().parent.parent


class BenchTests(SynchronousTestCase):
    """Short load tests: every message sent is delivered and timed."""

    def setUp(self) -> None:
        self.fixture = shared("ours", start_ours)
        self.broker = self.fixture.broker
        self.directory = Path(self.fixture.directory)

    def bench(self, port: int, *args: str) -> dict:
        result = cli("bench", "-h", "127.0.0.1", "-p", str(port), "--duration", "0.5",
                     "--json", *args, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        figures = json.loads(result.stdout)
        self.assertGreater(figures["sent"], 0)
        self.assertEqual(figures["delivered"], figures["expected"])
        self.assertGreater(figures["messages_per_s"], 0)
        self.assertLessEqual(figures["p50_ms"], figures["p99_ms"])
        self.assertLessEqual(figures["p99_ms"], figures["p999_ms"])
        return figures

    def test_our_broker_every_qos(self) -> None:
        """QoS 0, 1 and 2, two publishers, two subscribers: all delivered, rate and
        latency percentiles reported."""
        for qos in "012":
            figures = self.bench(self.broker.port, "--qos", qos, "--clients", "2",
                                 "--subscribers", "2", "--size", "100")
            self.assertEqual(figures["expected"], 2 * figures["sent"])

    def test_text_report(self) -> None:
        """Without --json: the messages/s line and the p50/p99/p99.9 line."""
        result = cli("bench", "-h", "127.0.0.1", "-p", str(self.broker.port),
                     "--duration", "0.3", timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout.decode(), r"messages/s delivered\n"
                                                 r"latency ms: p50 [\d.]+  p99 [\d.]+  "
                                                 r"p99\.9 [\d.]+  max [\d.]+\n$")

    def test_mosquitto(self) -> None:
        """Any broker: a real Mosquitto, QoS 0 and QoS 1."""
        if not have(MOSQUITTO):
            raise SkipTest("mosquitto is not installed")
        directory = tempfile.mkdtemp(prefix="cli-mosquitto-")
        self.addCleanup(shutil.rmtree, directory, True)
        broker = Mosquitto(Path(directory))
        self.addCleanup(broker.stop)
        for qos in "01":  # a topic each: nothing of one run can reach the next's subscriber
            self.bench(broker.port, "--qos", qos, "-t", f"bench/q{qos}")

    def test_errors(self) -> None:
        """Bad options and an unreachable broker: one error line, exit 1."""
        for argv in (["--qos", "3"], ["--size", "8"], ["--clients", "0"], ["-t", "a/#"],
                     ["--duration", "0"], ["-p", str(free_port()), "-h", "127.0.0.1"]):
            result = cli("bench", *argv, timeout=60)
            self.assertEqual(result.returncode, 1, (argv, result.stderr))
            self.assertEqual(len(result.stderr.splitlines()), 1, (argv, result.stderr))


class LoadgenStillWorks(SynchronousTestCase):
    """bench/loadgen.py on the moved code (mqtt_twisted.loadgen)."""

    def test_ceiling_quick(self) -> None:
        """The ceiling scenario (no broker) runs to ok: true."""
        result = subprocess.run([sys.executable, str(ROOT / "bench" / "loadgen.py"),
                                 "--scenario", "ceiling", "--quick"],
                                capture_output=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(json.loads(result.stdout)["ok"])
