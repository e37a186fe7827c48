"""bench/compare.py and bench/report.py leave the environment they run in alone.

``compare.py --quick`` used to ``pip install matplotlib`` into whatever Python ran
it (issue 11, item 15c).  Plots are optional now: without matplotlib the report
says so in one line and the run goes on; nothing is installed into the active
environment (amqtt goes into bench/.amqtt-venv, aedes into bench/.aedes).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(name: str) -> ModuleType:
    """A bench/ script as a module (bench/ is not a package), sys.path left as it was."""
    saved = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


class NoMatplotlib:
    """``import matplotlib`` fails while this is active, as where it is not installed."""

    def __enter__(self) -> None:
        self.saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "matplotlib"}
        for k in self.saved:
            del sys.modules[k]
        sys.modules["matplotlib"] = None  # type: ignore[assignment]

    def __exit__(self, *exc: Any) -> None:
        del sys.modules["matplotlib"]
        sys.modules.update(self.saved)


class CompareInstallTests(SynchronousTestCase):
    """compare.install() puts brokers where they belong, and nothing into sys.executable."""

    def test_nothing_pip_installed_into_the_active_environment(self) -> None:
        """Without matplotlib and amqtt: a venv of amqtt's own, and no other command."""
        compare = load("compare")
        commands: list[tuple[str, ...]] = []
        self.patch(compare, "sh", lambda *cmd, **kw: commands.append(tuple(map(str, cmd))))
        self.patch(compare, "mosquitto_binary", lambda: "/usr/sbin/mosquitto")
        root = Path(self.mktemp())
        (root / "aedes" / "node_modules" / "aedes").mkdir(parents=True)
        self.patch(compare, "AEDES_DIR", root / "aedes")
        venv = root / "amqtt-venv"
        self.patch(compare, "AMQTT_VENV", venv)
        with NoMatplotlib():
            compare.install(["ours", "mosquitto", "aedes", "amqtt"])
        self.assertEqual(commands, [
            (sys.executable, "-m", "venv", str(venv)),
            (str(venv / "bin" / "pip"), "install", "--quiet", "amqtt"),
        ])


class ReportWithoutMatplotlibTests(SynchronousTestCase):
    """report.markdown() without matplotlib: the tables, and one line instead of the plots."""

    def test_plots_skipped_with_a_note(self) -> None:
        """No image links, one line saying why, the tables all there."""
        report = load("report")
        lines = [{"broker": b, "scenario": "qos1", "ok": True, "delivered_per_s": v, "run": 0}
                 for b, v in (("ours", 1000.0), ("mosquitto", 1000.0))]
        info = {"runs": 1, "settings": {}, "versions": {}}
        out = Path(self.mktemp())
        with NoMatplotlib():
            section = report.markdown(lines, info, ["ours", "mosquitto"], out)
        self.assertNotIn("![", section)
        notes = [ln for ln in section.splitlines() if "matplotlib" in ln]
        self.assertEqual(len(notes), 1, notes)
        self.assertIn("| QoS 1", section)
        self.assertFalse(out.exists())


class ReportUsageTests(SynchronousTestCase):
    """report.py's command line: a one-line usage error and exit 2, never a traceback."""

    def run_report(self, *args: str) -> tuple[int, str]:
        import subprocess

        done = subprocess.run([sys.executable, str(BENCH / "report.py"), *args],
                              capture_output=True, text=True, timeout=60)
        return done.returncode, done.stderr

    def test_help_is_help(self) -> None:
        """``--help`` prints the usage (it was read as a results directory)."""
        code, err = self.run_report("--help")
        self.assertEqual((code, err), (0, ""))

    def test_missing_results(self) -> None:
        """A directory without a run's results: usage error naming it, exit 2."""
        missing = self.mktemp()
        code, err = self.run_report(missing)
        self.assertEqual(code, 2)
        self.assertNotIn("Traceback", err)
        self.assertIn(missing, err.splitlines()[-1])
