"""Helpers for the ``mqtt-twisted`` command-line tests: run the CLI as a real subprocess
(``sys.executable -m mqtt_twisted.cli``, so no install is needed), a subscriber process
read until it is subscribed, and a real Mosquitto broker.

Blocking subprocesses with timeouts, no reactor: the tests are SynchronousTestCases."""

from __future__ import annotations

import atexit
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.certs import CA
from tests.livebroker import LiveBroker
from tests.redisserver import free_port
from tests.test_twistd_run import _env

CLI = [sys.executable, "-m", "mqtt_twisted.cli"]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
TIMEOUT = 20.0


def have(path: str) -> bool:
    return os.access(path, os.X_OK)


def cli(*args: str, stdin: bytes | None = None,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Run ``mqtt-twisted ARGS`` to the end."""
    return subprocess.run([*CLI, *args], input=stdin if stdin is not None else b"",
                          capture_output=True, env=_env(), timeout=timeout)


def run(command: list[str], stdin: bytes = b"",
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, input=stdin, capture_output=True, timeout=timeout)


class Subscriber:
    """A subscriber process started with ``-d``; ``__init__`` returns once its SUBACK
    line is out, so that what is published next reaches it.  ``finish()`` waits for it
    to exit and returns (exit code, the non-debug output lines, stderr)."""

    MARKERS = (b"received SUBACK", b"Subscribed (mid")

    def __init__(self, command: list[str], timeout: float = TIMEOUT) -> None:
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=_env())
        self.out = b""
        deadline = time.monotonic() + timeout
        while not any(m in self.out for m in self.MARKERS):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                self.proc.kill()
                raise AssertionError(f"no SUBACK from {command}: {self.out!r}")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                err = self.proc.stderr.read()
                raise AssertionError(f"{command} ended before its SUBACK: {self.out!r} {err!r}")
            self.out += chunk

    def finish(self, timeout: float = TIMEOUT) -> tuple[int, list[bytes], bytes]:
        try:
            rest, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, err = self.proc.communicate()
            raise AssertionError(f"the subscriber did not end: {self.out + rest!r}") from None
        lines = [line for line in (self.out + rest).split(b"\n")
                 if not line.startswith(b"Client ") and not line.startswith(b"Subscribed (")]
        if lines and lines[-1] == b"":
            lines.pop()
        return self.proc.returncode, lines, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


class Mosquitto:
    """A real Mosquitto on 127.0.0.1: plain ``port``, and ``tls_port`` if given certificates."""

    def __init__(self, directory: Path, extra: str = "", tls: tuple[str, str] | None = None,
                 password_file: str | None = None) -> None:
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        user = "user root\n" if os.geteuid() == 0 else ""
        auth = (f"allow_anonymous false\npassword_file {password_file}\n" if password_file
                else "allow_anonymous true\n")
        conf = f"{user}per_listener_settings false\n{auth}persistence false\n"
        conf += f"listener {self.port} 127.0.0.1\n"
        if tls:
            conf += (f"listener {self.tls_port} 127.0.0.1\ncertfile {tls[0]}\n"
                     f"keyfile {tls[1]}\n")
        path = directory / "mosquitto.conf"
        path.write_text(conf + extra)
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(path)], cwd=directory,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.tls_port or self.port)) == 0:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("mosquitto did not start")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Fixture:
    """A broker and what the tests need to know about it (port, CA...), in ``directory``."""

    def __init__(self, directory: str, broker: Any, **values: Any) -> None:
        self.directory, self.broker = directory, broker
        self.__dict__.update(values)

    def alive(self) -> bool:
        return self.broker.alive()

    def stop(self) -> None:
        self.broker.stop()
        shutil.rmtree(self.directory, True)


_SHARED: dict[str, Fixture] = {}


def shared(name: str, start: Any) -> Fixture:
    """The fixture ``name`` of this test run: started by ``start()`` on first use (or if
    it died), stopped at exit.  trial has no setUpClass, and a broker per test would
    cost seconds each (tests/etcdserver.py does the same for etcd)."""
    fixture = _SHARED.get(name)
    if fixture is None or not fixture.alive():
        fixture = _SHARED[name] = start()
        atexit.register(fixture.stop)
    return fixture


def start_ours() -> Fixture:
    """A real ``twistd -n mqttbroker`` with a plain and a TLS (``ssl:``) listener."""
    directory = tempfile.mkdtemp(prefix="cli-ours-")
    ca = CA(directory)
    server = ca.issue("server", server=True)
    tls_port = free_port()
    broker = LiveBroker(Path(directory), listen=[
        f"mqtt=ssl:{tls_port}:interface=127.0.0.1:privateKey={server.key_path}:"
        f"certKey={server.cert_path}"])
    return Fixture(directory, broker, port=broker.port, tls_port=tls_port,
                   ca_path=ca.cert_path)


def start_mosquitto() -> Fixture:
    """A real Mosquitto: plain, TLS, and TLS requiring a client certificate."""
    directory = tempfile.mkdtemp(prefix="cli-mosquitto-")
    ca = CA(directory)
    server = ca.issue("server", server=True)
    client_cert = ca.issue("client-cert")
    cert_port = free_port()
    broker = Mosquitto(Path(directory), tls=(server.cert_path, server.key_path),
                       extra=f"listener {cert_port} 127.0.0.1\n"
                             f"certfile {server.cert_path}\nkeyfile {server.key_path}\n"
                             f"cafile {ca.cert_path}\nrequire_certificate true\n")
    return Fixture(directory, broker, port=broker.port, tls_port=broker.tls_port,
                   ca_path=ca.cert_path, cert_port=cert_port, client_cert=client_cert)
