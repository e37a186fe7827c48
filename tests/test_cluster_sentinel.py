"""Two cluster nodes on Redis behind Sentinel (``--store redis+sentinel://...``): a real
master, two real replicas and three real ``redis-sentinel`` processes on fresh ports
(issue 16, part 2).  The master is failed over (``SENTINEL FAILOVER``) or killed in the
middle of a QoS 1 stream from a publisher on node A to a persistent subscriber on node
B: the nodes find the new master by themselves, the clients may be disconnected and
reconnect, and every message the publisher was acknowledged for is delivered.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from mqtt_twisted.store.redis import parse_url
from tests.livebroker import LiveBroker
from tests.redisserver import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
SERVICE = "mymaster"

needs_sentinel = pytest.mark.skipif(
    not Path(REDIS_SENTINEL).exists(),
    reason="redis-sentinel is not installed (Debian: apt-get install redis-sentinel)")


def cli(port: int, *args: str) -> str:
    done = subprocess.run([REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True,
                          timeout=10)
    return done.stdout.strip()


def wait_for(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


class Servers:
    """A master, two replicas of it and three sentinels watching it (quorum 2)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.master = self._redis("master")
        # Two replicas: with ?wait=1, once one is promoted the other must replicate the
        # new master, or no write could be confirmed any more (N+1 replicas for wait=N).
        self.replicas = [self._redis(f"replica{i}", "--replicaof", "127.0.0.1",
                                     str(self.master)) for i in range(2)]
        for replica in self.replicas:
            wait_for("a replica did not sync", lambda r=replica: "master_link_status:up"
                     in cli(r, "INFO", "replication"))
        self.sentinels = [self._sentinel(i) for i in range(3)]
        # A failover needs the sentinels to know each other and the replica.
        for port in self.sentinels:
            wait_for("the sentinels did not find each other and the replica", lambda p=port: (
                cli(p, "SENTINEL", "sentinels", SERVICE).count("127.0.0.1") >= 2
                and "127.0.0.1" in cli(p, "SENTINEL", "replicas", SERVICE)))

    def _spawn(self, port: int, args: list[str], name: str) -> int:
        log = open(self.directory / f"{name}.log", "wb")
        self.procs[port] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(f"{name} did not start", lambda: cli(port, "PING") == "PONG", 15)
        return port

    def _redis(self, name: str, *extra: str) -> int:
        port = free_port()
        directory = self.directory / name
        directory.mkdir()
        return self._spawn(port, [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "yes", "--dir", str(directory),
                                  *extra], name)

    def _sentinel(self, i: int) -> int:
        port = free_port()
        conf = self.directory / f"sentinel{i}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self.directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n")
        return self._spawn(port, [REDIS_SENTINEL, str(conf)], f"sentinel{i}")

    @property
    def url(self) -> str:
        """Writes wait for the replica (WAIT 1): without it a failover loses what the
        old master acknowledged and had not sent yet (asynchronous replication; seen
        here: 1 and 11 acknowledged messages lost in two of three SENTINEL FAILOVERs)."""
        members = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        return f"redis+sentinel://{members}/{SERVICE}/0?wait=1"

    def master_port(self) -> int:
        reply = cli(self.sentinels[0], "SENTINEL", "get-master-addr-by-name", SERVICE)
        return int(reply.split()[1])

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    made = Servers(tmp_path)
    yield made
    made.stop()


class Subscriber:
    """A persistent QoS 1 paho subscriber that reconnects at once when cut off."""

    def __init__(self, port: int, client_id: str, topic: str) -> None:
        self.payloads: queue.Queue[bytes] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = lambda c, u, m: self.payloads.put(m.payload)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def got(self) -> set[bytes]:
        out = set()
        while not self.payloads.empty():
            out.add(self.payloads.get())
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` as ``"1-3 7"``: a failure's missing messages at a glance."""
    out: list[str] = []
    for n in numbers:
        if out and n == int(out[-1].rpartition("-")[2]) + 1:
            out[-1] = f"{out[-1].partition('-')[0]}-{n}"
        else:
            out.append(str(n))
    return " ".join(out)


def where_missing(port: int, missing: set[bytes], nodes: list[LiveBroker]) -> str:
    """What a failure needs to be understood: which of the missing messages node B's
    stream on the master still holds (they reached Redis), and what the nodes said
    about adoption, fencing, full queues and store failures."""
    from mqtt_twisted.cluster.batch import item_message, read_entry
    from tests.test_cluster_e2e import Redis

    server = Redis.__new__(Redis)
    server.port = port
    in_stream = set()
    try:
        entries = server.command(b"XRANGE", b"mqtt:cluster:inbox:B", b"-", b"+")
        for _, fields in entries or []:
            read = read_entry(fields)
            for item in read[1] if read else []:
                if type(item) is list:
                    in_stream.add(item_message(item).payload)
    except Exception as e:  # a diagnosis only
        return f"(stream unreadable: {e})"
    lines = [line for node in nodes for line in node.log().splitlines()
             if any(w in line for w in ("adopt", "fence", "full", "failed", "FENCED"))]
    return (f"{len(missing & in_stream)} of the missing in B's stream; "
            "node logs:\n" + "\n".join(lines[:40]))


def published(info: mqtt.MQTTMessageInfo) -> bool:
    """Acknowledged (PUBACK received); a publish made while paho was disconnected is not."""
    try:
        return info.is_published()
    except RuntimeError:
        return False


def qos1_stream(nodes: list[LiveBroker], master_port: Callable[[], int],
                disrupt: Callable[[], None]) -> tuple[int, int, int]:
    """A QoS 1 stream from a persistent publisher on ``nodes[0]`` to a persistent
    subscriber on ``nodes[1]``, ``disrupt()`` (which returns once Redis is usable
    again) 1.5 s into it, 4 s more of stream: every acknowledged message must arrive.
    Returns (published, acknowledged, received)."""
    a, b = nodes[0], nodes[1]
    made: list[mqtt.Client] = []
    try:
        sub = Subscriber(b.port, "sub", "s/#")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub",
                          clean_session=False, protocol=mqtt.MQTTv311)
        pub.reconnect_delay_set(0.1, 0.5)
        pub.max_inflight_messages_set(20)
        pub.connect("127.0.0.1", a.port)
        pub.loop_start()
        made += [pub, sub.client]
        # Routed: A knows B's filter.
        deadline = time.monotonic() + 10
        while not sub.got():
            pub.publish("s/probe", b"probe", 0)
            time.sleep(0.1)
            assert time.monotonic() < deadline, "never routed"
        time.sleep(0.3)
        sub.got()
        infos: list[tuple[bytes, mqtt.MQTTMessageInfo]] = []
        stop = threading.Event()

        def publish() -> None:
            i = 0
            while not stop.is_set():
                payload = b"%d" % i
                infos.append((payload, pub.publish("s/t", payload, 1)))
                i += 1
                time.sleep(0.002)

        publisher = threading.Thread(target=publish)
        publisher.start()
        try:
            time.sleep(1.5)
            disrupt()
            time.sleep(4)  # publishing on while the nodes reconnect
        finally:
            stop.set()
            publisher.join()
        for _, info in infos:
            try:
                info.wait_for_publish(30)
            except (RuntimeError, ValueError):
                pass  # paho gave this one up: not acknowledged
        acked = {payload for payload, info in infos if published(info)}
        received: set[bytes] = set()
        deadline = time.monotonic() + 60
        while not acked <= received and time.monotonic() < deadline:
            received |= sub.got()
            time.sleep(0.1)
        missing = sorted(acked - received, key=int)
        print(f"{len(infos)} published, {len(acked)} acknowledged, {len(received)} received")
        assert not missing, (len(missing), ranges([int(m) for m in missing]),
                             where_missing(master_port(), set(missing), nodes))
        assert len(acked) > len(infos) * 0.5
        return len(infos), len(acked), len(received)
    finally:
        for client in made:
            client.disconnect()
            client.loop_stop()


def stream_through_switch(tmp_path: Path, servers: Servers, switch: object) -> None:
    """QoS 1 from a publisher on A to a subscriber on B while ``switch()`` moves the
    master: every acknowledged message arrives; the nodes follow the new master."""
    nodes: list[LiveBroker] = []
    try:
        for name in "AB":
            directory = tmp_path / name
            directory.mkdir()
            nodes.append(LiveBroker(directory, "--store", servers.url, "--cluster", name))
        old_master = servers.master_port()

        def disrupt() -> None:
            switch(old_master)  # type: ignore[operator]
            wait_for("the sentinels did not switch",
                     lambda: servers.master_port() != old_master)

        qos1_stream(nodes, servers.master_port, disrupt)
        print(f"master {old_master} -> {servers.master_port()}")
        # Both nodes write to the new master.
        new = servers.master_port()
        assert new != old_master
        clients = cli(new, "CLIENT", "LIST")
        assert clients.count("cmd=") >= 8, clients
    finally:
        for node in nodes:
            node.stop()
    for node in nodes:
        assert node.unhandled() == [], node.log()


def test_sentinel_url_parsed() -> None:
    """The Sentinel URL: sentinels (port 26379 by default), the service, the database;
    the userinfo is the master's, sentinel_password the sentinels'."""
    o = parse_url("redis+sentinel://:pw@10.0.0.1,10.0.0.2:26380,[::1]/mymaster/3"
                  "?sentinel_password=s&timeout=2")
    assert o.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26379)]
    assert (o.service, o.db, o.password, o.sentinel_password, o.timeout) == (
        "mymaster", 3, "pw", "s", 2.0)
    for bad, error in [("redis+sentinel://h/", "names the master's service"),
                       ("redis+sentinel://h/m/x", "path is /SERVICE"),
                       ("redis+sentinel://h,/m", "empty sentinel address"),
                       ("redis+sentinel://h:0/m", "bad sentinel address"),
                       ("redis+sentinel://h/m?ca=f", "unknown Redis Sentinel URL option")]:
        with pytest.raises(ValueError, match=error):
            parse_url(bad)


@needs_sentinel
@pytest.mark.slow
def test_sentinel_failover_mid_stream(tmp_path: Path, servers: Servers) -> None:
    """``SENTINEL FAILOVER`` mid-stream: both nodes follow the new master by themselves
    and every acknowledged QoS 1 message crosses from A to B."""
    stream_through_switch(tmp_path, servers, lambda old: cli(
        servers.sentinels[0], "SENTINEL", "FAILOVER", SERVICE))


@needs_sentinel
@pytest.mark.slow
def test_master_killed_mid_stream(tmp_path: Path, servers: Servers) -> None:
    """``kill -9`` of the master mid-stream: the sentinels promote the replica, both
    nodes reconnect to it, and every acknowledged QoS 1 message crosses from A to B."""
    stream_through_switch(tmp_path, servers, servers.kill)


@pytest.mark.parametrize("store", ["redis://127.0.0.1:{port}/0",
                                   "redis+sentinel://127.0.0.1:{port}/mymaster/0"])
def test_unreachable_store_exits(tmp_path: Path, store: str) -> None:
    """A cluster node whose Redis (or whose sentinels) cannot be reached says so in one
    line and exits with status 1 (it used to hang at its stop: the cluster's clients,
    never started, kept their commands waiting for ever)."""
    from tests.test_twistd_run import _env, twistd_command

    done = subprocess.run(
        [*twistd_command(), "-n", "--pidfile=", "mqttbroker", "--listen",
         f"tcp:{free_port()}:interface=127.0.0.1", "--store",
         store.format(port=free_port()) + "?connect_timeout=1", "--cluster", "X"],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stdout
    assert "The broker could not start: store redis:" in done.stdout, done.stdout
    assert "did not answer in 1.0s" in done.stdout, done.stdout
