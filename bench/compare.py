"""Run the load generator against our broker, Mosquitto, aedes, amqtt and nats-server, and publish the result.

Why one command: the figures only compare when every broker runs on the same machine, in the
same run, under the same load generator.  This script installs the brokers that are missing
(Debian ``mosquitto`` and ``nats-server``, npm ``aedes`` into ``bench/.aedes``, PyPI ``amqtt`` into
``bench/.amqtt-venv``; never anything into the Python environment running it), then for each run and each scenario starts each broker afresh on an ephemeral
127.0.0.1 port (rotating the brokers' order every run), runs ``bench/loadgen.py`` against it
with a hard timeout, stops the broker, and records one JSON line.  A broker that fails to
start, crashes or times out gets a recorded failure; the run goes on.

At the end it writes ``docs/benchmarks.md`` (only the part between the ``compare`` markers;
other sections, such as the codec micro-benchmark, are kept) and, if matplotlib is installed,
plots under ``docs/img/`` (without it the section says so in one line).
Raw lines and broker logs stay under ``bench/results/<timestamp>/``.

    python bench/compare.py [--brokers ours,mosquitto,aedes,amqtt,nats] [--runs 3] [--quick]

A broker is not measured in a scenario it cannot do (nats-server's MQTT listener has no
QoS 2): the table shows "—" there and the notes say why.

Our own scenarios (``bench/ourscen.py``: the Redis store, the cluster, CoAP), which no peer
does comparably, run when ``ours`` is among the brokers, after the shared ones in every run;
the report gives them a table of their own, ratios against ourselves with issue 19's
targets.  ``--scenarios`` selects among both kinds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
AEDES_DIR = BENCH / ".aedes"
AMQTT_VENV = BENCH / ".amqtt-venv"
RESULTS = BENCH / "results"
DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"
HOST = "127.0.0.1"
BROKERS = ["ours", "mosquitto", "aedes", "amqtt", "nats"]

sys.path.insert(0, str(BENCH))
import loadgen  # noqa: E402  (after the path tweak: bench/ is not a package)
import ourscen  # noqa: E402
import report  # noqa: E402

from mqtt_twisted.loadgen.workers import open_client  # noqa: E402

DISTURBED_PCT = report.DISTURBED_PCT  # foreign CPU share above which a measurement is redone


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*cmd: str | Path, **kwargs) -> subprocess.CompletedProcess:
    """Run a setup command, failing loudly with its output."""
    log("$ " + " ".join(map(str, cmd)))
    return subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def output(*cmd: str | Path) -> str:
    """First line of a version command's output, or '?'."""
    try:
        out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


# -- installation ---------------------------------------------------------------------------


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.path.exists(p)), None)


def nats_binary() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.path.exists(p)), None)


def install(brokers: list[str]) -> None:
    """Install every requested broker that is missing, each in a place of its own."""
    debian = [pkg for name, pkg, found in (("mosquitto", "mosquitto", mosquitto_binary),
                                          ("nats", "nats-server", nats_binary))
              if name in brokers and not found()]
    if debian:
        sh("apt-get", "update")
        sh("apt-get", "install", "-y", "--no-install-recommends", *debian)
    if "aedes" in brokers and not (AEDES_DIR / "node_modules" / "aedes").is_dir():
        sh("npm", "install", "--no-audit", "--no-fund", "--prefix", AEDES_DIR, "aedes")
    if "amqtt" in brokers and not (AMQTT_VENV / "bin" / "amqtt").exists():
        sh(sys.executable, "-m", "venv", AMQTT_VENV)
        sh(AMQTT_VENV / "bin" / "pip", "install", "--quiet", "amqtt")


# -- brokers --------------------------------------------------------------------------------


@dataclass
class Broker:
    """How to start one broker on a port, and what version it is."""

    name: str
    label: str
    #: Scenarios it cannot do -> why (not measured; the report says so).
    unsupported: dict[str, str] = field(default_factory=dict)

    def command(self, port: int, workdir: Path) -> list[str]:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def settings(self) -> str:
        """How it is configured, for the report."""
        raise NotImplementedError

    def cwd(self) -> Path:
        return ROOT

    def env(self) -> dict[str, str] | None:
        return None  # inherit ours


class Ours(Broker):
    source: Path | None = None  # a snapshot of a git revision; None: the working tree
    rev: str | None = None
    compiled: tuple[list[str], list[str]] | None = None  # the snapshot's (built, not built)
    extra: tuple[str, ...] = ()  # --ours-args

    def cwd(self) -> Path:
        return self.source or ROOT

    def env(self) -> dict[str, str] | None:
        if not self.source:
            return None
        return {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(self.source), *filter(None, [os.environ.get("PYTHONPATH")])])}

    def use_revision(self, rev: str) -> Path:
        """Run our broker from ``git archive REV`` instead of the working tree, so that
        edits made in the tree while the comparison runs cannot change what it measures."""
        self.rev = output("git", "-C", ROOT, "rev-parse", "--short", rev)
        self.source = Path(tempfile.mkdtemp(prefix="bench-ours-src-"))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(self.source)], input=archive, check=True)
        # The compiled modules are build output, not in the archive: without this the
        # revision ran on its pure-Python fallback (as `pip install .` would build them).
        self.compiled = build_compiled(self.source)
        return self.source

    def command(self, port: int, workdir: Path) -> list[str]:
        twistd = Path(sys.executable).with_name("twistd")
        return [str(twistd if twistd.exists() else shutil.which("twistd")), "-n", "--pidfile=",
                "mqttbroker", "--listen", f"tcp:{port}:interface={HOST}", "--sys-interval", "0",
                "--max-queued", "100000", "--max-queued-bytes", "0",
                "--max-connections", "0", *LOG_PARITY, *self.extra]

    def settings(self) -> str:
        cmd = " ".join(self.command(0, ROOT)[1:]).replace("tcp:0:", "tcp:PORT:")
        return (f"`twistd {cmd}`; other options at their defaults (so --max-inflight "
                f"{'as given' if '--max-inflight' in self.extra else '20'})")

    def version(self) -> str:
        import mqtt_twisted
        import twisted
        if self.rev:
            where = f"commit {self.rev}"
        else:
            commit = output("git", "-C", ROOT, "rev-parse", "--short", "HEAD")
            dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--",
                                    "mqtt_twisted"], capture_output=True).returncode
            where = f"working tree at {commit}{' with local changes' * dirty}"
        built, missing = self.compiled or compiled_modules(ROOT)
        compiled = ("pure Python (MQTT_TWISTED_PURE=1)" if os.environ.get("MQTT_TWISTED_PURE")
                    else f"compiled: {', '.join(n.rsplit('.', 1)[-1] for n in built) or 'none'}"
                    + (f", pure: {', '.join(n.rsplit('.', 1)[-1] for n in missing)}"
                       if missing else ""))
        return (f"mqtt-twisted {mqtt_twisted.__version__} ({where}; {compiled}), "
                f"Twisted {twisted.__version__}")


def compiled_modules(source: Path) -> tuple[list[str], list[str]]:
    """The optional compiled modules of a checkout: (built, not built), by dotted name."""
    built, missing = [], []
    for pyx in sorted((source / "mqtt_twisted").rglob("*.pyx")):
        name = ".".join(pyx.relative_to(source).with_suffix("").parts)
        (built if list(pyx.parent.glob(pyx.stem + ".*.so")) else missing).append(name)
    return built, missing


def build_compiled(source: Path) -> tuple[list[str], list[str]]:
    """``setup.py build_ext --inplace`` in ``source``, as ``pip install .`` would.

    The build may not fail loudly when it does not build: a venv's own setuptools (65.5
    in Python 3.11's) rejects pyproject's ``project.license`` and the modules are simply
    not there.  So: check for the ``.so`` files, and if some are missing, try again with
    the interpreter the venv was made from (same Python, so the same ABI)."""
    pythons = [sys.executable]
    base = Path(sys.base_prefix) / "bin" / Path(sys.executable).name
    if Path(sys.prefix) != Path(sys.base_prefix) and base.exists():
        pythons.append(str(base))
    errors = []
    for python in pythons:
        done = subprocess.run([python, "setup.py", "build_ext", "--inplace", "-q"],
                              cwd=source, capture_output=True)
        built, missing = compiled_modules(source)
        if not missing:
            break
        errors.append(f"{python}: {done.stderr.decode(errors='replace').strip()[-300:]}")
    if missing:
        log(f"{source}: not built, pure Python: {', '.join(missing)} ({'; '.join(errors)})")
    log(f"{source}: compiled modules {', '.join(built) or 'none'} (built by {python}"
        f"{'; ' + sys.executable + ' could not' if errors and not missing else ''})")
    return built, missing


#: Ours logs what Mosquitto is configured to log below (errors and warnings, no
#: connection lines: ``log_type``, ``connection_messages false``): the connect and
#: disconnect lines are 40k of a connect cycle's 251k instructions (session 13,
#: bench/conn_callgrind.py), work Mosquitto is not asked to do.  ``--log-parity off``
#: runs ours at its default (info: a line per connect and disconnect).
LOG_PARITY = ["--log-level", "warn"]


class Mosquitto(Broker):
    CONF = ["allow_anonymous true", "set_tcp_nodelay true", "persistence false",
            "max_queued_messages 100000", "max_queued_bytes 0", "max_inflight_messages 100",
            "max_connections -1", "sys_interval 0", "connection_messages false",
            "log_dest stderr", "log_type error", "log_type warning"]

    def command(self, port: int, workdir: Path) -> list[str]:
        conf = workdir / "mosquitto.conf"
        conf.write_text("\n".join([f"listener {port} {HOST}", *self.CONF, ""]))
        return [mosquitto_binary() or "mosquitto", "-c", str(conf)]

    def settings(self) -> str:
        return "config: `" + "`, `".join(["listener PORT 127.0.0.1", *self.CONF]) + "`"

    def version(self) -> str:
        return output(mosquitto_binary() or "mosquitto", "-h").replace(" is an MQTT", "")


class Aedes(Broker):
    def command(self, port: int, workdir: Path) -> list[str]:
        return ["node", str(BENCH / "aedes_server.js"), str(port)]

    def settings(self) -> str:
        return ("bench/aedes_server.js: `Aedes.createBroker()` with its defaults, "
                "`socket.setNoDelay(true)` on accepted sockets")

    def version(self) -> str:
        pkg = AEDES_DIR / "node_modules" / "aedes" / "package.json"
        aedes = json.loads(pkg.read_text())["version"] if pkg.exists() else "?"
        return f"aedes {aedes}, Node.js {output('node', '--version')}"


class Amqtt(Broker):
    def command(self, port: int, workdir: Path) -> list[str]:
        conf = workdir / "amqtt.yaml"
        conf.write_text(f"""listeners:
  default:
    type: tcp
    bind: {HOST}:{port}
plugins:
  amqtt.plugins.authentication.AnonymousAuthPlugin:
    allow_anonymous: true
""")
        return [str(AMQTT_VENV / "bin" / "amqtt"), "-c", str(conf)]

    def settings(self) -> str:
        return "one TCP listener, only the anonymous-auth plugin (no $SYS, no logging plugins)"

    def version(self) -> str:
        return "amqtt " + output(AMQTT_VENV / "bin" / "python", "-c",
                                 "import importlib.metadata as m; print(m.version('amqtt'))")


class Nats(Broker):
    """nats-server's MQTT listener (MQTT 3.1.1, QoS 0 and 1; it needs JetStream, which
    keeps sessions, QoS 1 messages and retained messages)."""

    LIMITS = ["max_payload: 1MB", "max_connections: 1000000", "max_pending: 256MB"]

    def command(self, port: int, workdir: Path) -> list[str]:
        conf = workdir / "nats.conf"
        conf.write_text("\n".join([
            f"listen: {HOST}:{free_port()}", "server_name: bench", *self.LIMITS,
            f'jetstream {{ store_dir: "{workdir / "js"}" }}',
            f"mqtt {{ listen: {HOST}:{port} }}", ""]))
        return [nats_binary() or "nats-server", "-c", str(conf)]

    def settings(self) -> str:
        return ("config: `listen 127.0.0.1:PORT2`, `" + "`, `".join(self.LIMITS)
                + "`, `jetstream { store_dir: TMP }`, `mqtt { listen: 127.0.0.1:PORT }`; "
                "the MQTT listener's other settings at their defaults (max_ack_pending 1024)")

    def version(self) -> str:
        return output(nats_binary() or "nats-server", "--version")


BROKER_TYPES = {"ours": Ours("ours", "mqtt-twisted (ours)"),
                "mosquitto": Mosquitto("mosquitto", "Mosquitto"),
                "aedes": Aedes("aedes", "aedes"), "amqtt": Amqtt("amqtt", "amqtt"),
                "nats": Nats("nats", "nats-server", {
                    "qos2": "its MQTT listener has no QoS 2 (MQTT 3.1.1, QoS 0 and 1 only)"})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Running:
    """A started broker process (its own process group) and its log file."""

    broker: Broker
    port: int
    proc: subprocess.Popen
    log_path: Path
    workdir: Path
    _log: object = field(repr=False, default=None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


LIVE: list[Running] = []  # every broker not yet stopped, for the exit handlers


def start(broker: Broker, logdir: Path, timeout: float = 30.0) -> Running:
    """Start ``broker`` on a fresh port and wait until it answers an MQTT CONNECT."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{broker.name}-"))
    log_path = logdir / f"{broker.name}-{port}.log"
    out = open(log_path, "wb")
    proc = subprocess.Popen(broker.command(port, workdir), stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=broker.cwd(), env=broker.env(),
                            start_new_session=True)
    running = Running(broker, port, proc, log_path, workdir, out)
    LIVE.append(running)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running.alive():
            stop(running)
            raise RuntimeError(f"exited with {proc.returncode}: {running.log_tail()}")
        with contextlib.suppress(OSError, loadgen.ScenarioError):
            open_client(port, "benchprobe", timeout=1.0).close()
            return running
        time.sleep(0.1)
    stop(running)
    raise RuntimeError(f"not accepting MQTT connections after {timeout:.0f} s")


def stop(running: Running) -> None:
    """Stop a broker: SIGTERM to its process group, then SIGKILL; free its port."""
    proc = running.proc
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
    if running._log:
        running._log.close()
    shutil.rmtree(running.workdir, ignore_errors=True)
    if running in LIVE:
        LIVE.remove(running)


def stop_all(*_args) -> None:
    for running in list(LIVE):
        stop(running)


# -- one measurement ------------------------------------------------------------------------


def run_loadgen(args: list[str], timeout: float) -> list[dict]:
    """Run bench/loadgen.py in its own process group; kill it on timeout."""
    cmd = [sys.executable, str(BENCH / "loadgen.py"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadgen printed no result (exit {proc.returncode}): {err[-800:]}")
    return lines


def measure(broker: Broker, scenario: str, quick: bool, logdir: Path) -> dict:
    """Start the broker, run one scenario against it, stop it: one result line, always.

    The line also gets ``background_pct`` (machine CPU busy just before) and
    ``foreign_cpu_pct`` (CPU used by processes other than the broker and the load generator
    during the measurement, in % of the whole machine).
    """
    base = {"broker": broker.name, "scenario": scenario}
    cfg = loadgen.QUICK if quick else loadgen.FULL
    quiet = wait_for_quiet()
    try:
        running = start(broker, logdir)
    except RuntimeError as e:
        return {**base, "ok": False, "error": f"broker did not start: {e}"}
    try:
        args = ["--port", str(running.port), "--scenario", scenario, "--broker", broker.name,
                "--broker-pid", str(running.proc.pid)] + (["--quick"] if quick else [])
        total0, busy0 = cpu_ticks()
        broker0 = process_ticks(running.proc.pid)
        ours0 = children_ticks() + broker0
        try:
            line = run_loadgen(args, cfg.scenario_timeout_s + 30)[0]
        except subprocess.TimeoutExpired:
            line = {**base, "ok": False, "error": "hard timeout"}
        except RuntimeError as e:
            line = {**base, "ok": False, "error": str(e)}
        total1, busy1 = cpu_ticks()
        broker1 = process_ticks(running.proc.pid)
        ours = children_ticks() + broker1 - ours0
        # The broker's own CPU seconds: per message, steadier than a rate on a busy machine.
        line["broker_cpu_s"] = round((broker1 - broker0) / os.sysconf("SC_CLK_TCK"), 2)
        line["background_pct"] = quiet
        line["foreign_cpu_pct"] = round(
            max(0.0, 100.0 * (busy1 - busy0 - ours) / max(1, total1 - total0)), 1)
        if not running.alive():
            line.update(ok=False, crashed=True,
                        error=f"broker died (exit {running.proc.returncode}): "
                              f"{running.log_tail(6)[-600:]}")
        return line
    finally:
        stop(running)


def cpu_ticks() -> tuple[int, int]:
    """Machine-wide (total, busy) clock ticks from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields[:8])  # guest time is already counted in user
    return total, total - fields[3] - fields[4]


def background_cpu(seconds: float = 0.5) -> float:
    """Percent of the machine's CPU busy right now (call it with nothing of ours running)."""
    t0, b0 = cpu_ticks()
    time.sleep(seconds)
    t1, b1 = cpu_ticks()
    return round(100.0 * (b1 - b0) / max(1, t1 - t0), 1)


def wait_for_quiet(limit_pct: float = 15.0, max_wait: float = 10.0) -> float:
    """Wait (up to ``max_wait`` s) until other processes leave the CPU mostly idle: the
    machine may be shared, and a busy neighbour skews every figure.  Returns the last reading."""
    deadline = time.monotonic() + max_wait
    busy = background_cpu()
    while busy > limit_pct and time.monotonic() < deadline:
        busy = background_cpu()
    return busy


def process_ticks(pid: int) -> int:
    """User + system clock ticks of one live process (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def children_ticks() -> int:
    """CPU of our waited-for children (the load generator and its workers), in ticks."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((usage.ru_utime + usage.ru_stime) * os.sysconf("SC_CLK_TCK"))


def machine(brokers: list[str]) -> dict:
    """What the run ran on, for the report."""
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        kib = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
        mem = f"{kib / 2**20:.1f} GiB"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
        "kernel": platform.release(), "python": platform.python_version(),
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "versions": {b: BROKER_TYPES[b].version() for b in brokers},
        "settings": {b: BROKER_TYPES[b].settings() for b in brokers},
        "redis": output("redis-server", "--version") if "ours" in brokers else "?",
    }


# -- main -----------------------------------------------------------------------------------


def measure_steady(broker: Broker, scenario: str, quick: bool, logdir: Path) -> dict:
    """``measure``, once more if other processes took much of the machine meanwhile; keep
    the less disturbed of the two."""
    line = measure(broker, scenario, quick, logdir)
    if line.get("foreign_cpu_pct", 0) > DISTURBED_PCT:
        log(f"{broker.name} {scenario}: other processes took {line['foreign_cpu_pct']} % of "
            "the machine; measuring again")
        again = measure(broker, scenario, quick, logdir)
        line = min(line, again, key=lambda ln: ln.get("foreign_cpu_pct", 0))
        line["retried"] = True
    return line


def measure_own(scenario: str, quick: bool, run: int) -> dict:
    """One of our own scenarios (bench/ourscen.py), with ``measure``'s machine figures:
    ``background_pct`` and ``foreign_cpu_pct`` (every process it starts is waited for
    before it returns, so its CPU is in our children's)."""
    why = ourscen.unavailable(scenario, BROKER_TYPES["ours"].source)
    if why:
        return {"broker": "ours", "scenario": scenario, "ok": True, "skipped": why}
    quiet = wait_for_quiet()
    total0, busy0 = cpu_ticks()
    ours0 = children_ticks() + self_ticks()
    line = ourscen.run(scenario, quick, run, BROKER_TYPES["ours"].source)
    total1, busy1 = cpu_ticks()
    ours = children_ticks() + self_ticks() - ours0
    line["background_pct"] = quiet
    line["foreign_cpu_pct"] = round(
        max(0.0, 100.0 * (busy1 - busy0 - ours) / max(1, total1 - total0)), 1)
    return line


def measure_own_steady(scenario: str, quick: bool, run: int) -> dict:
    """``measure_own``, again if other processes took much of the machine meanwhile, as
    ``measure_steady`` does for the shared scenarios."""
    line = measure_own(scenario, quick, run)
    if line.get("foreign_cpu_pct", 0) > DISTURBED_PCT:
        log(f"ours {scenario}: other processes took {line['foreign_cpu_pct']} % of the "
            "machine; measuring again")
        again = measure_own(scenario, quick, run)
        line = min(line, again, key=lambda ln: ln.get("foreign_cpu_pct", 0))
        line["retried"] = True
    return line


def self_ticks() -> int:
    """CPU of this process (bench/ourscen.py's clients run in it), in ticks."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round((usage.ru_utime + usage.ru_stime) * os.sysconf("SC_CLK_TCK"))


def ceiling(quick: bool) -> dict:
    """The load generator's own ceiling, once per run."""
    try:
        return run_loadgen(["--scenario", "ceiling"] + (["--quick"] if quick else []), 120)[0]
    except (subprocess.TimeoutExpired, RuntimeError) as e:
        return {"broker": "none", "scenario": "ceiling", "ok": False, "error": str(e)}


def run_all(brokers: list[str], scenarios: list[str], runs: int, quick: bool, outdir: Path,
            record) -> list[float]:
    """Every run: the ceiling, then each scenario on each broker (the brokers' order rotates
    from run to run).  Returns the machine's background CPU % before each run."""
    busy = []
    for run in range(runs):
        busy.append(background_cpu())
        log(f"run {run + 1}/{runs}: background CPU {busy[-1]} %")
        record(ceiling(quick), run)
        order = brokers[run % len(brokers):] + brokers[:run % len(brokers)]
        for scenario in scenarios:
            if scenario in ourscen.SCENARIOS:  # ours only, against itself
                if "ours" in brokers:
                    record(measure_own_steady(scenario, quick, run), run)
                continue
            for name in order:
                broker = BROKER_TYPES[name]
                if scenario in broker.unsupported:
                    record({"broker": name, "scenario": scenario, "ok": True,
                            "skipped": broker.unsupported[scenario]}, run)
                    continue
                record(measure_steady(broker, scenario, quick, outdir), run)
    return busy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default=",".join(BROKERS),
                        help=f"comma-separated subset of {','.join(BROKERS)}")
    parser.add_argument("--runs", type=int, default=3, help="runs of every scenario (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke test: small sizes, seconds")
    parser.add_argument("--scenarios",
                        default=",".join([*loadgen.BROKER_SCENARIOS, *ourscen.SCENARIOS]),
                        help="comma-separated subset of the scenarios (ours only: "
                             f"{', '.join(ourscen.SCENARIOS)})")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not write docs/ (the default with --quick)")
    # The same in-flight window Mosquitto is configured with (max_inflight_messages 100):
    # the QoS 1/2 scenarios compare brokers, not window sizes.
    parser.add_argument("--ours-args", default="--max-inflight 100", metavar="ARGS",
                        help="extra options for our broker (default: --max-inflight 100, "
                             "Mosquitto's setting here)")
    parser.add_argument("--ours-rev", metavar="REV",
                        help="benchmark our broker at this git revision (e.g. HEAD) instead of "
                             "the working tree, which others may be editing during the run")
    parser.add_argument("--log-parity", choices=["on", "off"], default="on",
                        help="on (default): ours logs warnings and errors, as Mosquitto is "
                             "configured here; off: ours at its default, a line per connect")
    args = parser.parse_args(argv)
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = (set(args.brokers) - set(BROKERS)) | (
        set(args.scenarios) - set(loadgen.BROKER_SCENARIOS) - set(ourscen.SCENARIOS))
    if unknown:
        parser.error(f"unknown broker or scenario: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    loadgen.raise_fd_limit()  # inherited by the brokers and the load generator
    install(args.brokers)
    ours = BROKER_TYPES["ours"]
    ours.extra = tuple(args.ours_args.split())
    if args.log_parity == "off":
        LOG_PARITY.clear()
    if args.ours_rev:
        log(f"our broker from {args.ours_rev}: {ours.use_revision(args.ours_rev)}")
    outdir = RESULTS / time.strftime("%Y%m%d-%H%M%S")
    outdir.mkdir(parents=True, exist_ok=True)
    info = machine(args.brokers)
    info.update(quick=args.quick, runs=args.runs, started=time.strftime("%Y-%m-%d %H:%M"),
                command=" ".join(["python bench/compare.py", *(argv or sys.argv[1:])]))
    log(f"results in {outdir / 'results.jsonl'}")
    t0 = time.monotonic()
    lines: list[dict] = []
    try:
        with open(outdir / "results.jsonl", "w") as out:
            def record(line: dict, run: int) -> None:
                line["run"] = run
                lines.append(line)
                out.write(json.dumps(line) + "\n")
                out.flush()
                log(report.summary(line))

            info["background_cpu_pct"] = run_all(args.brokers, args.scenarios, args.runs,
                                                  args.quick, outdir, record)
    except KeyboardInterrupt:
        log("interrupted: stopping brokers; the report covers what finished")
    finally:
        stop_all()
        if ours.source:
            shutil.rmtree(ours.source, ignore_errors=True)
    info["duration_min"] = round((time.monotonic() - t0) / 60, 1)
    (outdir / "machine.json").write_text(json.dumps(info, indent=2))
    write_docs = not (args.quick or args.no_docs)
    section = report.markdown(lines, info, args.brokers, IMG if write_docs else outdir)
    print(section)
    if report.NO_PLOTS in section:
        log("plots skipped: matplotlib is not installed (optional; nothing was installed)")
    if write_docs:
        report.write_section(DOC, section)
        log(f"wrote {DOC.relative_to(ROOT)} and {IMG.relative_to(ROOT)}/bench-*.png")
    log(f"done in {info['duration_min']} min")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
