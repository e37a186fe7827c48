"""TLS to Redis Sentinel (``--store rediss+sentinel://...``, issue 16's leftovers): a real
master and a real ``redis-sentinel``, both on ``tls-port`` only (no plain port), asking
clients for a certificate; two cluster nodes find the master through the sentinel and a
QoS 1 message crosses from one to the other.  Certificates from ``tests/certs.py``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqtt_twisted.store.redis import parse_url
from tests.certs import CA
from tests.livebroker import LiveBroker
from tests.redisserver import free_port
from tests.test_cluster_e2e import Client, routed
from tests.test_cluster_sentinel import REDIS_CLI, REDIS_SENTINEL, REDIS_SERVER, SERVICE

needs_sentinel = pytest.mark.skipif(
    not Path(REDIS_SENTINEL).exists(),
    reason="redis-sentinel is not installed (Debian: apt-get install redis-sentinel)")


class TLSServers:
    """A master and a sentinel watching it, both TLS only, client certificates asked."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[subprocess.Popen[bytes]] = []
        ca = CA(str(directory))
        self.ca = ca.cert_path
        server = ca.issue("redis", server=True)
        # Redis's own client side (the sentinel asking the master) needs a client one.
        peer = ca.issue("sentinel")
        self.client = ca.issue("mqtt-twisted")
        tls = ["--tls-cert-file", server.cert_path, "--tls-key-file", server.key_path,
               "--tls-client-cert-file", peer.cert_path,
               "--tls-client-key-file", peer.key_path,
               "--tls-ca-cert-file", self.ca, "--tls-auth-clients", "yes"]
        self.master = free_port()
        data = directory / "master"
        data.mkdir()
        self._spawn(self.master, [REDIS_SERVER, "--port", "0", "--tls-port", str(self.master),
                                  "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                  "--dir", str(data), *tls], "master")
        self.sentinel = free_port()
        conf = directory / "sentinel.conf"
        conf.write_text(
            f"port 0\ntls-port {self.sentinel}\nbind 127.0.0.1\ndaemonize no\n"
            f"dir {directory}\ntls-replication yes\n"
            + "".join(f"{tls[i][2:]} {tls[i + 1]}\n" for i in range(0, len(tls), 2))
            + f"sentinel monitor {SERVICE} 127.0.0.1 {self.master} 1\n")
        self._spawn(self.sentinel, [REDIS_SENTINEL, str(conf)], "sentinel")

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(
            [REDIS_CLI, "--tls", "--cacert", self.ca, "--cert", self.client.cert_path,
             "--key", self.client.key_path, "-p", str(port), *args],
            capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    def _spawn(self, port: int, args: list[str], name: str) -> None:
        log_path = self.directory / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        deadline = time.monotonic() + 15
        while self.cli(port, "PING") != "PONG":
            if proc.poll() is not None:
                text = log_path.read_text(errors="replace")
                if "TLS" in text and "not" in text and "support" in text:
                    pytest.skip("redis-server is built without TLS")
                raise AssertionError(f"{name} exited:\n{text[-2000:]}")
            assert time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.1)

    def url(self, cert: bool = True, ca: bool = True) -> str:
        query = []
        if ca:
            query.append(f"ca={self.ca}")
        if cert:
            query += [f"cert={self.client.cert_path}", f"key={self.client.key_path}"]
        return (f"rediss+sentinel://127.0.0.1:{self.sentinel}/{SERVICE}/0?"
                + "&".join([*query, "connect_timeout=2"]))

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[TLSServers]:
    made = TLSServers(tmp_path)
    yield made
    made.stop()


def test_tls_sentinel_url_parsed() -> None:
    """``rediss+sentinel://``: TLS, and the ca/cert/key options of ``rediss://``
    (which a plain ``redis+sentinel://`` URL still refuses)."""
    o = parse_url("rediss+sentinel://h1,h2:26380/mymaster/2?ca=/ca.pem&cert=/c.pem&key=/k.pem")
    assert (o.tls, o.sentinels, o.service, o.db) == (
        True, [("h1", 26379), ("h2", 26380)], "mymaster", 2)
    assert (o.ca, o.cert, o.key) == ("/ca.pem", "/c.pem", "/k.pem")
    assert not parse_url("redis+sentinel://h/m").tls
    with pytest.raises(ValueError, match="need rediss"):
        parse_url("redis+sentinel://h/m?ca=/ca.pem")
    with pytest.raises(ValueError, match="both cert and key"):
        parse_url("rediss+sentinel://h/m?cert=/c.pem")


@needs_sentinel
def test_cluster_through_a_tls_sentinel(tmp_path: Path, servers: TLSServers) -> None:
    """Two nodes on ``rediss+sentinel://``: the sentinel (TLS only) names the master
    (TLS only); the nodes connect to it with the client certificate, and a QoS 1
    message published on A reaches B's subscriber."""
    assert servers.cli(servers.sentinel, "SENTINEL", "get-master-addr-by-name", SERVICE) \
        .split() == ["127.0.0.1", str(servers.master)]
    nodes: list[LiveBroker] = []
    made: list[Client] = []
    try:
        for name in "AB":
            directory = tmp_path / name
            directory.mkdir()
            nodes.append(LiveBroker(directory, "--store", servers.url(), "--cluster", name))
        a, b = nodes
        pub, sub = Client(a.port, "pub"), Client(b.port, "sub")
        made += [pub, sub]
        sub.subscribe("tls/#", 1)
        routed(pub, "tls/probe", sub)
        pub.publish("tls/t", b"through TLS", 1).wait_for_publish(10)
        got = sub.take(1)
        assert [(m.topic, m.payload) for m in got] == [("tls/t", b"through TLS")]
        assert "rediss+sentinel://" in a.log(), a.log()[-2000:]
    finally:
        for client in made:
            client.close()
        for node in nodes:
            node.stop()
    for node in nodes:
        assert node.unhandled() == [], node.log()


@needs_sentinel
@pytest.mark.parametrize("missing", ["ca", "cert"])
def test_tls_sentinel_refused(tmp_path: Path, servers: TLSServers, missing: str) -> None:
    """Without the CA (the sentinel's certificate is not trusted) or without the client
    certificate (the sentinel asks for one), the node says in one line that it could
    not reach the store, and exits 1."""
    from tests.test_twistd_run import _env, twistd_command

    url = servers.url(cert=missing != "cert", ca=missing != "ca")
    done = subprocess.run(
        [*twistd_command(), "-n", "--pidfile=", "mqttbroker", "--listen",
         f"tcp:{free_port()}:interface=127.0.0.1", "--store", url, "--cluster", "X"],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "The broker could not start: store redis:" in done.stdout, done.stdout[-3000:]
    assert "Traceback" not in done.stdout, done.stdout[-3000:]
