"""The cost of durability: QoS 1 throughput and persistent-session reconnect time,
Redis and etcd stores against memory store.

For each store the script starts a broker (``twistd -n mqttbroker``) in a child
process on 127.0.0.1, with a redis-server of its own for the Redis store
(``appendonly yes``, ``appendfsync everysec``: the settings docs/stores.md assumes)
or an etcd of its own for the etcd store (one member, its defaults: every write
fsynced before it is acknowledged), and drives it with raw MQTT 3.1.1 clients
built on our codec:

* **qos1**: one persistent subscriber (clean session 0) acknowledging every message,
  one publisher keeping ``--window`` QoS 1 PUBLISHes unacknowledged.  With the Redis
  store every message is written for the subscriber's session (queued/in flight)
  and removed on its PUBACK, and the publisher's PUBACK waits for the write.
  Figures: messages per second, from the first PUBLISH to the last PUBACK and delivery,
  and the CPU microseconds per message of the broker and of the store's server (which
  a loaded machine disturbs far less than the rate).
* **offline**: the same publisher, the persistent subscriber offline: each message is
  queued (stored) for it.  Figures: messages per second, and ms per message.
* **ops** (``--ops N``, in this process): each store call on its own, ``N`` times one
  after the other, through the store object: ms per lock (acquire and release),
  ``saveSession`` and ``loadSession`` of a session with one subscription, and a queued
  message stored then removed (``storeOutbound`` + ``removeOutbound``).  One call at a
  time shows the round trip and the server's work (etcd: a Raft write, fsynced) that
  batching hides in the other figures.
* **connect**: a persistent session (one subscription, nothing queued) connecting and
  disconnecting ``--connects`` times in a row.  Figure: ms per CONNECT+DISCONNECT
  (the client lock, the session loaded and saved).
* **reconnect**: a persistent session with ``--queued`` QoS 1 messages waiting for it
  (published while it was offline); the subscriber reconnects and acknowledges them
  all.  Figures: seconds to CONNACK, and to the last message.
* **pairs** (``--pairs N``, alone): the qos1 figures of the memory and Redis stores,
  one right after the other (the order alternating), ``N`` times: each pair's rates,
  their ratio (issue 19: Redis at least half the memory store's) and the load average.
  On a shared machine the rate of one run moves by 2x; a pair's two runs share most of
  their conditions, so its ratio is the figure to read.
* **connacks** (``--connacks N``, alone): the same session reconnecting ``N`` times in a
  row without acknowledging anything, so that each CONNACK finds the whole queue.
  Figures: min, median and max ms to CONNACK.

Usage::

    python bench/bench_store.py [--messages 20000] [--window 100] [--queued 10000]
                                [--connects 200] [--stores memory,redis,etcd] [--runs 3]
    python bench/bench_store.py --connacks 10 --stores redis
    python bench/bench_store.py --pairs 5

It prints one table; the median of ``--runs`` runs is shown.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mqtt_twisted.codec import (  # noqa: E402
    ConnAck,
    Connect,
    Disconnect,
    PubAck,
    Publish,
    StreamDecoder,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)

#: The checkout whose broker runs (``--root``: another one, e.g. main's, to compare).
BROKER_ROOT = ROOT
HOST = "127.0.0.1"
TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            pass
        try:  # wait a little, noticing at once if it died
            process.wait(0.05)
            raise RuntimeError(f"{what} exited with {process.returncode}")
        except subprocess.TimeoutExpired:
            pass
    raise RuntimeError(f"{what} did not listen on {port}")


class Services:
    """A broker (and a redis-server or an etcd for their stores) in child processes;
    ``broker=False``: the store's server only, its URL in ``store_url``."""

    def __init__(self, store: str, max_queued: int, broker: bool = True,
                 calls: bool = False) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-store-")
        self.redis_port = 0
        #: --calls: the broker's call counts are written here (bench/node_calls.py).
        self.calls = os.path.join(self.dir, "calls.json") if calls else ""
        self.redis = None
        if store == "etcd":
            cport, pport = free_port(), free_port()
            self.redis = subprocess.Popen(
                ["etcd", "--name", "bench", "--data-dir", os.path.join(self.dir, "etcd"),
                 "--listen-client-urls", f"http://{HOST}:{cport}",
                 "--advertise-client-urls", f"http://{HOST}:{cport}",
                 "--listen-peer-urls", f"http://{HOST}:{pport}",
                 "--initial-advertise-peer-urls", f"http://{HOST}:{pport}",
                 "--initial-cluster", f"bench=http://{HOST}:{pport}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            wait_port(cport, self.redis, "etcd")
            store = f"etcd://{HOST}:{cport}/bench"
        elif store == "redis":
            rport = self.redis_port = free_port()
            self.redis = subprocess.Popen(
                ["redis-server", "--port", str(rport), "--bind", HOST, "--save", "",
                 "--appendonly", "yes", "--appendfsync", "everysec", "--dir", self.dir],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            wait_port(rport, self.redis, "redis-server")
            store = f"redis://{HOST}:{rport}/0"
        self.store_url = store
        self.broker = None
        self.log = open(os.path.join(self.dir, "broker.log"), "wb")
        if not broker:
            return
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=BROKER_ROOT)
        run = ([os.path.join(BROKER_ROOT, "bench", "node_calls.py"), self.calls, "twistd"]
               if calls else ["-c", "from twisted.scripts.twistd import run; run()"])
        self.broker = subprocess.Popen(
            [sys.executable, *run, "-n",
             "--pidfile=", "mqttbroker", "--listen", f"tcp:{self.port}:interface={HOST}",
             "--store", store, "--sys-interval", "0", "--max-queued", str(max_queued)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        wait_port(self.port, self.broker, "the broker")

    def close(self) -> None:
        for process in (self.broker, self.redis):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Client:
    """A blocking raw MQTT 3.1.1 client."""

    def __init__(self, port: int, client_id: str, clean: bool) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = StreamDecoder(4)
        self.pending: list = []
        self.send(Connect(client_id, 4, clean, 0))
        self.connack = self.expect(ConnAck)

    def send(self, packet) -> None:
        self.sock.sendall(encode(packet, 4))

    def read(self) -> list:
        data = self.sock.recv(1 << 16)
        if not data:
            raise RuntimeError("the broker closed the connection")
        return self.decoder.feed(data)

    def expect(self, kind):
        deadline = time.monotonic() + TIMEOUT
        while not self.pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {kind.__name__}")
            self.pending.extend(self.read())
        packet = self.pending.pop(0)
        if not isinstance(packet, kind):
            raise RuntimeError(f"expected {kind.__name__}, got {packet!r}")
        return packet

    def close(self, disconnect: bool = True) -> None:
        if disconnect:
            self.send(Disconnect())
        self.sock.close()


def publish_all(port: int, n: int, window: int, subscriber: Client | None) -> float:
    """Publish n QoS 1 messages with a window; if ``subscriber`` is given, it acks them
    as they come.  Returns the elapsed seconds until every PUBACK and delivery."""
    pub = Client(port, "bench-pub", True)
    payload = b"x" * 64
    sel = selectors.DefaultSelector()
    sel.register(pub.sock, selectors.EVENT_READ, "pub")
    if subscriber is not None:
        sel.register(subscriber.sock, selectors.EVENT_READ, "sub")
    sent = acked = delivered = 0
    want_delivered = n if subscriber is not None else 0
    start = time.perf_counter()
    deadline = time.monotonic() + TIMEOUT
    while acked < n or delivered < want_delivered:
        if sent < n and sent - acked < window:
            batch = []
            while sent < n and sent - acked < window:
                sent += 1
                batch.append(encode(Publish("bench/t", payload, 1, False, False,
                                            (sent - 1) % 65535 + 1), 4))
            pub.sock.sendall(b"".join(batch))
        for key, _ in sel.select(1.0):
            if key.data == "pub":
                acked += sum(1 for p in pub.read() if isinstance(p, PubAck))
            else:
                acks = []
                for packet in subscriber.read():  # type: ignore[union-attr]
                    if isinstance(packet, Publish):
                        delivered += 1
                        acks.append(encode(PubAck(packet.packet_id), 4))
                if acks:
                    subscriber.sock.sendall(b"".join(acks))  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise RuntimeError(f"stuck: sent {sent} acked {acked} delivered {delivered}")
    elapsed = time.perf_counter() - start
    sel.close()
    pub.close()
    return elapsed


def subscribe(port: int, client_id: str) -> Client:
    sub = Client(port, client_id, False)
    sub.send(Subscribe(1, [Subscription("bench/#", 1)]))
    sub.expect(SubAck)
    return sub


def cpu_seconds(process: subprocess.Popen | None) -> float:
    """User + system CPU seconds ``process`` has used so far (0 without one or /proc)."""
    if process is None:
        return 0.0
    try:
        with open(f"/proc/{process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_qos1(store: str, n: int, window: int,
               calls: dict[str, Any] | None = None) -> tuple[float, float, float]:
    """(msg/s, broker CPU µs per message, store server CPU µs per message): the CPU
    figures hold on a loaded machine, where the rate does not.  ``calls`` (a dict):
    the broker runs under bench/node_calls.py, and ``calls`` gets its Python calls
    per message (``calls``, by group and by function) and, Redis store, the Redis
    commands per message (``commands``)."""
    services = Services(store, max(n, 1000), calls=calls is not None)
    try:
        sub = subscribe(services.port, "bench-sub")
        if calls is not None:
            redis_cli(services, "CONFIG", "RESETSTAT")
            services.broker.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
        broker, server = cpu_seconds(services.broker), cpu_seconds(services.redis)
        elapsed = publish_all(services.port, n, window, sub)
        broker = cpu_seconds(services.broker) - broker
        server = cpu_seconds(services.redis) - server
        if calls is not None:
            services.broker.send_signal(signal.SIGUSR2)  # type: ignore[union-attr]
            calls.update(call_counts(services, n))
        sub.close()
        return n / elapsed, broker * 1e6 / n, server * 1e6 / n
    finally:
        services.close()


def redis_cli(services: Services, *args: str) -> str:
    if not services.redis_port:
        return ""
    return subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p",
                           str(services.redis_port), *args], capture_output=True, text=True,
                          check=True).stdout


def call_counts(services: Services, n: int) -> dict[str, Any]:
    """--calls: the broker's counts (once bench/node_calls.py wrote them) per message,
    and Redis's commands per message (INFO commandstats)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(services.calls):
        if time.monotonic() > deadline:
            raise RuntimeError("the broker never wrote its call counts")
        time.sleep(0.1)
    with open(services.calls) as f:
        counts = json.load(f)
    commands = {}
    for line in redis_cli(services, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            commands[name] = int(rest.split("calls=", 1)[1].split(",", 1)[0]) / n
    return {"calls": counts["calls"] / n, "c_calls": counts["c_calls"] / n,
            "groups": {k: v / n for k, v in counts["modules"].items()},
            "functions": counts["functions"], "commands": commands}


def bench_connects(store: str, n: int) -> float:
    """Seconds per CONNECT (clean session 0, session present) and DISCONNECT, in a row."""
    services = Services(store, 1000)
    try:
        subscribe(services.port, "bench-c").close()
        start = time.perf_counter()
        for _ in range(n):
            client = Client(services.port, "bench-c", False)
            if not client.connack.session_present:
                raise RuntimeError("the session was not kept")
            client.close()
        return (time.perf_counter() - start) / n
    finally:
        services.close()


def bench_reconnect(store: str, queued: int, window: int) -> tuple[float, float, float]:
    """(offline msg/s, seconds to CONNACK, seconds to the last queued message)."""
    services = Services(store, queued + 1000)
    try:
        subscribe(services.port, "bench-rc").close()
        offline = queued / publish_all(services.port, queued, window, None)
        start = time.perf_counter()
        sub = Client(services.port, "bench-rc", False)
        connack = time.perf_counter() - start
        if not sub.connack.session_present:
            raise RuntimeError("the session was not kept")
        got = 0
        pending = [p for p in sub.pending if isinstance(p, Publish)]
        sub.pending.clear()
        deadline = time.monotonic() + TIMEOUT
        while True:
            acks = [encode(PubAck(p.packet_id), 4) for p in pending]
            got += len(pending)
            if acks:
                sub.sock.sendall(b"".join(acks))
            if got >= queued:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {got} of {queued} queued messages arrived")
            pending = [p for p in sub.read() if isinstance(p, Publish)]
        drained = time.perf_counter() - start
        sub.close()
        return offline, connack, drained
    finally:
        services.close()


def bench_connacks(store: str, queued: int, window: int, n: int) -> list[float]:
    """Seconds to CONNACK of a persistent session with ``queued`` QoS 1 messages, ``n``
    reconnects in a row (each takes its in-flight window and leaves without acknowledging,
    so every reconnect finds the whole queue), sorted."""
    services = Services(store, queued + 1000)
    try:
        subscribe(services.port, "bench-rc").close()
        publish_all(services.port, queued, window, None)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            sub = Client(services.port, "bench-rc", False)
            times.append(time.perf_counter() - start)
            if not sub.connack.session_present:
                raise RuntimeError("the session was not kept")
            time.sleep(0.2)
            sub.close()
            time.sleep(0.3)
        return sorted(times)
    finally:
        services.close()


def bench_ops(stores: list[str], n: int) -> dict[str, dict[str, float]]:
    """ms per call for each store, one call at a time (see ``ops`` above)."""
    from twisted.internet import defer, task

    from mqtt_twisted.plugins.builtin import EtcdStorePlugin, MemoryStorePlugin, RedisStorePlugin
    from mqtt_twisted.records import SubscriptionOptions
    from mqtt_twisted.store.memory import StoredSession
    from mqtt_twisted.testing.store_contract import message, outbound

    plugins = {"memory": MemoryStorePlugin(), "redis": RedisStorePlugin(),
               "etcd": EtcdStorePlugin()}
    results: dict[str, dict[str, float]] = {}

    @defer.inlineCallbacks
    def one(reactor, name: str):
        services = Services(name, 0, broker=False)
        try:
            url = services.store_url
            store = plugins[name].makeStore(reactor, url.split(":", 1)[1] if ":" in url else "")
            yield store.start()
            state = StoredSession("bench-ops")
            state.subscriptions = {"bench/#": SubscriptionOptions(1)}
            state.expiryInterval = 3600
            out = outbound(1, msg=message("bench/t", b"x" * 64))
            figures = {}

            @defer.inlineCallbacks
            def lock():
                held = yield store.acquireLock("bench-ops", 5)
                yield held.release()

            seqs = itertools.count(1)

            @defer.inlineCallbacks
            def queued():
                out.seq = next(seqs)
                yield store.storeOutbound("bench-ops", out)
                yield store.removeOutbound("bench-ops", out.seq)

            for what, call in (("lock", lock), ("save", lambda: store.saveSession(state)),
                               ("load", lambda: store.loadSession("bench-ops")),
                               ("queue", queued)):
                start = time.perf_counter()
                for _ in range(n):
                    yield call()
                figures[what] = (time.perf_counter() - start) / n * 1000
            yield store.stop()
            results[name] = figures
        finally:
            services.close()

    @defer.inlineCallbacks
    def run(reactor):
        for name in stores:
            yield one(reactor, name)

    try:
        task.react(run)
    except SystemExit as e:
        if e.code:
            raise
    return results


def bench_pairs(pairs: int, n: int, window: int, calls: bool = False) -> None:
    """``--pairs``: memory and Redis QoS 1 runs side by side (module docstring);
    ``calls``: under bench/node_calls.py, with Python calls per message."""
    print(f"{'pair':>4} {'load':>5} {'memory msg/s':>13} {'µs':>6} {'redis msg/s':>12} "
          f"{'µs':>6} {'server µs':>10} {'redis/memory':>13}")
    ratios = []
    for i in range(pairs):
        load = os.getloadavg()[0]
        order = ("memory", "redis") if i % 2 == 0 else ("redis", "memory")
        counts: dict[str, dict[str, Any]] = {"memory": {}, "redis": {}}
        got = {store: bench_qos1(store, n, window, counts[store] if calls else None)
               for store in order}
        (mem, mem_us, _), (red, red_us, server_us) = got["memory"], got["redis"]
        ratios.append(red / mem)
        print(f"{i + 1:4} {load:5.1f} {mem:13.0f} {mem_us:6.1f} {red:12.0f} {red_us:6.1f} "
              f"{server_us:10.1f} {red / mem:13.2f}", flush=True)
        if calls:
            for store, c in counts.items():
                groups = ", ".join(f"{k} {v:.1f}" for k, v in sorted(c["groups"].items()))
                commands = ", ".join(f"{k} {v:.3f}" for k, v in sorted(c["commands"].items()))
                print(f"     {store}: {c['calls']:.1f} Python calls per message ({groups}); "
                      f"C calls {c['c_calls']:.1f}; Redis commands per message: "
                      f"{commands or '-'}")
                top = sorted(c["functions"].items(), key=lambda kv: -kv[1])[:25]
                print("       " + "; ".join(f"{k} {v / n:.2f}" for k, v in top))
    print(f"redis/memory: median {statistics.median(ratios):.2f}, min {min(ratios):.2f}, "
          f"max {max(ratios):.2f}; load average now {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--queued", type=int, default=10000)
    parser.add_argument("--connects", type=int, default=200)
    parser.add_argument("--ops", type=int, default=0,
                        help="also time each store call alone, this many times")
    parser.add_argument("--connacks", type=int, default=0,
                        help="only the CONNACK of a session with --queued messages, this "
                        "many reconnects per store (min, median, max)")
    parser.add_argument("--pairs", type=int, default=0,
                        help="only QoS 1, memory then Redis store (alternating order), "
                        "this many pairs: rates, ratio, CPU per message")
    parser.add_argument("--calls", action="store_true",
                        help="--pairs: the broker under bench/node_calls.py, Python calls "
                        "per message by group and function, Redis commands per message")
    parser.add_argument("--stores", default="memory,redis,etcd")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--root", default=ROOT,
                        help="the checkout whose broker runs (default: this one)")
    args = parser.parse_args()
    global BROKER_ROOT
    BROKER_ROOT = os.path.abspath(args.root)
    stores = args.stores.split(",")
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True).stdout.split()[2] if "redis" in stores else "-"
    etcd_version = subprocess.run(["etcd", "--version"], capture_output=True,
                                  text=True).stdout.split()[2] if "etcd" in stores else "-"
    print(f"python {platform.python_version()}, nproc {os.cpu_count()}, {cpu}, "
          f"redis-server {redis_version}, etcd {etcd_version}")
    print(f"qos1 and offline: {args.messages} and {args.queued} messages of 64 bytes, "
          f"publisher window {args.window}; connect: {args.connects} in a row; reconnect: "
          f"{args.queued} queued QoS 1 messages; median of {args.runs} runs")
    if args.connacks:
        for store in stores:
            times = [t * 1000 for t in bench_connacks(store, args.queued, args.window,
                                                      args.connacks)]
            print(f"{store:8} CONNACK ms, {args.connacks} reconnects with {args.queued} "
                  f"queued: min {times[0]:.1f} median {statistics.median(times):.1f} "
                  f"max {times[-1]:.1f}", flush=True)
        return
    if args.pairs:
        bench_pairs(args.pairs, args.messages, args.window, args.calls)
        return
    if args.ops:
        ops = bench_ops(stores, args.ops)
        print(f"ops: ms per call, {args.ops} calls one after the other")
        print(f"{'store':8} {'lock':>7} {'save':>7} {'load':>7} {'queue':>7}")
        for store, f in ops.items():
            print(f"{store:8} {f['lock']:7.2f} {f['save']:7.2f} {f['load']:7.2f} "
                  f"{f['queue']:7.2f}", flush=True)
    print(f"{'store':8} {'QoS 1 msg/s':>12} {'broker µs':>10} {'server µs':>10} "
          f"{'offline msg/s':>14} {'ms/msg':>7} "
          f"{'connect ms':>11} {'CONNACK ms':>11} {'drain s':>8} {'drain msg/s':>12}")
    for store in stores:
        qos1 = [bench_qos1(store, args.messages, args.window) for _ in range(args.runs)]
        connects = [bench_connects(store, args.connects) for _ in range(args.runs)]
        reconnects = [bench_reconnect(store, args.queued, args.window)
                      for _ in range(args.runs)]
        offline = statistics.median(o for o, _, _ in reconnects)
        connack = statistics.median(c for _, c, _ in reconnects)
        drain = statistics.median(d for _, _, d in reconnects)
        rate, broker_us, server_us = (statistics.median(q[i] for q in qos1) for i in range(3))
        print(f"{store:8} {rate:12.0f} {broker_us:10.1f} {server_us:10.1f} {offline:14.0f} "
              f"{1000 / offline:7.3f} {statistics.median(connects) * 1000:11.2f} "
              f"{connack * 1000:11.1f} {drain:8.2f} {args.queued / drain:12.0f}", flush=True)


if __name__ == "__main__":
    main()
