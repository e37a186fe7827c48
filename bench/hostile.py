"""Hostile clients against a broker, measured from outside (issue 14, docs/limits.md).

Starts a broker (ours through twistd, or Mosquitto), connects a bystander paho-mqtt
client that publishes to itself every 50 ms, runs one attack at a time over raw
sockets, and reports for each: the bystander's round trips (p50, p99, max, lost),
the broker's RSS before, at its peak during the attack and two seconds after, and
whether the broker refused the attack.

    python bench/hostile.py                      # every attack against ours
    python bench/hostile.py --broker mosquitto   # the same against Mosquitto
    python bench/hostile.py --attack deep_retained --attack alias_amplification

The attacks are the ones of issue 14: deep topics (retained messages and filters of
65,535 levels), huge packets announced before CONNECT, a million user properties in
CONNECT and in PUBLISH, alias-only PUBLISHes toward a subscriber that never reads,
an HTTP request head trickled a byte every 4 s (ours only: ``http=``), and a flood of
8-byte PUBLISHes from four clients, 100 SSE streams that never read (``--sse-streams``),
and a new ``#`` subscriber over 100,000 retained messages of 10 KB (``--retained``);
they are in ``bench/hostile_attacks.py``, this is the harness.

    python bench/hostile.py --attack retained_wildcard -- --max-retained-bytes 0 \
        --max-retained-bytes-per-client 0
    python bench/hostile.py --attack retained_wildcard --broker mosquitto
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # (tests load this file by its path)

import hostile_attacks as attacks  # noqa: E402

# --- the broker and the bystander ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Broker:
    """A broker process on 127.0.0.1: MQTT on ``port``, ours also HTTP on ``http_port``."""

    kind: str = "ours"
    extra: list[str] = field(default_factory=list)
    port: int = 0
    http_port: int = 0
    process: subprocess.Popen | None = None
    directory: str = ""
    #: ``bench/probe.py``'s output file: ours runs under it (turns and collections).
    probe: str = ""

    def start(self) -> Broker:
        self.port, self.http_port = free_port(), free_port()
        self.directory = tempfile.mkdtemp(prefix="hostile-")
        if self.kind == "mosquitto":
            conf = Path(self.directory) / "mosquitto.conf"
            conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
            command = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)]
        else:
            twistd = Path(sys.executable).with_name("twistd")
            head = ([sys.executable, str(ROOT / "bench" / "probe.py"), self.probe]
                    if self.probe else [str(twistd) if twistd.exists() else "twistd"])
            command = [*head, "-n", "--pidfile=",
                       "mqttbroker", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                       "--listen", f"http=tcp:{self.http_port}:interface=127.0.0.1",
                       "--sys-interval", "0", *self.extra]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        # Under the probe, its log and any stacks it dumps (SIGQUIT) go to PROBE.log.
        output = open(self.probe + ".log", "wb") if self.probe else subprocess.DEVNULL
        self.process = subprocess.Popen(command, cwd=self.directory, env=env,
                                        stdout=output, stderr=subprocess.STDOUT)
        if self.probe:
            output.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 60  # a loaded machine: twistd took over 20 s
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen on {self.port}")

    def rss(self) -> int:
        """Resident set size in bytes (Linux)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


class Bystander:
    """A paho client publishing to itself every ``interval`` seconds, timing each trip."""

    def __init__(self, port: int, interval: float = 0.05) -> None:
        import paho.mqtt.client as mqtt

        self.interval = interval
        self.sent: dict[int, float] = {}
        self.rtts: list[float] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bystander")
        self.client.on_message = self._received
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("bystander/ping")
        self.client.loop_start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            with self.lock:
                self.sent[n] = time.perf_counter()
            self.client.publish("bystander/ping", str(n))

    def _received(self, client: object, userdata: object, message: object) -> None:
        now = time.perf_counter()
        n = int(message.payload)  # type: ignore[attr-defined]
        with self.lock:
            sent = self.sent.pop(n, None)
            if sent is not None:
                self.rtts.append(now - sent)

    def reset(self) -> None:
        with self.lock:
            self.rtts = []
            self.sent = {}

    def trips(self) -> int:
        """Round trips timed since the last reset."""
        with self.lock:
            return len(self.rtts)

    def summary(self) -> dict[str, float]:
        """Round trips since the last reset, in ms; a ping still unanswered counts as
        lost (and as its waiting time in max)."""
        now = time.perf_counter()
        with self.lock:
            rtts = sorted(self.rtts)
            waiting = [now - t for t in self.sent.values() if now - t > 1.0]
        if not rtts:
            return {"p50": float("inf"), "p99": float("inf"), "max": float("inf"),
                    "lost": len(waiting)}
        p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
        return {"p50": statistics.median(rtts) * 1000, "p99": p99 * 1000,
                "max": max(rtts + waiting) * 1000, "lost": len(waiting)}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.loop_stop()
        self.client.disconnect()



ATTACKS: dict[str, Callable[[Broker], str]] = {
    f.__name__: f for f in (attacks.deep_retained, attacks.deep_filters, attacks.huge_announced,
                            attacks.connect_properties, attacks.publish_properties,
                            attacks.alias_amplification, attacks.slow_http_head, attacks.flood,
                            attacks.unread_sse, attacks.retained_wildcard)
}


@dataclass
class Result:
    attack: str
    outcome: str
    rtt: dict[str, float]
    rss_before: int
    rss_peak: int
    rss_after: int
    #: ``time.monotonic()`` when the attack started and when its figures were taken.
    window: tuple[float, float] = (0.0, 0.0)

    def line(self) -> str:
        mb = 1 << 20
        return (f"{self.attack:20} {self.outcome:22} bystander p50 {self.rtt['p50']:6.1f} ms "
                f"p99 {self.rtt['p99']:7.1f} ms max {self.rtt['max']:7.1f} ms "
                f"lost {self.rtt['lost']:3.0f}  RSS {self.rss_before / mb:6.1f} -> peak "
                f"{self.rss_peak / mb:7.1f} -> {self.rss_after / mb:6.1f} MB")


#: Round trips the bystander times at least (a p99 of 100 or fewer is their maximum), and how
#: long past the attack it may take to get them.
MIN_TRIPS, MIN_WINDOW = 101, 6.0


def run(broker: Broker, name: str, bystander: Bystander, census_at: float = 0.0) -> Result:
    """One attack, with the RSS sampled every 50 ms and the bystander's trips timed
    (after the attack's ``prepare``, if it has one: what it needs in place first)."""
    prepare = getattr(ATTACKS[name], "prepare", None)
    if prepare is not None:
        prepare(broker)
    time.sleep(0.5)
    before = broker.rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            try:
                peak[0] = max(peak[0], broker.rss())
            except OSError:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    bystander.reset()
    started = time.monotonic()
    census = None
    if census_at and broker.probe and broker.process is not None:
        # The heap by type, at that point of the attack (bench/probe.py, SIGUSR1).
        census = threading.Timer(census_at, os.kill, (broker.process.pid, signal.SIGUSR1))
        census.start()
    outcome = ATTACKS[name](broker)
    if census is not None:
        census.cancel()
    # A p99 needs 100 round trips: an attack refused at once (huge_announced ends in
    # milliseconds) gave one or two, and its "p99" was the first ping's time (89 ms
    # once in CI, 3-21 ms in six runs after).  The bystander goes on until it has
    # them, at most MIN_WINDOW seconds past the attack.
    deadline = time.monotonic() + MIN_WINDOW
    while bystander.trips() < MIN_TRIPS and time.monotonic() < deadline:
        time.sleep(0.05)
    rtt = bystander.summary()
    window = (started, time.monotonic())
    time.sleep(2.0)
    done.set()
    sampler.join()
    return Result(name, outcome, rtt, before, peak[0], broker.rss(), window)


def probe_line(path: str, window: tuple[float, float]) -> str:
    """The broker's own figures over the attack's window (bench/probe.py), CPU ms."""
    import probe

    s = probe.summary(path, *window)
    gc = "  ".join(f"gen{g} {s[f'gc{g}']['n']} x p50 {s[f'gc{g}']['p50']:.1f} max "
                   f"{s[f'gc{g}']['max']:.1f}" for g in range(3))
    stacks = " STOPPED: stacks in .stopped" if os.path.exists(path + ".stopped") else ""
    return (f"{'':20} broker CPU: {s['turns']} turns p50 {s['turn_p50']:.2f} p99 "
            f"{s['turn_p99']:.2f} p999 {s['turn_p999']:.1f} max {s['turn_max']:.1f} ms "
            f"({s['turns_over_20ms']} over 20 ms; without GC p99 {s['work_p99']:.2f} max "
            f"{s['work_max']:.1f} ms, {s['work_over_20ms']} over 20 ms); GC {gc} ms{stacks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=("ours", "mosquitto"), default="ours")
    parser.add_argument("--attack", action="append", choices=sorted(ATTACKS))
    parser.add_argument("--sse-streams", type=int, default=attacks.SSE_STREAMS,
                        help="SSE streams of unread_sse (default %(default)s)")
    parser.add_argument("--retained", type=int, default=attacks.RETAINED,
                        help="retained messages of retained_wildcard (default %(default)s)")
    parser.add_argument("--probe", action="store_true",
                        help="run ours under bench/probe.py: its reactor turns and garbage "
                        "collections in CPU time over the attack")
    parser.add_argument("--census-at", type=float, default=0.0, metavar="SECONDS",
                        help="with --probe: write the heap's objects by type this long "
                        "into the attack (to PROBE.census; the path is printed)")
    parser.add_argument("broker_args", nargs="*", help="extra options for our broker")
    args = parser.parse_args()
    attacks.SSE_STREAMS, attacks.RETAINED = args.sse_streams, args.retained
    for name in args.attack or list(ATTACKS):
        probe = ""
        if args.probe and args.broker == "ours":
            probe = tempfile.mkstemp(prefix=f"probe-{name}-", suffix=".json")[1]
        broker = Broker(args.broker, args.broker_args, probe=probe).start()  # a fresh one each
        try:
            bystander = Bystander(broker.port)
            try:
                result = run(broker, name, bystander, args.census_at)
                print(result.line(), flush=True)
            finally:
                bystander.stop()
        finally:
            broker.stop()
        if probe:
            print(probe_line(probe, result.window), f"[{probe}]", flush=True)


if __name__ == "__main__":
    main()
