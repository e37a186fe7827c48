"""``/metrics`` under ``--workers`` (``adapters/workermetrics.py``), in one process: a
worker's answer survives its JSON, every worker's samples are labelled with it, and a
scrape is answered without a worker that is dead, hung or answers too much.  (Real
``twistd --workers`` scraped through the shared port: tests/test_workers_twistd.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from mqtt_twisted.adapters import workermetrics
from mqtt_twisted.adapters.metrics import local_metrics, render
from mqtt_twisted.adapters.workermetrics import UP, WorkerMetrics, decode, encode, merge
from mqtt_twisted.core.metrics import COUNTER, HISTOGRAM, INFO, Family


def families(connects: int) -> list[Family]:
    return [
        Family("mqtt_connects", COUNTER, "Connects.").add(connects),
        Family("mqtt_build", INFO, "Version.", ("version",)).add(1, "9.9"),
        Family("mqtt_publish_bytes", HISTOGRAM, "Sizes.").add(
            ([(10.0, 1), (float("inf"), 3)], 3, 42.0)),
    ]


def broker(connects: int) -> Any:
    """A stand-in broker: what a worker's answer reads (its admin's metrics)."""
    admin = SimpleNamespace(metrics=lambda: succeed(families(connects)))
    return SimpleNamespace(gateway=SimpleNamespace(admin=admin))


def samples(metrics: list[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``metrics`` as rendered and parsed back, by name and labels."""
    body, _ = render(metrics, None)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


class AnswerTests(TestCase):
    def test_json_keeps_every_sample(self) -> None:
        mine = local_metrics(families(5))
        self.assertEqual(samples(decode(encode(mine))), samples(mine))

    def test_each_workers_samples_are_labelled_and_up_says_who_answered(self) -> None:
        merged = samples(merge({0: local_metrics(families(2)), 1: None,
                                2: local_metrics(families(7))}))
        self.assertEqual(merged["mqtt_connects_total", (("worker", "0"),)], 2)
        self.assertEqual(merged["mqtt_connects_total", (("worker", "2"),)], 7)
        self.assertNotIn(("mqtt_connects_total", (("worker", "1"),)), merged)
        self.assertEqual(merged["mqtt_publish_bytes_bucket", (("le", "+Inf"), ("worker", "2"))],
                         3)
        self.assertEqual(merged["mqtt_build_info", (("version", "9.9"), ("worker", "0"))], 1)
        self.assertEqual({labels: value for (name, labels), value in merged.items()
                          if name == UP},
                         {(("worker", "0"),): 1, (("worker", "1"),): 0, (("worker", "2"),): 1})


class _Mute(Protocol):
    """A worker that accepts and never answers (hung)."""

    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class GatherTests(TestCase):
    """Three workers' sockets in one reactor; worker 1 is the one that misbehaves."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.shares = [WorkerMetrics(reactor, broker(10 * index), index, 3, self.directory)
                       for index in (0, 2)]
        for share in self.shares:
            share.startService()
            self.addCleanup(share.stopService)
        self.patch(workermetrics, "ASK_TIMEOUT", 0.3)

    @inlineCallbacks
    def listen_as_worker_1(self, protocol: type[Protocol]) -> Any:
        factory = Factory.forProtocol(protocol)
        factory.connections = []  # type: ignore[attr-defined]
        port = yield UNIXServerEndpoint(reactor, os.path.join(self.directory, "w1.sock")
                                        ).listen(factory)
        self.addCleanup(port.stopListening)
        return factory

    @inlineCallbacks
    def scrape(self) -> Any:
        own = yield self.shares[0].own()
        merged = yield self.shares[0].gather(own)
        return samples(merged)

    @inlineCallbacks
    def test_every_worker_answers(self) -> Any:
        found = yield self.scrape()
        self.assertEqual(found["mqtt_connects_total", (("worker", "2"),)], 20)
        self.assertEqual(found[UP, (("worker", "1"),)], 0)  # (no socket: dead)
        self.assertEqual(found[UP, (("worker", "0"),)], 1)

    @inlineCallbacks
    def test_a_hung_worker_is_left_out_after_the_timeout(self) -> Any:
        factory = yield self.listen_as_worker_1(_Mute)
        started = reactor.seconds()
        found = yield self.scrape()
        self.assertLess(reactor.seconds() - started, 2.0)
        self.assertEqual(found[UP, (("worker", "1"),)], 0)
        self.assertEqual(found[UP, (("worker", "2"),)], 1)
        (hung,) = factory.connections
        yield hung.lost  # the asker hung up on it

    @inlineCallbacks
    def test_an_answer_too_long_is_left_out(self) -> Any:
        self.patch(workermetrics, "MAX_ANSWER", 100_000)  # (a worker's: ~10k)

        big = Metric("mqtt_big", "Big.", "gauge")
        for i in range(10_000):
            big.add_sample("mqtt_big", {"n": str(i)}, i)
        answer = encode([big])  # (valid: only its size is wrong)
        self.assertGreater(len(answer), 200_000)

        class Flood(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(answer)
                self.transport.loseConnection()

        yield self.listen_as_worker_1(Flood)
        found = yield self.scrape()
        self.assertEqual(found[UP, (("worker", "1"),)], 0)
        self.assertEqual(found[UP, (("worker", "2"),)], 1)


def test_directories_of_supervisors_that_are_gone_are_removed(monkeypatch: Any) -> None:
    """A supervisor killed with SIGKILL leaves its directory of sockets; the next one
    made in the same place removes it, and leaves a live supervisor's alone."""
    tmp_path = Path(tempfile.mkdtemp(dir="/tmp"))  # (pytest's are too deep for sockets)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(workermetrics.DIRECTORY_ENV, raising=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f"{workermetrics.PREFIX}{dead.pid}-abc"
    gone.mkdir()
    (gone / "w0.sock").touch()
    alive = tmp_path / f"{workermetrics.PREFIX}{os.getppid()}-def"
    alive.mkdir()
    other = tmp_path / "mqtt-twisted-workers-notapid"
    other.mkdir()
    try:
        share = workermetrics.share(reactor, broker(0), 0, 2)
        made = share.directory
    finally:
        workermetrics.unshare()
        os.environ.pop(workermetrics.DIRECTORY_ENV, None)
    assert made.startswith(str(tmp_path / f"{workermetrics.PREFIX}{os.getpid()}-"))
    try:
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [alive.name, other.name, os.path.basename(made)])
    finally:
        shutil.rmtree(tmp_path)
