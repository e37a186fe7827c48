"""Cross-node throughput of a cluster against one node (issue 16).

Starts a redis-server and ``twistd -n mqttbroker --store redis://...`` nodes on free
ports of 127.0.0.1, then per scenario one raw-socket publisher and one subscriber
(pre-encoded packets from ``mqtt_twisted.loadgen.wire``): QoS 0 (the publisher keeps at most
``--lag`` messages ahead of the subscriber, so nothing is dropped for overload) and
QoS 1 (a window of ``--window`` unacknowledged PUBLISHes; the subscriber acknowledges
each one).  Scenarios: ``single`` (publisher and subscriber on one node, no
``--cluster``, the same Redis store), ``local`` (the same on one node with
``--cluster``: with ``--share``, a share group's clean member served through the
node's own stream), ``cross`` (publisher on node A, subscriber on
node B of a two-node cluster), ``spread`` (1, 2 or 3 clustered nodes, a QoS 1
publisher and a subscriber on each; every publisher spreads its messages over every
subscriber's topic, so (n-1)/n of them cross nodes).  Prints one JSON line per run: messages per second at
the subscriber and the CPU seconds each process (nodes, Redis) spent per message.

    python bench/cluster.py [--count 20000] [--qos 0 --qos 1] [--scenario cross ...]
    python bench/cluster.py --scenario spread [--nodes 1 --nodes 2 --nodes 3]
    python bench/cluster.py --share   # the subscriber is a $share group's only member
    python bench/cluster.py --scenario local --share --qos 1   # ... on the publisher's node
    python bench/cluster.py --qos 1 --scenario cross --wait 1   # a replica, ?wait=1
    python bench/cluster.py --scenario spread --calls   # Python calls per message
    python bench/cluster.py --scenario spread --count 6000 --opcodes   # bytecodes, by function
    python bench/cluster.py --scenario spread --syscalls   # system calls, by kind

Every spread run also prints what Redis counted (``INFO commandstats``): the ``XADD``
entries, stream reads and ``XACK`` commands, and the crossing messages per entry and per
read, the batch sizes the per-batch cost is divided by.  ``--calls`` runs each node
under ``bench/node_calls.py`` (``cProfile``'s call counts over the run) and prints
each node's Python calls per message, by module group: counts that the machine's load
does not change (their batches are those of the counted run; counting slows a node).
``--callgrind`` runs each node under ``valgrind --tool=callgrind --instr-atstart=no``
and switches the counting on (``callgrind_control -i on``) only while the publishers
run: the instructions per message of real nodes, user space only (not the kernel's),
about 50 times slower, so with a small ``--count`` (6,000: a minute and a half for
1, 2 and 3 nodes); the batches are those of the slowed run (Redis prints them).
``--opcodes`` counts each node's bytecodes instead of its calls, per function
(``NODE_CALLS_OPCODES=1``: ``sys.settrace`` opcode events; about 30 times slower): where
the instructions a Python function's own lines cost go, which neither the call counts
nor callgrind, below the interpreter, can say.
Every spread run prints the nodes' CPU per message twice: from before the clients
connect (``node_cpu_us_per_msg``, as sessions 5-11 reported it) and from the
publishers' start (``node_cpu_run_us_per_msg``).
``--syscalls`` counts the nodes' system calls by kind while the publishers run
(``bench/syscalls.py``); ``bench/spread_linear.py`` turns both counts into issue 16's
fraction of linear scaling per node.
``BENCH_KEEP=1`` keeps each run's directory (node logs, call counts) in /tmp.

On a 2-core machine the two nodes, Redis and this tool share the cores: read the
CPU per message, not only the rate.  Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_calls import per_message as calls  # (bench/ is not a package)
from syscalls import SyscallCounter

from mqtt_twisted.loadgen import wire as w

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    return sum(user_system(pid))


def user_system(pid: int) -> tuple[float, float]:
    """CPU seconds a process has spent in user space and in the kernel."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def wait_port(port: int, proc: subprocess.Popen, log: Path, patience: float = 30) -> None:
    deadline = time.monotonic() + patience
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"process exited:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"port {port} never opened") from None
            time.sleep(0.05)


class Cluster:
    """redis-server and ``nodes`` twistd processes (clustered when more than one)."""

    def __init__(self, nodes: int, clustered: bool, wait: int = 0,
                 calls: bool = False, callgrind: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mqtt-cluster-bench-"))
        #: --calls: each node's call counts are written here (bench/node_calls.py).
        self.calls = [self.dir / f"calls{i}.json" for i in range(nodes)] if calls else []
        #: --callgrind: each node's callgrind output, written when it stops.
        self.callgrind = ([self.dir / f"callgrind{i}.out" for i in range(nodes)]
                          if callgrind else [])
        self.redis_port = free_port()
        self.procs: list[subprocess.Popen] = []
        redis_log = self.dir / "redis.log"
        self.redis = subprocess.Popen(
            [shutil.which("redis-server") or "/usr/bin/redis-server", "--port",
             str(self.redis_port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=open(redis_log, "wb"), stderr=subprocess.STDOUT)
        wait_port(self.redis_port, self.redis, redis_log)
        # --wait N: N replicas, and the nodes' writes wait for them (?wait=N, WAIT).
        self.replicas: list[subprocess.Popen] = []
        for r in range(wait):
            port = free_port()
            log = self.dir / f"replica{r}.log"
            replica_dir = self.dir / f"replica{r}"
            replica_dir.mkdir()
            proc = subprocess.Popen(
                [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
                 "--bind", HOST, "--save", "", "--appendonly", "no", "--dir",
                 str(replica_dir), "--replicaof", HOST, str(self.redis_port)],
                stdout=open(log, "wb"), stderr=subprocess.STDOUT)
            wait_port(port, proc, log)
            self.replicas.append(proc)
        while wait and subprocess.run(
                [shutil.which("redis-cli") or "/usr/bin/redis-cli", "-p", str(self.redis_port),
                 "INFO", "replication"], capture_output=True, text=True,
                ).stdout.count("state=online") < wait:
            time.sleep(0.1)
        query = f"?wait={wait}" if wait else ""
        twistd = Path(sys.executable).with_name("twistd")
        if not twistd.exists():  # a venv made with --system-site-packages has none of its own
            twistd = Path(shutil.which("twistd") or twistd)
        self.ports: list[int] = []
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for i in range(nodes):
            port = free_port()
            log = self.dir / f"node{i}.log"
            args = [str(twistd), "-n", "--pidfile=", "mqttbroker", "--listen",
                    f"tcp:{port}:interface={HOST}", "--sys-interval", "0", "--store",
                    f"redis://{HOST}:{self.redis_port}/0{query}"]
            if clustered:
                args += ["--cluster", f"n{i}"]
            if calls:
                # Counting slows a node: a subscriber's queue must not overflow meanwhile
                # (the generator does not wait for deliveries), or fewer are counted.
                args += ["--max-queued", "1000000"]
                args = [sys.executable, str(ROOT / "bench" / "node_calls.py"),
                        str(self.calls[i]), *args]
            elif callgrind:
                # Instrumented only while the publishers run (``instrument``): the start
                # runs at valgrind's uninstrumented speed, the run about 50 times slower.
                args += ["--max-queued", "1000000"]
                args = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                        f"--callgrind-out-file={self.callgrind[i]}", *args]
            proc = subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                    env=env, cwd=self.dir)
            wait_port(port, proc, log, 300 if callgrind else 30)
            self.procs.append(proc)
            self.ports.append(port)

    def redis_cli(self, *args: str) -> str:
        return subprocess.run(
            [shutil.which("redis-cli") or "/usr/bin/redis-cli", "-p", str(self.redis_port),
             *args], capture_output=True, text=True, check=True).stdout

    def command_counts(self) -> dict[str, int]:
        """Commands Redis ran since the last call, by name (INFO commandstats)."""
        counts = {}
        for line in self.redis_cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[len("cmdstat_"):].split(":", 1)
                counts[name] = int(rest.split("calls=", 1)[1].split(",", 1)[0])
        for line in self.redis_cli("INFO", "stats").splitlines():
            if line.startswith(("total_net_input_bytes:", "total_net_output_bytes:")):
                name, value = line.split(":", 1)
                counts[name] = int(value)
        self.redis_cli("CONFIG", "RESETSTAT")
        return counts

    def count_calls(self, on: bool) -> None:
        """--calls: start (``on``) or stop the nodes' counting."""
        for proc in self.procs:
            proc.send_signal(signal.SIGUSR1 if on else signal.SIGUSR2)

    def instrument(self, on: bool) -> None:
        """--callgrind: start (``on``) or stop counting the nodes' instructions."""
        for proc in self.procs:
            subprocess.run(["callgrind_control", "-i", "on" if on else "off",
                            str(proc.pid)], capture_output=True, check=True)

    def instructions(self) -> list[int]:
        """--callgrind: each node's instructions counted (once the nodes stopped)."""
        counts = []
        for path in self.callgrind:
            totals = [line for line in path.read_text(errors="replace").splitlines()
                      if line.startswith(("totals:", "summary:"))]
            counts.append(int(totals[-1].split()[1]) if totals else 0)
        return counts

    def call_counts(self) -> list[dict]:
        """--calls: each node's counts (bench/node_calls.py), once written."""
        deadline = time.monotonic() + 30
        while not all(path.exists() for path in self.calls):
            if time.monotonic() > deadline:
                raise SystemExit("a node never wrote its call counts")
            time.sleep(0.1)
        return [json.loads(path.read_text()) for path in self.calls]

    def cpu(self) -> list[float]:
        return [cpu_seconds(p.pid) for p in (*self.procs, self.redis)]

    def system(self) -> float:
        """The nodes' CPU seconds in the kernel so far."""
        return sum(user_system(p.pid)[1] for p in self.procs)

    def switches(self, kind: tuple[str, ...] = ("voluntary_ctxt", "nonvoluntary_ctxt")
                 ) -> int:
        """The nodes' context switches so far (voluntary: a node waiting for work,
        woken for each batch; involuntary: preempted by other processes)."""
        total = 0
        for proc in self.procs:
            with open(f"/proc/{proc.pid}/status") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith(kind))
        return total

    def halt(self) -> None:
        """Stop the processes (a node writes its --callgrind file then)."""
        for proc in (*self.procs, self.redis, *self.replicas):
            proc.terminate()
        for proc in (*self.procs, self.redis, *self.replicas):
            try:
                proc.wait(120 if self.callgrind else 10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def stop(self) -> None:
        self.halt()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


def client(port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(w.connect(client_id))
    got = b""
    while len(got) < w.CONNACK_LEN:
        got += sock.recv(w.CONNACK_LEN - len(got))
    return sock


class Subscriber(threading.Thread):
    """Counts PUBLISHes (acknowledging QoS 1 ones) until ``count`` or idle."""

    def __init__(self, sock: socket.socket, count: int, qos: int) -> None:
        super().__init__(daemon=True)
        self.sock, self.count, self.qos = sock, count, qos
        self.received = 0
        self.done_at = 0.0

    def run(self) -> None:
        buf = bytearray()
        self.sock.settimeout(5)
        while self.received < self.count:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                break
            if not data:
                break
            buf += data
            packets, rest = w.split(buf)
            acks = []
            for first, body, _end in packets:
                if first >> 4 == w.PUBLISH:
                    self.received += 1
                    if first & 0x06:
                        pid_at, _ = w.publish_parts(buf, first, body)
                        acks.append(w.ack(w.PUBACK, bytes(buf[pid_at:pid_at + 2])))
            del buf[:rest]
            if acks:
                self.sock.sendall(b"".join(acks))
        self.done_at = time.perf_counter()


def run(pub_port: int, sub_port: int, qos: int, count: int, lag: int, window: int,
        tag: str, share: bool = False) -> float:
    """Messages per second at the subscriber (a share group's only member: ``share``)."""
    sub = client(sub_port, f"bsub-{tag}")
    sub.sendall(w.subscribe(1, ["$share/bench/bench/t" if share else "bench/t"], qos))
    time.sleep(0.2)
    sub.recv(5)  # SUBACK
    pub = client(pub_port, f"bpub-{tag}")
    # Until the route has reached the publisher's node: probes at QoS 0.
    probe = w.publish("bench/t", b"probe")
    sub.settimeout(0.2)
    while True:
        pub.sendall(probe)
        try:
            if sub.recv(1 << 16):
                break
        except TimeoutError:
            pass
    time.sleep(0.3)
    sub.settimeout(0.3)
    try:
        while sub.recv(1 << 16):
            pass
    except TimeoutError:
        pass
    body = w.payload(64)
    counter = Subscriber(sub, count, qos)
    counter.start()
    start = time.perf_counter()
    if qos == 0:
        packet = w.publish("bench/t", body)
        sent = 0
        while sent < count:
            n = min(500, count - sent)
            pub.sendall(packet * n)
            sent += n
            while sent - counter.received > lag and counter.is_alive():
                time.sleep(0.0005)
    else:
        pub.settimeout(10)
        inflight = 0
        sent = 0
        buf = bytearray()
        while sent < count or inflight:
            batch = []
            while sent < count and inflight < window:
                batch.append(w.publish("bench/t", body, 1, sent % 65535 + 1))
                sent += 1
                inflight += 1
            if batch:
                pub.sendall(b"".join(batch))
            buf += pub.recv(1 << 16)
            packets, rest = w.split(buf)
            inflight -= sum(1 for first, _, _ in packets if first >> 4 == w.PUBACK)
            del buf[:rest]
    counter.join(30)
    elapsed = (counter.done_at or time.perf_counter()) - start
    pub.close()
    sub.close()
    if counter.received < count:
        print(f"# {tag}: only {counter.received} of {count} delivered", file=sys.stderr)
    return counter.received / elapsed


class Publisher(threading.Thread):
    """QoS 1 publisher keeping ``window`` PUBLISHes unacknowledged, its messages spread
    round-robin over ``topics``."""

    def __init__(self, sock: socket.socket, topics: list[str], count: int,
                 window: int) -> None:
        super().__init__(daemon=True)
        self.sock, self.count, self.window = sock, count, window
        body = w.payload(64)
        self.packets = [[w.publish(t, body, 1, pid) for pid in range(1, 65536)]
                        for t in topics]

    def run(self) -> None:
        sock, packets = self.sock, self.packets
        sock.settimeout(30)
        inflight = sent = 0
        buf = bytearray()
        while sent < self.count or inflight:
            batch = []
            while sent < self.count and inflight < self.window:
                batch.append(packets[sent % len(packets)][sent % 65535])
                sent += 1
                inflight += 1
            if batch:
                sock.sendall(b"".join(batch))
            buf += sock.recv(1 << 16)
            found, rest = w.split(buf)
            inflight -= sum(1 for first, _, _ in found if first >> 4 == w.PUBACK)
            del buf[:rest]


def spread(cluster: Cluster, count: int, window: int,
           start_hook: Any = None) -> tuple[float, int, int]:
    """n nodes, a publisher and a subscriber on each: subscriber j takes topic
    spread/j, every publisher spreads its messages over all the topics, so a fraction
    (n-1)/n of them cross nodes.  Messages per second over all subscribers, how many
    messages (``count`` rounded down to a multiple of n * n) and how many were
    delivered (fewer when a subscriber fell so far behind that its queue overflowed:
    then the run's CPU figures are not comparable)."""
    n = len(cluster.ports)
    count -= count % (n * n)  # every subscriber gets the same number
    subs = []
    for j, port in enumerate(cluster.ports):
        sock = client(port, f"ssub-{j}")
        sock.sendall(w.subscribe(1, [f"spread/{j}"], 1))
        subs.append(sock)
    time.sleep(1.5)  # the routes reach every node
    for sock in subs:
        sock.settimeout(2)
        sock.recv(5)  # SUBACK
    topics = [f"spread/{j}" for j in range(n)]
    per_publisher = count // n  # each publisher: count / n messages, (count / n^2) per topic
    counters = [Subscriber(sock, per_publisher, 1) for sock in subs]
    pubs = [Publisher(client(port, f"spub-{i}"), topics, per_publisher, window)
            for i, port in enumerate(cluster.ports)]
    if start_hook is not None:
        start_hook()
    start = time.perf_counter()
    for thread in (*counters, *pubs):
        thread.start()
    for thread in (*pubs, *counters):
        thread.join(120)
    elapsed = max(c.done_at for c in counters) - start
    received = sum(c.received for c in counters)
    if received < per_publisher * n:
        print(f"# spread {n}: only {received} of {per_publisher * n} delivered",
              file=sys.stderr)
    for sock in subs:
        sock.close()
    return received / elapsed, count, received


def batches(commands: dict[str, int], crossing: int) -> dict[str, Any]:
    """What Redis counted in a spread run, and the crossing messages per stream entry
    (``XADD``) and per stream read (``XREADGROUP``)."""
    xadd = commands.get("xadd", 0)
    reads = commands.get("xreadgroup", 0)
    return {
        "redis_commands": {k: commands.get(k, 0) for k in
                           ("xadd", "xreadgroup", "xack", "multi", "exec", "publish",
                            "spublish")},
        "msgs_per_entry": round(crossing / xadd, 1) if xadd else None,
        "msgs_per_read": round(crossing / reads, 1) if reads else None,
        # What the nodes' traffic with Redis costs in bytes, the kernel's copying.
        "redis_bytes_in_per_crossing_msg":
            round(commands.get("total_net_input_bytes", 0) / crossing, 1) if crossing else None,
        "redis_bytes_out_per_crossing_msg":
            round(commands.get("total_net_output_bytes", 0) / crossing, 1) if crossing else None,
    }


def spread_run(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """One spread run of ``n`` nodes, and what it measured.  ``node_cpu_us_per_msg``
    counts the nodes' CPU from before the clients connect (as sessions 5-11 did):
    the start (connections, subscriptions, routes, 1.5 s of waiting for them) too;
    ``node_cpu_run_us_per_msg`` only from the publishers' start to the last delivery
    (and ``node_start_cpu_ms`` what the start cost, all nodes)."""
    cluster = Cluster(n, True, calls=args.calls, callgrind=args.callgrind)
    mark: dict[str, Any] = {}
    counter: SyscallCounter | None = None
    try:
        before = cluster.cpu()
        system = cluster.system()
        switches = cluster.switches()
        preempted = cluster.switches(("nonvoluntary_ctxt",))

        def started() -> None:
            cluster.command_counts()  # from here on
            if args.calls:
                cluster.count_calls(True)
            if args.callgrind:
                cluster.instrument(True)
            if args.syscalls:
                nonlocal counter
                counter = SyscallCounter([p.pid for p in cluster.procs],
                                         cluster.dir / "syscalls.csv")
                time.sleep(0.3)  # perf attached before the first message
            mark.update(cpu=cluster.cpu(), system=cluster.system())

        rate, count, delivered = spread(cluster, args.count, args.window, started)
        after = cluster.cpu()
        if args.callgrind:
            cluster.instrument(False)
        spent = [a - b for a, b in zip(after, before)]
        run = [a - b for a, b in zip(after, mark["cpu"])]
        if args.calls:
            cluster.count_calls(False)
        result = {
            "scenario": "spread", "qos": 1, "nodes": n, "messages": count,
            "delivered": delivered,
            "msgs_per_s": round(rate),
            "node_cpu_us_per_msg": round(sum(spent[:-1]) / count * 1e6, 1),
            "node_cpu_run_us_per_msg": round(sum(run[:-1]) / count * 1e6, 1),
            "node_start_cpu_ms": round((sum(spent[:-1]) - sum(run[:-1])) * 1e3),
            "node_sys_us_per_msg": round((cluster.system() - system) / count * 1e6, 1),
            "node_sys_run_us_per_msg": round((cluster.system() - mark["system"]) / count
                                             * 1e6, 1),
            "redis_cpu_us_per_msg": round(spent[-1] / count * 1e6, 1),
            "node_switches_per_msg": round((cluster.switches() - switches) / count, 3),
            "node_preempted_per_msg": round(
                (cluster.switches(("nonvoluntary_ctxt",)) - preempted) / count, 3),
            **batches(cluster.command_counts(), count - count // n),
        }
        if counter is not None:
            result.update(counter.stop(count))
        if args.calls:
            result.update(calls(cluster.call_counts(), count))
        if args.callgrind:
            cluster.halt()
        if args.callgrind:
            counted = cluster.instructions()
            result["instructions_per_msg"] = round(sum(counted) / count)
            result["instructions_by_node"] = [round(c / count) for c in counted]
            result["callgrind_files"] = [str(path) for path in cluster.callgrind]
        return result
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--qos", type=int, action="append", choices=[0, 1])
    parser.add_argument("--scenario", action="append",
                        choices=["single", "local", "cross", "spread"])
    parser.add_argument("--nodes", type=int, action="append", choices=[1, 2, 3],
                        help="spread: cluster sizes (default 1, 2 and 3)")
    parser.add_argument("--lag", type=int, default=2000, help="QoS 0: most messages ahead")
    parser.add_argument("--window", type=int, default=100, help="QoS 1: PUBLISHes in flight")
    parser.add_argument("--share", action="store_true",
                        help="single/local/cross: the subscriber is a $share group's "
                        "member")
    parser.add_argument("--wait", type=int, default=0,
                        help="start N Redis replicas; writes wait for them (?wait=N)")
    parser.add_argument("--calls", action="store_true",
                        help="spread: count each node's Python calls (bench/node_calls.py)")
    parser.add_argument("--callgrind", action="store_true",
                        help="spread: each node's instructions while the publishers "
                        "run (valgrind; slow: use a small --count; BENCH_KEEP=1 keeps "
                        "the callgrind files)")
    parser.add_argument("--opcodes", action="store_true",
                        help="spread: count each node's bytecodes, by function, instead "
                        "of calls (--calls' counter with NODE_CALLS_OPCODES=1; slow: use a "
                        "small --count; BENCH_KEEP=1 keeps each node's counts)")
    parser.add_argument("--syscalls", action="store_true",
                        help="spread: count the nodes' system calls by kind while the "
                        "publishers run (perf stat on the syscall tracepoints)")
    args = parser.parse_args()
    if args.opcodes:
        args.calls = True
        os.environ["NODE_CALLS_OPCODES"] = "1"
    for scenario in args.scenario or ["single", "cross"]:
        if scenario == "spread":
            for n in args.nodes or [1, 2, 3]:
                print(json.dumps(spread_run(args, n)), flush=True)
            continue
        cluster = Cluster(2 if scenario == "cross" else 1, scenario != "single", args.wait)
        try:
            for qos in args.qos or [0, 1]:
                before = cluster.cpu()
                rate = run(cluster.ports[0], cluster.ports[-1], qos, args.count, args.lag,
                           args.window, f"{scenario}{qos}", args.share)
                spent = [a - b for a, b in zip(cluster.cpu(), before)]
                names = [f"node{i}" for i in range(len(cluster.procs))] + ["redis"]
                print(json.dumps({
                    "scenario": scenario + ("+share" if args.share else ""), "qos": qos,
                    "messages": args.count,
                    "msgs_per_s": round(rate),
                    "cpu_us_per_msg": {n: round(s / args.count * 1e6, 2)
                                       for n, s in zip(names, spent)},
                }), flush=True)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
