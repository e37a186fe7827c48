"""``--workers N``: several broker processes on one port, nodes of one cluster.

In-process: the option checks and the workers' command lines, the ``SO_REUSEPORT``
sockets, and the supervisor with stand-in workers (small real processes that report
on the start pipe as a worker does) in the test's reactor, its timers on a ``Clock``.
Real ``twistd --workers`` processes on a real redis-server: tests/test_workers_twistd.py.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import textFileLogObserver
from twisted.python import usage
from twisted.trial.unittest import TestCase

from mqtt_twisted import workers
from mqtt_twisted._twistd import usage_exit
from mqtt_twisted.adapters.reuseport import share_ports, stream_reactor
from mqtt_twisted.adapters.udpbatch import BatchedPort
from mqtt_twisted.logs import TWISTD_LOGGER, twistd_logger
from mqtt_twisted.tap import Options
from tests.redisserver import free_port

# --- the options -----------------------------------------------------------------------


def _parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_workers_need_a_cluster_store() -> None:
    with pytest.raises(usage.UsageError, match="--workers 2 needs --store redis://"):
        _parse("--workers", "2", "--listen", "tcp:1883")


@pytest.mark.parametrize("listen, why", [
    ("unix:/tmp/mqtt.sock", "TCP and UDP ports only"),
    ("tcp:0", "give one"),
    ("ws=tcp:0:interface=127.0.0.1", "give one"),
    ("coap=udp:0", "give one"),
    ("tcp:port=00", "give one"),
])
def test_workers_need_fixed_tcp_or_udp_ports(listen: str, why: str) -> None:
    with pytest.raises(usage.UsageError, match=why):
        _parse("--workers", "2", "--store", "redis://127.0.0.1:6379/0", "--listen", listen)


def test_workers_are_at_least_one() -> None:
    with pytest.raises(usage.UsageError, match="workers"):
        _parse("--workers", "0")


def test_workers_join_a_cluster_named_by_pid_unless_named() -> None:
    options = _parse("--workers", "3", "--store", "redis://127.0.0.1:6379/0",
                     "--listen", "tcp:1883", "--listen", "coap=udp:5683")
    assert options["cluster-name"].endswith(f":{os.getpid()}")
    assert workers.node_name(options["cluster-name"], "auto", 2) == options["cluster-name"]
    assert workers.node_name("east", "east", 2, pid=41) == "east-w2-41"
    # (a worker started again is a node of another name: its predecessor is adopted)
    assert workers.node_name("east", "east", 2, pid=42) != "east-w2-41"
    one = _parse("--store", "redis://127.0.0.1:6379/0")
    assert one["cluster-name"] is None  # one process: no cluster unless asked for


def test_a_worker_is_told_by_its_environment() -> None:
    assert workers.this_worker({}) is None
    assert workers.this_worker({workers.WORKER_ENV: "2,3,4"}) == workers.Worker(2, 3, 4)


def test_a_worker_logs_where_its_supervisor_logs_and_runs_its_reactor() -> None:
    argv = ["--workers", "2", "--listen", "tcp:1883"]
    foreground = workers.worker_command(argv, {"nodaemon": True}, 1)
    assert foreground[foreground.index("--nodaemon"):] == [
        "--nodaemon", "--pidfile=", "mqttbroker", *argv]
    to_file = workers.worker_command(argv, {"nodaemon": True, "logfile": "/var/log/b.log"}, 2)
    assert "--logfile=/var/log/b.log.w2" in to_file
    daemon = workers.worker_command(argv, {"nodaemon": False}, 1)
    assert "--logfile=twistd.log.w1" in daemon
    syslog = workers.worker_command(argv, {"nodaemon": True, "syslog": True,
                                           "prefix": "mqtt"}, 3)
    assert ["--syslog", "--prefix=mqtt-w3"] == syslog[5:7]
    daemon_syslog = workers.worker_command(argv, {"syslog": True}, 1)  # (not twistd.log)
    assert "--syslog" in daemon_syslog and not any(
        a.startswith("--logfile") for a in daemon_syslog)
    rundir = workers.worker_command(argv, {"nodaemon": True, "rundir": "run/here"}, 1, "/srv")
    assert "--rundir=/srv/run/here" in rundir  # (from where the supervisor was started)
    chosen = workers.worker_command(argv, {"nodaemon": True, "reactor": "poll", "umask": 0o27,
                                           "logger": textFileLogObserver}, 1)
    assert {"--reactor=poll", "--umask=0027",
            "--logger=twisted.logger._file.textFileLogObserver"} <= set(chosen)
    assert chosen.index("--reactor=poll") < chosen.index("mqttbroker")
    for ours in (twistd_logger, TWISTD_LOGGER):  # (each worker makes its own from its options)
        assert not any(a.startswith("--logger") for a in workers.worker_command(
            argv, {"nodaemon": True, "logger": ours}, 1))


def test_a_workers_usage_error_reaches_its_supervisor(monkeypatch: Any) -> None:
    """A worker's one-line usage error goes on its start pipe too (a daemon's workers
    have no standard error to write it to)."""
    read, write = os.pipe()
    monkeypatch.setenv(workers.WORKER_ENV, f"1,{write},99")
    with pytest.raises(SystemExit):
        usage_exit("--config broker.yaml: cannot read the configuration file")
    os.close(write)
    assert os.read(read, 300) == b"1 --config broker.yaml: cannot read the configuration file"
    os.close(read)


# --- the shared listening sockets ------------------------------------------------------


class ReusePortTests(TestCase):
    """``adapters/reuseport.py``: a worker's listeners bind with SO_REUSEPORT."""

    def setUp(self) -> None:
        self.addCleanup(share_ports, False)

    def _listen(self, port: int) -> Any:
        endpoint = serverFromString(stream_reactor(global_reactor),
                                    f"tcp:{port}:interface=127.0.0.1")
        return endpoint.listen(Factory.forProtocol(Protocol))

    async def test_stream_listeners_share_a_port_only_when_told(self) -> None:
        port = free_port()
        first = await self._listen(port)
        self.addCleanup(first.stopListening)
        with pytest.raises(CannotListenError):
            await self._listen(port)  # one process, or another program: the port is taken
        await first.stopListening()
        share_ports()
        shared = [await self._listen(port), await self._listen(port)]
        for listening in shared:
            self.addCleanup(listening.stopListening)
            assert listening.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            assert listening.getHost().port == port

    async def test_the_supervisor_refuses_a_port_another_broker_shares(self) -> None:
        port = free_port()
        share_ports()
        other = await self._listen(port)  # another --workers broker's worker
        self.addCleanup(other.stopListening)
        share_ports(probe=True)
        with pytest.raises(CannotListenError):
            await self._listen(port)
        held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # (the same for UDP)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(("127.0.0.1", port))
        self.addCleanup(held.close)
        with pytest.raises(CannotListenError):
            BatchedPort(port, DatagramProtocol(), "127.0.0.1",
                        reactor=global_reactor).startListening()
        await other.stopListening()
        mine = await self._listen(port)  # free now: the probe passes
        self.addCleanup(mine.stopListening)

    def test_datagram_listeners_share_a_port_only_when_told(self) -> None:
        port = free_port()
        plain = BatchedPort(port, DatagramProtocol(), "127.0.0.1", reactor=global_reactor)
        plain.startListening()
        self.addCleanup(plain.stopListening)
        assert not plain.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        share_ports()
        port = free_port()
        shared = [BatchedPort(port, DatagramProtocol(), "127.0.0.1", reactor=global_reactor)
                  for _ in range(2)]
        for listening in shared:
            listening.startListening()
            self.addCleanup(listening.stopListening)
            assert listening.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)


# --- the supervisor, with stand-in workers ----------------------------------------------

#: A stand-in worker: reports on the start pipe as a worker does, then behaves as told.
_STAND_IN = """
import os, sys, signal, time
how = sys.argv[1]
if how == "silent-exit":
    sys.exit(3)
if how == "late":  # SIGHUP's default action (ending it) until it reports
    time.sleep(1.0)
signal.signal(signal.SIGHUP, lambda *_: os._exit(7))  # (told: reloaded)
os.write(3, b"0" if how != "refuse" else b"1 the store said no")
os.close(3)
if how in ("refuse", "exit"):
    sys.exit(0)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if how == "beat":  # a live worker's heartbeats, every 20 ms of real time
    while True:
        os.write(5, b".")
        time.sleep(0.02)
while os.read(4, 1):  # (the lifeline: returns b"" when the supervisor is gone)
    pass
"""


class SupervisorTests(TestCase):
    """:class:`workers.Supervisor` with real child processes that stand in for workers."""

    def _supervisor(self, count: int, *how: str, timeout: float = 0) -> workers.Supervisor:
        self.clock = Clock()
        ways = list(how)
        supervisor = workers.Supervisor(
            global_reactor, count,
            lambda index: [sys.executable, "-c", _STAND_IN,
                           ways.pop(0) if ways else "serve"], clock=self.clock,
            timeout=timeout)
        self.addCleanup(self._stop, supervisor)
        return supervisor

    def _stop(self, supervisor: workers.Supervisor) -> Deferred[Any]:
        return supervisor.stopService()

    async def test_start_fires_when_every_worker_listens_and_stop_ends_them(self) -> None:
        supervisor = self._supervisor(3)
        supervisor.startService()
        await supervisor.start_workers()
        pids = [p.transport.pid for p in supervisor.workers.values()]
        assert sorted(supervisor.workers) == [1, 2] and all(pids)
        await supervisor.stopService()
        assert supervisor.workers == {}
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)

    async def test_a_worker_that_refuses_fails_the_start_with_its_reason(self) -> None:
        supervisor = self._supervisor(2, "refuse")
        with pytest.raises(workers.WorkerFailed, match="the store said no"):
            await supervisor.start_workers()

    async def test_a_worker_that_ends_without_a_word_fails_the_start(self) -> None:
        supervisor = self._supervisor(2, "silent-exit")
        with pytest.raises(workers.WorkerFailed, match=r"ended before it listened \(exit "
                                                       r"status 3\)"):
            await supervisor.start_workers()

    async def test_a_worker_that_cannot_be_spawned_fails_the_start(self) -> None:
        self.clock = Clock()
        tries: list[int] = []

        def command(index: int) -> list[str]:
            tries.append(index)
            return ["/nonexistent/python"]

        supervisor = workers.Supervisor(global_reactor, 2, command, clock=self.clock)
        self.addCleanup(self._stop, supervisor)
        with pytest.raises(workers.WorkerFailed, match="could not be started"):
            await supervisor.start_workers()
        self.clock.advance(0)
        assert supervisor.workers == {} and tries == [1]
        self.clock.advance(workers.RESTART_FIRST)  # tried again later, as one that died
        assert tries == [1, 1]

    async def test_a_worker_that_dies_is_started_again_later_each_time(self) -> None:
        supervisor = self._supervisor(2, "exit", "exit", "serve")
        await supervisor.start_workers()
        first = supervisor.workers[1]
        await first.ended
        assert 1 not in supervisor.workers  # waiting for its restart
        self.clock.advance(workers.RESTART_FIRST - 0.01)
        assert 1 not in supervisor.workers
        self.clock.advance(0.01)
        second = supervisor.workers[1]
        assert second is not first
        await second.ended  # it died young again: twice as long now
        self.clock.advance(workers.RESTART_FIRST * 2 - 0.01)
        assert 1 not in supervisor.workers
        self.clock.advance(0.01)
        await supervisor.workers[1].ready  # the third one serves

    async def test_sighup_reaches_workers_that_listen_only(self) -> None:
        supervisor = self._supervisor(2, "late")
        starting = supervisor.start_workers()
        supervisor.reload()  # while it starts: not passed on (it would end it)
        await starting
        worker = supervisor.workers[1]
        supervisor.reload()
        await worker.ended
        assert worker.how == "exit status 7"  # it got this one

    async def test_a_stopping_supervisor_starts_nobody_again(self) -> None:
        supervisor = self._supervisor(2, "exit")
        await supervisor.start_workers()
        await supervisor.workers[1].ended
        await supervisor.stopService()
        self.clock.advance(workers.RESTART_MAX)
        assert supervisor.workers == {}

    async def _advance(self, seconds: int) -> None:
        """The supervisor's clock ``seconds`` on, a second at a time, each after a real
        50 ms in which the workers' heartbeats are read."""
        for _ in range(seconds):
            await deferLater(global_reactor, 0.05, lambda: None)
            self.clock.advance(workers.HEARTBEAT)

    async def test_a_worker_without_heartbeats_is_killed_and_started_again(self) -> None:
        supervisor = self._supervisor(3, "beat", "serve", timeout=5)
        await supervisor.start_workers()
        beating, silent = supervisor.workers[1], supervisor.workers[2]
        await self._advance(4)
        assert not silent.exited  # (within its timeout)
        await self._advance(3)
        await silent.ended
        assert silent.how == "killed by signal 9"
        assert supervisor.workers[1] is beating and not beating.exited
        self.clock.advance(workers.RESTART_FIRST)  # started again, as a worker that died
        assert supervisor.workers[2] is not silent
        await supervisor.workers[2].ready

    async def test_the_supervisors_own_late_turn_kills_nobody(self) -> None:
        supervisor = self._supervisor(2, "serve", timeout=5)
        await supervisor.start_workers()
        worker = supervisor.workers[1]
        self.clock.advance(workers.HEARTBEAT)
        self.clock.advance(20)  # one look 20 s late: its pipes were not read meanwhile
        await self._advance(4)
        assert not worker.exited
        await self._advance(2)
        await worker.ended
        assert worker.how == "killed by signal 9"

    async def test_no_timeout_no_watch(self) -> None:
        supervisor = self._supervisor(2, "serve", timeout=0)
        await supervisor.start_workers()
        await self._advance(3)
        self.clock.advance(1000)
        await deferLater(global_reactor, 0.05, lambda: None)
        assert not supervisor.workers[1].exited
