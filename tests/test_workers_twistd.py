"""``--workers N`` run for real: ``twistd mqttbroker --workers N`` processes on a real
redis-server, driven from outside with blocking sockets as an operator's clients and
signals would: the connections spread over the workers, a message crosses them, CoAP
datagrams too, SIGTERM stops them all (their MQTT 5 clients hear DISCONNECT 0x8B), a
signal to the whole group is taken once, a killed worker is started again, a killed
supervisor takes its workers with it, a daemon returns once all listen, and starts that
must fail do.  (The option checks, the shared sockets and the supervisor with stand-in
workers: tests/test_workers.py.)
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mqtt_twisted.codec import (
    Connect,
    Disconnect,
    Publish,
    StreamDecoder,
    Subscribe,
    Subscription,
    encode,
)
from tests.coapbroker import COAP_CLIENT, NO_LIBCOAP
from tests.livebroker import LiveBroker, free_udp_port
from tests.redisserver import free_port
from tests.test_cluster_e2e import Redis
from tests.test_plugins import twistd_command
from tests.test_twistd_run import _env

WAIT = 20.0


# --- real twistd --workers on a real redis-server ---------------------------------------


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path / "redis")
    yield server
    server.stop()


class Broker:
    """``twistd -n mqttbroker --workers N`` on ``port`` (127.0.0.1) and its workers."""

    def __init__(self, directory: Path, redis: Redis, count: int, *extra: str,
                 port: int | None = None, twistd: tuple[str, ...] = (),
                 preexec_fn: Any = None, log: str = "twistd.log",
                 environ: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.log_path = directory / log
        self.proc = subprocess.Popen(
            [*twistd_command(), "-n", "--pidfile=", *twistd, "mqttbroker", "--listen",
             f"tcp:{self.port}:interface=127.0.0.1", "--store", redis.url, "--workers",
             str(count), "--sys-interval", "0", *extra],
            env={**_env(), **(environ or {})}, cwd=directory,
            stdout=open(self.log_path, "wb"),
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec_fn)
        self.count = count

    def wait_started(self) -> None:
        deadline = time.monotonic() + WAIT
        while len(self.workers()) < self.count - 1 or b"workers listen" not in self.log_bytes():
            assert self.proc.poll() is None, f"twistd exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"not started:\n{self.log()}"
            time.sleep(0.1)
        while True:  # every worker reported: the supervisor says the broker started
            try:
                connect(self.port, "probe").close()
                return
            except OSError:
                assert time.monotonic() < deadline, self.log()
                time.sleep(0.1)

    def log_bytes(self) -> bytes:
        return self.log_path.read_bytes()

    def log(self) -> str:
        return self.log_bytes().decode("utf-8", "replace")

    def workers(self) -> list[int]:
        """The pids of the supervisor's children (its workers)."""
        return children(self.proc.pid)

    def stop(self) -> None:
        kill_all(self.proc.pid)
        self.proc.wait()


def kill_all(supervisor: int) -> None:
    """SIGKILL a supervisor and its workers (whatever is left of them)."""
    for pid in (*children(supervisor), supervisor):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_daemon(directory: Path, redis: Redis, port: int, *twistd: str) -> int:
    """``twistd --pidfile=mqtt.pid TWISTD mqttbroker --workers 2`` daemonized, its
    exit status 0 (both workers listen); the supervisor's pid."""
    done = subprocess.run(
        [*twistd_command(), "--pidfile=mqtt.pid", *twistd, "mqttbroker", "--listen",
         f"tcp:{port}:interface=127.0.0.1", "--store", redis.url, "--workers", "2"],
        env=_env(), cwd=directory, capture_output=True, timeout=60)
    assert done.returncode == 0, done
    return int((directory / "mqtt.pid").read_text())


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def owners(port: int) -> dict[int, int]:
    """pid -> how many established connections it holds whose local port is ``port``."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == port and parts[3] == "01":
                inodes.add(parts[9])
    held: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held[int(entry)] = held.get(int(entry), 0) + 1
    return held


def connect(port: int, client_id: str, version: int = 4) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(encode(Connect(client_id, version, True, 0), version))
    assert read_packets(sock, 1, version)[0].__class__.__name__ == "ConnAck"
    return sock


def read_packets(sock: socket.socket, count: int, version: int = 4) -> list[Any]:
    decoder = StreamDecoder(version=version)
    packets: list[Any] = []
    deadline = time.monotonic() + WAIT
    while len(packets) < count:
        assert time.monotonic() < deadline, f"{len(packets)} of {count} packets"
        data = sock.recv(65536)
        if not data:
            break
        packets += decoder.feed(data)
    return packets


def test_workers_share_the_port_and_the_messages(tmp_path: Path, redis: Redis) -> None:
    broker = Broker(tmp_path, redis, 3)
    try:
        broker.wait_started()
        assert len(broker.workers()) == 2
        subscribers = []
        for i in range(24):
            sock = connect(broker.port, f"sub-{i}")
            sock.sendall(encode(Subscribe(1, [Subscription("w/t", 0)]), 4))
            assert read_packets(sock, 1)[0].__class__.__name__ == "SubAck"
            subscribers.append(sock)
        held = owners(broker.port)
        serving = {pid for pid in held if pid in [broker.proc.pid, *broker.workers()]}
        assert len(serving) >= 2, held  # the kernel spread them (24 on one of 3: 1e-11)
        time.sleep(1.0)  # the subscriptions' routes reach every worker
        publisher = connect(broker.port, "pub")
        publisher.sendall(encode(Publish("w/t", b"across", 0), 4))
        for sock in subscribers:
            (message,) = read_packets(sock, 1)
            assert (message.topic, message.payload) == ("w/t", b"across")
    finally:
        broker.stop()
    assert b"Traceback" not in broker.log_bytes()


@pytest.mark.skipif(COAP_CLIENT is None, reason=str(NO_LIBCOAP))
def scrape(port: int) -> dict[tuple[str, str], float]:
    """``GET /metrics`` on ``port``: (sample name, its worker) -> value, for the samples
    that have no other label."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as r:
        text = r.read().decode()
    found = {}
    for name, worker, value in re.findall(r'^(\w+)\{worker="(\d+)"\} (\S+)$', text, re.M):
        found[name, worker] = float(value)
    return found


def test_every_scrape_of_the_shared_metrics_port_has_every_worker(tmp_path: Path,
                                                                  redis: Redis) -> None:
    """Before: each scrape of the shared port read whichever worker the kernel picked,
    so ``mqtt_connects_total`` jumped between workers' counts (a reset to Prometheus)."""
    metrics = free_port()
    tmpdir = Path(tempfile.mkdtemp())  # (tmp_path is too deep for a unix socket's path)
    broker = Broker(tmp_path, redis, 3, "--listen", f"metrics=tcp:{metrics}:interface=127.0.0.1",
                    environ={"TMPDIR": str(tmpdir)})
    try:
        broker.wait_started()
        clients = [connect(broker.port, f"c-{i}") for i in range(12)]
        for _ in range(12):  # (the kernel spreads the scrapes' connections too)
            found = scrape(metrics)
            assert {w: found["mqtt_worker_up", w] for w in "012"} == dict.fromkeys("012", 1.0)
            # 12 clients and the start's probe, wherever each landed
            assert sum(found["mqtt_connects_total", w] for w in "012") == 13, found
            assert all(("process_cpu_seconds_total", w) in found for w in "012")
        shared = [p for p in tmpdir.iterdir() if p.name.startswith("mqtt-twisted-workers-")]
        assert len(shared) == 1 and sorted(os.listdir(shared[0])) == [
            "w0.sock", "w1.sock", "w2.sock"]
        os.kill(broker.workers()[0], signal.SIGKILL)  # the others answer without it
        deadline = time.monotonic() + WAIT
        found = {}
        while 0.0 not in found.values():
            assert time.monotonic() < deadline, found
            with contextlib.suppress(OSError):  # (queued on the dead worker's socket: reset)
                found = scrape(metrics)
        assert sorted(found[("mqtt_worker_up", w)] for w in "012") == [0.0, 1.0, 1.0]
        for sock in clients:
            sock.close()
        broker.proc.send_signal(signal.SIGTERM)
        assert broker.proc.wait(WAIT) == -signal.SIGTERM, broker.log()  # (as twistd ends)
    finally:
        broker.stop()
    assert not shared[0].exists()  # worker 0 removes the sockets' directory
    tmpdir.rmdir()
    assert b"Traceback" not in broker.log_bytes()


def test_workers_run_the_reactor_the_supervisor_was_given(tmp_path: Path,
                                                          redis: Redis) -> None:
    broker = Broker(tmp_path, redis, 2, twistd=("--reactor", "poll"))
    try:
        broker.wait_started()
        assert broker.log().count("reactor class: twisted.internet.pollreactor.PollReactor") == 2
    finally:
        broker.stop()


def test_coap_datagrams_reach_a_subscriber_of_any_worker(tmp_path: Path,
                                                         redis: Redis) -> None:
    """A UDP listener is shared too: libcoap's client POSTs from 12 source ports (the
    kernel picks a worker for each) and an MQTT subscriber gets every one."""
    udp_port = free_udp_port()
    broker = Broker(tmp_path, redis, 2, "--listen", f"coap=udp:{udp_port}:interface=127.0.0.1")
    try:
        broker.wait_started()
        with open("/proc/net/udp") as f:
            bound = [line for line in f.readlines()[1:]
                     if int(line.split()[1].split(":")[1], 16) == udp_port]
        assert len(bound) == 2  # one socket a worker
        sub = connect(broker.port, "coap-sub")
        sub.sendall(encode(Subscribe(1, [Subscription("dev/#", 0)]), 4))
        assert read_packets(sub, 1)[0].__class__.__name__ == "SubAck"
        time.sleep(1.0)  # the subscription's route reaches the other worker
        for i in range(12):
            done = subprocess.run(
                [COAP_CLIENT, "-B", "10", "-m", "post", "-t", "0", "-e", f"m{i}",
                 f"coap://127.0.0.1:{udp_port}/ps/dev/{i}"], capture_output=True, timeout=30)
            assert done.returncode == 0, done
        got = read_packets(sub, 12)
        assert sorted((m.topic, m.payload) for m in got) == sorted(
            (f"dev/{i}", f"m{i}".encode()) for i in range(12))
    finally:
        broker.stop()


def test_sigterm_stops_every_worker_and_tells_their_clients(tmp_path: Path,
                                                             redis: Redis) -> None:
    broker = Broker(tmp_path, redis, 2)
    try:
        broker.wait_started()
        pids = broker.workers()
        clients = [connect(broker.port, f"v5-{i}", 5) for i in range(24)]  # (all on worker 0: 6e-8)
        held = owners(broker.port)
        assert any(held.get(pid) for pid in pids), held  # some on the worker
        broker.proc.send_signal(signal.SIGTERM)
        assert broker.proc.wait(WAIT) == -signal.SIGTERM, broker.log()  # (as twistd ends)
        for sock in clients:
            (disconnect,) = read_packets(sock, 1, 5)
            assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x8B
        assert broker.workers() == []
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        broker.stop()


def test_a_stop_signal_to_the_whole_group_is_taken_once(tmp_path: Path,
                                                        redis: Redis) -> None:
    """systemd's stop (KillMode=control-group) and Ctrl-C signal every worker at once, and
    the supervisor then signals them again: each stops once, with no error."""
    for number in (signal.SIGTERM, signal.SIGINT):
        broker = Broker(tmp_path, redis, 3)
        try:
            broker.wait_started()
            pids = broker.workers()
            os.killpg(broker.proc.pid, number)
            assert broker.proc.wait(WAIT) == -number, broker.log()
            assert not [pid for pid in pids if _running(pid)]
            log = broker.log()
            assert "Traceback" not in log and "Unhandled" not in log, log
            assert log.count("Main loop terminated") == 3
        finally:
            broker.stop()


def test_one_broker_signalled_twice_stops_once(tmp_path: Path) -> None:
    """The same without workers: a second SIGTERM while stopping is not an error."""
    broker = LiveBroker(tmp_path)
    try:
        clients = [connect(broker.port, f"v5-{i}", 5) for i in range(300)]  # (a slower stop)
        broker.proc.send_signal(signal.SIGTERM)
        time.sleep(0.01)  # (two at once would be one: signals of a kind do not queue)
        broker.proc.send_signal(signal.SIGTERM)
        assert broker.proc.wait(WAIT) == -signal.SIGTERM
        assert "Traceback" not in broker.log() and "Unhandled" not in broker.log()
    finally:
        broker.stop()
    assert len(clients) == 300


def test_daemonized_the_parent_returns_once_every_worker_listens(tmp_path: Path,
                                                                 redis: Redis) -> None:
    """``twistd mqttbroker --workers 2`` (no -n): exit status 0 once both listen, each
    worker's log in a file of its own, SIGTERM through the pid file stops both."""
    port = free_port()
    supervisor = start_daemon(tmp_path, redis, port)
    try:
        (worker,) = children(supervisor)
        assert len(owners_listening(port)) == 2  # both listen already: no waiting here
        assert b"Worker 1 (pid" in (tmp_path / "twistd.log.w1").read_bytes()
        connect(port, "daemon-client").close()
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + WAIT
        while _running(supervisor) or _running(worker):
            assert time.monotonic() < deadline, (tmp_path / "twistd.log").read_text()
            time.sleep(0.1)
    finally:
        kill_all(supervisor)


def test_sigusr1_rotates_every_workers_log_file(tmp_path: Path, redis: Redis) -> None:
    """twistd --logfile rotates its file on SIGUSR1: the workers' files rotate too."""
    supervisor = start_daemon(tmp_path, redis, free_port(), "--logfile=b.log")
    try:
        os.kill(supervisor, signal.SIGUSR1)
        deadline = time.monotonic() + WAIT
        while not ((tmp_path / "b.log.1").exists() and (tmp_path / "b.log.w1.1").exists()):
            assert time.monotonic() < deadline, sorted(p.name for p in tmp_path.iterdir())
            time.sleep(0.1)
        assert _running(supervisor) and len(children(supervisor)) == 1
    finally:
        kill_all(supervisor)


def owners_listening(port: int) -> list[str]:
    """The inodes of the sockets listening on TCP ``port`` (one per worker)."""
    with open("/proc/net/tcp") as f:
        return [line.split()[9] for line in f.readlines()[1:]
                if int(line.split()[1].split(":")[1], 16) == port and line.split()[3] == "0A"]


def test_a_second_workers_broker_on_the_port_is_refused(tmp_path: Path,
                                                       redis: Redis) -> None:
    """Every worker binds with SO_REUSEPORT, so another ``--workers`` broker of the same
    user could bind the port too and split the clients: its supervisor looks first."""
    first = Broker(tmp_path, redis, 2)
    try:
        first.wait_started()
        second = Broker(tmp_path, redis, 2, port=first.port, log="second.log")
        try:
            assert second.proc.wait(WAIT) == 1, second.log()
            assert "Address already in use" in second.log()
            assert second.workers() == []
        finally:
            second.stop()
        connect(first.port, "still-served").close()
    finally:
        first.stop()


def test_interrupts_stop_the_supervisor_not_its_workers(tmp_path: Path,
                                                        redis: Redis) -> None:
    """A supervisor started with SIGINT ignored (``cmd &`` in a script) ignores a
    SIGINT to its process group, and so do its workers (a spawn would otherwise give
    them SIGINT's default handling back): nobody stops, nobody is started again."""
    broker = Broker(tmp_path, redis, 3,
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        broker.wait_started()
        pids = sorted(broker.workers())
        os.killpg(broker.proc.pid, signal.SIGINT)
        time.sleep(1.5)  # (a worker that had stopped would be started again after 1 s)
        assert broker.proc.poll() is None
        assert sorted(broker.workers()) == pids
        assert b"ended" not in broker.log_bytes()
    finally:
        broker.stop()


def test_workers_start_where_the_supervisor_was_started(tmp_path: Path,
                                                        redis: Redis) -> None:
    """``--rundir`` moves twistd before the workers start: a relative path given to
    the supervisor (an ACL file here) still means the same file to every worker."""
    (tmp_path / "acl.txt").write_text("topic readwrite #\n")
    (tmp_path / "run").mkdir()
    broker = Broker(tmp_path, redis, 2, "--acl", "acl.txt", twistd=("--rundir=run",))
    try:
        broker.wait_started()
        connect(broker.port, "acl-client").close()
        assert b"cannot" not in broker.log_bytes()
    finally:
        broker.stop()


def test_a_killed_worker_is_started_again(tmp_path: Path, redis: Redis) -> None:
    broker = Broker(tmp_path, redis, 2)
    try:
        broker.wait_started()
        (worker,) = broker.workers()
        os.kill(worker, signal.SIGKILL)
        started_again(broker, worker)
    finally:
        broker.stop()


def started_again(broker: Broker, worker: int) -> None:
    """Until the supervisor has started worker 1 (``worker``, killed) again; then every
    process the kernel picks answers."""
    deadline = time.monotonic() + WAIT
    while broker.log_bytes().count(b"listens again") < 1:
        assert time.monotonic() < deadline, broker.log()
        time.sleep(0.1)
    (again,) = broker.workers()
    assert again != worker
    assert b"Worker 1 ended (killed by signal 9)" in broker.log_bytes()
    for i in range(16):
        connect(broker.port, f"after-{i}").close()


def test_a_stopped_worker_is_killed_and_started_again(tmp_path: Path, redis: Redis) -> None:
    """A worker that sends no heartbeat for --worker-timeout (here stopped with SIGSTOP,
    as a reactor turn that never ends would be) no longer keeps its share of the new
    connections: killed, and started again.  Before, nothing watched it."""
    broker = Broker(tmp_path, redis, 2, "--worker-timeout", "2")
    try:
        broker.wait_started()
        (worker,) = broker.workers()
        time.sleep(3)  # (a live worker's heartbeats keep it: nothing happens)
        assert broker.workers() == [worker]
        os.kill(worker, signal.SIGSTOP)
        started_again(broker, worker)
        assert b"sent no heartbeat for 2 s" in broker.log_bytes() or \
            b"sent no heartbeat for 3 s" in broker.log_bytes(), broker.log()
    finally:
        broker.stop()


def test_a_killed_supervisor_takes_its_workers_with_it(tmp_path: Path,
                                                       redis: Redis) -> None:
    broker = Broker(tmp_path, redis, 3)
    try:
        broker.wait_started()
        pids = broker.workers()
        assert len(pids) == 2
        os.kill(broker.proc.pid, signal.SIGKILL)
        broker.proc.wait()
        deadline = time.monotonic() + WAIT
        alive = pids
        while alive:
            assert time.monotonic() < deadline, f"still running: {alive}"
            time.sleep(0.1)
            alive = [pid for pid in pids if _running(pid)]
        assert broker.log_bytes().count(b"the supervisor is gone; stopping") == 2
    finally:
        broker.stop()


def _running(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # (not ours: ChildProcessError)
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_port_another_program_holds_fails_the_start(tmp_path: Path, redis: Redis) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        done = subprocess.run(
            [*twistd_command(), "-n", "--pidfile=", "mqttbroker", "--listen",
             f"tcp:{port}:interface=127.0.0.1", "--store", redis.url, "--workers", "2"],
            env=_env(), cwd=tmp_path, capture_output=True, timeout=60)
    finally:
        holder.close()
    assert done.returncode == 1, done
    assert b"could not start" in done.stdout + done.stderr
    assert b"Started worker" not in done.stdout + done.stderr
