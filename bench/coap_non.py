"""CoAP NON POSTs next to MQTT QoS 0, through one broker into one MQTT subscriber, in
one run (issue 19's target: "CoAP NON publish at least 0.5 x MQTT QoS 0").

Starts ``twistd -n mqttbroker`` (this checkout, and with ``--checkout DIR`` a second
one from another tree, for a before/after) with an MQTT and a CoAP/UDP listener on
loopback (``maxRequestRate=0``: one address sends them all), one MQTT subscriber
process on ``bench/t`` that counts what arrives, and for each scenario one sender
process, in C (bench/sendblast.c, built here with gcc and called through ctypes) so
that the sender is not the limit:

- ``coap-non``: NON POSTs of ``/ps/bench/t?qos=0`` from one UDP socket, unpaced
  (``sendmmsg``, 64 a call): UDP drops what the broker does not read in time, so the
  figure is what reached the subscriber;
- ``coap-non-nr``: the same with No-Response 26 (RFC 7967: no 2.xx/4.xx/5.xx answer
  wanted), which spares the broker the answer datagram;
- ``mqtt-each``: QoS 0 PUBLISHes from one TCP connection, one PUBLISH per ``send()``;
- ``mqtt-batch``: the same in 64 KiB ``send()`` calls, as bench/loadgen.py's fan-in.

Each scenario sends for ``--warmup`` plus ``--seconds`` seconds; over the last
``--seconds`` it reports the messages the subscriber got per second, and the CPU
(utime+stime from /proc) of the broker, the sender and the subscriber per message
delivered (sender: per message sent) and as a share of one core.  Scenarios are
interleaved within each of ``--rounds`` rounds; medians and ranges, and the ratios
within each round, are printed at the end.  Then ``--paced`` runs ``coap-non`` paced
at a fraction of its unpaced median and counts what UDP lost: the rate with no loss.

    python bench/coap_non.py --rounds 5 --seconds 3
    python bench/coap_non.py --rounds 5 --checkout /tmp/main-tree   # before/after

``--in-process N`` measures instead the listener's own cost, without sockets or other
processes: N NON POSTs handed to ``CoapServer.datagramReceived`` of a broker whose one
subscriber is a virtual session (a sink that counts), process CPU time per POST, each
tree in its own process, interleaved over the rounds.
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from coap_publish import free_port, mqtt_client, post, start_broker  # noqa: E402

from mqtt_twisted.coap import message as m  # noqa: E402
from mqtt_twisted.coap import options as opt  # noqa: E402
from mqtt_twisted.loadgen import wire as mqttwire  # noqa: E402
from mqtt_twisted.loadgen.workers import broker_cpu_s  # noqa: E402

TOPIC = "bench/t"
PAYLOAD = b"x" * 64
SCENARIOS = ("coap-non", "coap-non-nr", "mqtt-each", "mqtt-batch")
#: RFC 7967 No-Response: 2 | 8 | 16, no answer of any class.
NO_RESPONSE_ALL = 26


def build_sender(workdir: str) -> ctypes.CDLL:
    """bench/sendblast.c as a shared library (gcc -O2)."""
    out = os.path.join(workdir, "sendblast.so")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", out,
                    str(ROOT / "bench" / "sendblast.c")], check=True)
    lib = ctypes.CDLL(out)
    counter, flag = ctypes.POINTER(ctypes.c_longlong), ctypes.POINTER(ctypes.c_int)
    lib.blast_udp.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                              ctypes.c_double, ctypes.c_int, counter, flag]
    lib.blast_tcp.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                              ctypes.c_double, counter, flag]
    lib.blast_udp.restype = lib.blast_tcp.restype = ctypes.c_longlong
    return lib


def non_post(no_response: bool) -> bytes:
    """The NON POST every ``coap-non`` datagram copies (the sender patches its id)."""
    data = post(0, TOPIC, 0, PAYLOAD, m.NON)
    if not no_response:
        return data
    msg = m.decode(data)
    msg.add(opt.NO_RESPONSE, NO_RESPONSE_ALL)
    return m.encode(msg)


def proc_cpu(pid: int) -> float:
    return broker_cpu_s(pid) or 0.0


def proc_stime(pid: int) -> float:
    """A process's CPU time in the kernel (stime), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[12]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


# --- the processes ---------------------------------------------------------------------------


def subscriber(port: int, count: object, ready: object) -> None:
    """Counts the PUBLISH packets on ``bench/t`` into ``count`` (a shared integer)."""
    sock = mqtt_client(port, "bench-sub")
    sock.sendall(mqttwire.subscribe(1, [TOPIC], 0))
    sock.recv(5)
    ready.set()  # type: ignore[attr-defined]
    buf = bytearray()
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return
        buf += data
        n, used = mqttwire.count_publishes(buf)
        del buf[:used]
        count.value += n  # type: ignore[attr-defined]


def sender(lib_path: str, scenario: str, mqtt_port: int, coap_port: int, rate: float,
           sent: object, stop: object) -> None:
    """One scenario's sender, until ``stop`` is set (the C loop releases the GIL)."""
    lib = ctypes.CDLL(lib_path)
    for f in (lib.blast_udp, lib.blast_tcp):
        f.restype = ctypes.c_longlong
    if scenario.startswith("coap"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.connect(("127.0.0.1", coap_port))
        sock.setblocking(False)
        data = non_post(scenario.endswith("-nr"))
        result = lib.blast_udp(sock.fileno(), data, len(data), 64, ctypes.c_double(rate),
                               int.from_bytes(os.urandom(2), "big"), ctypes.byref(sent),
                               ctypes.byref(stop))
    else:
        sock = mqtt_client(mqtt_port, f"bench-pub-{os.getpid()}")
        sock.setblocking(False)
        one = mqttwire.publish(TOPIC, PAYLOAD)
        data = one if scenario == "mqtt-each" else one * ((64 << 10) // len(one))
        result = lib.blast_tcp(sock.fileno(), data, len(data), len(one),
                               ctypes.c_double(rate), ctypes.byref(sent), ctypes.byref(stop))
    if result < 0:
        raise SystemExit(f"{scenario}: send failed, errno {-result}")
    sock.close()


# --- one scenario ----------------------------------------------------------------------------


class Broker:
    """One broker under test, with its subscriber process."""

    def __init__(self, name: str, root: Path, workdir: str) -> None:
        self.name = name
        self.mqtt_port, self.coap_port = free_port(), free_port(socket.SOCK_DGRAM)
        os.makedirs(workdir, exist_ok=True)
        self.proc = start_broker(workdir, self.mqtt_port,
                                 f"{self.coap_port}:interface=127.0.0.1:maxRequestRate=0",
                                 root, ("--max-queued", "100000", "--max-queued-bytes", "0"))
        self.count = mp.RawValue(ctypes.c_longlong, 0)
        ready = mp.Event()
        self.sub = mp.Process(target=subscriber, args=(self.mqtt_port, self.count, ready),
                              daemon=True)
        self.sub.start()
        if not ready.wait(10):
            raise SystemExit(f"{name}: the subscriber did not subscribe")

    def settle(self, quiet: float = 0.3, limit: float = 20.0) -> None:
        """Wait until the subscriber has had nothing for ``quiet`` seconds."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            before = self.count.value
            time.sleep(quiet)
            if self.count.value == before:
                return

    def close(self) -> None:
        self.sub.terminate()
        self.proc.terminate()
        self.proc.wait(10)


def run(broker: Broker, lib_path: str, scenario: str, warmup: float, seconds: float,
        rate: float = 0.0) -> dict[str, float]:
    """One scenario on ``broker``: rates and CPU per message over the measured window,
    and what was lost over the whole run."""
    broker.settle()
    sent = mp.RawValue(ctypes.c_longlong, 0)
    stop = mp.RawValue(ctypes.c_int, 0)
    base = broker.count.value
    proc = mp.Process(target=sender, args=(lib_path, scenario, broker.mqtt_port,
                                           broker.coap_port, rate, sent, stop), daemon=True)
    proc.start()
    time.sleep(warmup)

    def sample() -> tuple[float, ...]:
        return (time.perf_counter(), broker.count.value, sent.value, proc_cpu(broker.proc.pid),
                proc_cpu(proc.pid or 0), proc_cpu(broker.sub.pid or 0),
                proc_stime(broker.proc.pid))

    a = sample()
    time.sleep(seconds)
    b = sample()
    stop.value = 1
    proc.join(10)
    if proc.exitcode != 0:
        raise SystemExit(f"{scenario}: the sender failed ({proc.exitcode})")
    broker.settle()
    wall, got, put = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    return {"rate": got / wall, "sent_rate": put / wall,
            "broker_us": (b[3] - a[3]) / max(got, 1) * 1e6,
            "sender_us": (b[4] - a[4]) / max(put, 1) * 1e6,
            "broker_core": (b[3] - a[3]) / wall, "sender_core": (b[4] - a[4]) / wall,
            "sub_core": (b[5] - a[5]) / wall,
            "broker_sys": (b[6] - a[6]) / max(b[3] - a[3], 1e-9),
            "sent": sent.value, "lost": sent.value - (broker.count.value - base)}


# --- in process --------------------------------------------------------------------------

IN_PROCESS = """
import sys, time
sys.path.insert(0, sys.argv[1])
from twisted.internet import reactor
from zope.interface import implementer
from mqtt_twisted.adapters._coaprequests import CoapConfig
from mqtt_twisted.adapters.coap import CoapServer
from mqtt_twisted.gateway import Gateway
from mqtt_twisted.interfaces import IMessageSink
from mqtt_twisted.service import BrokerService
from mqtt_twisted.store.memory import MemoryStore

@implementer(IMessageSink)
class Sink:
    got = 0
    def deliver(self, message, qos):
        self.got += 1

class Dropped:
    def write(self, data, addr=None):
        pass

def main():
    service = BrokerService(reactor, MemoryStore(reactor), None, None, None, 10.0, 0)
    service.startService()
    gateway, sink = Gateway(service.broker), Sink()
    gateway.openSession("sub", sink, True)
    gateway.subscribe("sub", "bench/t", 0)
    server = CoapServer(reactor, gateway, CoapConfig(max_request_rate=0))
    server.transport = Dropped()
    n = int(sys.argv[2])
    datagrams = [bytes.fromhex(h) for h in sys.argv[3:]]
    for data in datagrams:
        batch = [data[:2] + (i & 0xFFFF).to_bytes(2, "big") + data[4:] for i in range(n)]
        server.dedup.seen.clear()
        before, start = sink.got, time.process_time()
        for d in batch:
            server.datagramReceived(d, ("127.0.0.1", 40000))
        print((time.process_time() - start) / n * 1e6, sink.got - before)
    reactor.stop()

reactor.callWhenRunning(main)
reactor.run()
"""


def in_process(trees: list[tuple[str, Path]], rounds: int, count: int) -> None:
    """Process CPU per NON POST (without and with No-Response) in each tree."""
    datagrams = [non_post(False).hex(), non_post(True).hex()]
    got: dict[str, list[list[float]]] = {name: [[], []] for name, _ in trees}
    for r in range(rounds):
        for name, root in trees if r % 2 == 0 else trees[::-1]:
            out = subprocess.run([sys.executable, "-c", IN_PROCESS, str(root), str(count),
                                  *datagrams], capture_output=True, text=True, check=True,
                                 env=dict(os.environ, PYTHONPATH=str(root)))
            for i, line in enumerate(out.stdout.split("\n")[:2]):
                us, delivered = line.split()
                if int(delivered) != count:
                    raise SystemExit(f"{name}: {delivered} of {count} delivered")
                got[name][i].append(float(us))
    for name, (plain, quiet) in got.items():
        print(f"[{name}] in process, us per NON POST over {rounds} rounds: "
              f"{spread(plain, '.2f')}; with No-Response {spread(quiet, '.2f')}")


# --- the report ------------------------------------------------------------------------------


def spread(values: list[float], fmt: str = ",.0f") -> str:
    med = statistics.median(values)
    return f"{med:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def report(name: str, results: dict[str, list[dict[str, float]]]) -> None:
    print(f"\n[{name}] medians (range) over {len(next(iter(results.values())))} rounds")
    print(f"{'scenario':12} {'delivered/s':>24} {'broker us/msg':>18} {'broker core':>12} "
          f"{'kernel':>7} {'sender us/msg':>15} {'sender core':>12} {'sub core':>9} "
          f"{'lost':>9}")
    for scenario, rows in results.items():
        def col(key: str, rows: list[dict[str, float]] = rows) -> list[float]:
            return [r[key] for r in rows]

        lost = sum(r["lost"] for r in rows) / max(1, sum(r["sent"] for r in rows))
        print(f"{scenario:12} {spread(col('rate')):>24} {spread(col('broker_us'), '.2f'):>18} "
              f"{statistics.median(col('broker_core')):>12.2f} "
              f"{statistics.median(col('broker_sys')):>7.0%} "
              f"{statistics.median(col('sender_us')):>15.2f} "
              f"{statistics.median(col('sender_core')):>12.2f} "
              f"{statistics.median(col('sub_core')):>9.2f} {lost:>9.1%}")
    coap = [s for s in ("coap-non", "coap-non-nr") if s in results]
    for c in coap:
        for mq in ("mqtt-each", "mqtt-batch"):
            if mq not in results:
                continue
            by_cpu = [q["broker_us"] / r["broker_us"] for r, q in zip(results[c], results[mq])]
            by_rate = [r["rate"] / q["rate"] for r, q in zip(results[c], results[mq])]
            print(f"  {c} / {mq}: by broker CPU per message {spread(by_cpu, '.3f')}, "
                  f"by delivered rate {spread(by_rate, '.3f')}")


def profile(broker: Broker, lib_path: str, scenario: str, args: argparse.Namespace) -> None:
    """py-spy (sampling, --nonblocking) on the broker while ``scenario`` runs."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    seconds = args.warmup + args.seconds + 1
    cmd = [spy, "record", "--nonblocking", "--pid", str(broker.proc.pid), "--duration",
           str(int(seconds + 1)), "--rate", "250", *(["--gil"] if args.gil else [])]
    recorders = [subprocess.Popen([*cmd, "--format", fmt, "--output", out],
                                  stdout=subprocess.DEVNULL)
                 for fmt, out in (("flamegraph", f"{args.profile}.svg"),
                                  ("raw", f"{args.profile}.txt"))]
    time.sleep(0.5)
    row = run(broker, lib_path, scenario, args.warmup + 0.5, args.seconds)
    print(f"{scenario}: {row['rate']:,.0f}/s, broker {row['broker_us']:.2f} us/msg "
          f"({row['broker_core']:.2f} core)")
    for r in recorders:
        r.wait(30)
    print(f"wrote {args.profile}.svg and {args.profile}.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured per scenario")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--checkout", type=Path, action="append", default=[],
                        help="another tree whose broker is measured too, interleaved")
    parser.add_argument("--paced", type=float, nargs="*", default=[0.5, 0.8],
                        help="fractions of the unpaced coap-non median to pace it at")
    parser.add_argument("--in-process", type=int, metavar="N", help="instead: N NON POSTs "
                        "handed to the listener in process, per tree and round")
    parser.add_argument("--gil", action="store_true", help="with --profile: only samples "
                        "holding the GIL (Python's own time, no system calls)")
    parser.add_argument("--profile", metavar="OUT", help="instead: py-spy record the "
                        "broker (this tree) under the first scenario for --seconds; writes "
                        "OUT.svg and OUT.txt (collapsed stacks)")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    trees = [("this", ROOT)] + [(str(p), p.resolve()) for p in args.checkout]
    print(f"python {sys.version.split()[0]}, nproc {os.cpu_count()}, 64-byte payloads, "
          f"load average {open('/proc/loadavg').read().split()[:3]}")
    if args.in_process:
        in_process(trees, args.rounds, args.in_process)
        return
    with tempfile.TemporaryDirectory() as tmp:
        build_sender(tmp)
        lib_path = os.path.join(tmp, "sendblast.so")
        brokers = [Broker(name, root, os.path.join(tmp, f"b{i}"))
                   for i, (name, root) in enumerate(trees)]
        if args.profile:
            try:
                profile(brokers[0], lib_path, scenarios[0], args)
            finally:
                brokers[0].close()
            return
        results = {b.name: {s: [] for s in scenarios} for b in brokers}
        try:
            for r in range(args.rounds):
                order = scenarios[r % len(scenarios):] + scenarios[:r % len(scenarios)]
                for scenario in order:
                    for broker in brokers if r % 2 == 0 else brokers[::-1]:
                        row = run(broker, lib_path, scenario, args.warmup, args.seconds)
                        results[broker.name][scenario].append(row)
                        print(f"round {r + 1} {broker.name} {scenario}: {row['rate']:,.0f}/s "
                              f"broker {row['broker_us']:.2f} us/msg "
                              f"({row['broker_core']:.2f} core, "
                              f"{row['broker_sys']:.0%} in the kernel), sender "
                              f"{row['sender_core']:.2f} core, lost {row['lost']:,}",
                              flush=True)
            for broker in brokers:
                report(broker.name, results[broker.name])
            if "coap-non" in scenarios:
                for fraction in args.paced:
                    for broker in brokers:
                        target = fraction * statistics.median(
                            row["rate"] for row in results[broker.name]["coap-non"])
                        row = run(broker, lib_path, "coap-non", args.warmup, args.seconds,
                                  target)
                        print(f"[{broker.name}] coap-non paced at {target:,.0f}/s "
                              f"({fraction:.0%} of unpaced): {row['rate']:,.0f}/s delivered, "
                              f"lost {row['lost']:,} of {row['sent']:,} "
                              f"({row['lost'] / max(1, row['sent']):.2%}), broker "
                              f"{row['broker_us']:.2f} us/msg ({row['broker_core']:.2f} core)")
        finally:
            for broker in brokers:
                broker.close()
    print(f"load average at the end {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
