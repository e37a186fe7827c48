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
and a new ``#`` subscriber over 100,000 retained messages of 10 KB (``--retained``).

    python bench/hostile.py --attack retained_wildcard -- --max-retained-bytes 0
    python bench/hostile.py --attack retained_wildcard --broker mosquitto
"""

from __future__ import annotations

import argparse
import os
import shutil
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

# --- wire ----------------------------------------------------------------------------------


def vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + vbi(len(body)) + body


def connect(client_id: str, version: int = 4, properties: bytes = b"") -> bytes:
    """CONNECT, clean start, keep alive 60; ``properties`` a v5 property list."""
    head = string("MQTT") + bytes((version, 0x02)) + (60).to_bytes(2, "big")
    if version == 5:
        head += vbi(len(properties)) + properties
    return packet(0x10, head + string(client_id))


def publish(topic: str | bytes, payload: bytes = b"", retain: bool = False,
            version: int = 4, properties: bytes = b"") -> bytes:
    body = string(topic)
    if version == 5:
        body += vbi(len(properties)) + properties
    return packet(0x30 | (1 if retain else 0), body + payload)


def subscribe(topic_filter: str | bytes, packet_id: int = 1, version: int = 4) -> bytes:
    body = packet_id.to_bytes(2, "big") + (b"\x00" if version == 5 else b"")
    return packet(0x82, body + string(topic_filter) + b"\x00")


def user_properties(count: int) -> bytes:
    return b"\x26" + string("k") + string("v") + (b"\x26\x00\x01k\x00\x01v" * (count - 1))


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

    def start(self) -> Broker:
        self.port, self.http_port = free_port(), free_port()
        self.directory = tempfile.mkdtemp(prefix="hostile-")
        if self.kind == "mosquitto":
            conf = Path(self.directory) / "mosquitto.conf"
            conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
            command = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)]
        else:
            twistd = Path(sys.executable).with_name("twistd")
            command = [str(twistd) if twistd.exists() else "twistd", "-n", "--pidfile=",
                       "mqttbroker", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                       "--listen", f"http=tcp:{self.http_port}:interface=127.0.0.1",
                       "--sys-interval", "0", *self.extra]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(command, cwd=self.directory, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


# --- attacks -------------------------------------------------------------------------------


def _send(sock: socket.socket, data: bytes) -> bool:
    """Send all of ``data``; False when the broker closed the connection."""
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def _open(port: int, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)
    if first:
        sock.sendall(first)
    return sock


def _each_connection(port: int, packets: list[bytes], version: int = 4) -> int:
    """Send ``packets`` in order, reconnecting whenever the broker closes; the number the
    broker refused (closed on)."""
    refused = 0
    sock = _open(port, connect("attacker", version))
    for data in packets:
        if not _send(sock, data):
            refused += 1
            sock.close()
            sock = _open(port, connect("attacker", version))
    time.sleep(0.5)
    sock.close()
    return refused


def _deep(i: int) -> str:
    """The i-th distinct topic of 65,535 levels (65,535 bytes: one level holds an x)."""
    return "/" * i + "x" + "/" * (65533 - i)


def deep_retained(broker: Broker) -> str:
    """200 retained PUBLISHes, each to its own topic of 65,535 levels (13 MB)."""
    packets = [publish(_deep(i), b"x", retain=True) for i in range(200)]
    _each_connection(broker.port, packets)
    return f"{retained_count(broker)}/200 retained"


def deep_filters(broker: Broker) -> str:
    """50 SUBSCRIBEs of 65,535-level filters, one connection that stays."""
    sock = _open(broker.port, connect("subscriber"))
    sock.recv(4)
    for i in range(50):
        _send(sock, subscribe(_deep(i), i + 1))
    codes = _suback_codes(sock)
    sock.close()
    if not codes:
        return "cut off"
    return f"{codes.count(0x80)}/{len(codes)} SUBACK 0x80"


def _suback_codes(sock: socket.socket) -> list[int]:
    """The return codes of the SUBACKs that arrive until the socket is quiet for 1 s."""
    codes: list[int] = []
    for first, body in _packets(sock):
        if first == 0x90:
            codes.extend(body[2:])
    return codes


def _packets(sock: socket.socket) -> list[tuple[int, bytes]]:
    """(first byte, body) of the packets that arrive until the socket is quiet for 1 s."""
    data = b""
    sock.settimeout(1.0)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return _split(data)[0]


def _split(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole packets at the start of ``data`` as (first byte, body), and the rest."""
    found, pos = [], 0
    while pos + 2 <= len(data):
        first, length, shift, i = data[pos], 0, 0, pos + 1
        while i < len(data):
            length |= (data[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not data[i - 1] & 0x80:
                break
        else:
            break
        if i + length > len(data):
            break
        found.append((first, data[i:i + length]))
        pos = i + length
    return found, data[pos:]


def retained_count(broker: Broker) -> int:
    """How many retained messages a new subscriber to '#' gets."""
    sock = _open(broker.port, connect("counter"))
    _send(sock, subscribe("#"))
    # Until no retained PUBLISH for 1 s: '#' also matches the bystander's pings, so the
    # socket is never quiet (waiting for quiet waited for the keep-alive cut-off, 90 s).
    count, rest, last = 0, b"", time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - last < 1.0:
        try:
            chunk = sock.recv(1 << 20)
        except OSError:
            continue
        if not chunk:
            break
        found, rest = _split(rest + chunk)
        retained = sum(1 for first, _ in found if first & 0xF1 == 0x31)
        if retained:
            count, last = count + retained, time.monotonic()
    sock.close()
    return count


def huge_announced(broker: Broker) -> str:
    """8 sockets announce 256 MB CONNECTs and stream zeros for 7 s."""
    stop = time.monotonic() + 7
    closed = [0]

    def one() -> None:
        sock = _open(broker.port, b"\x10" + vbi(268_435_455))
        chunk = bytes(1 << 16)
        while time.monotonic() < stop:
            if not _send(sock, chunk):
                closed[0] += 1
                return
        sock.close()

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return f"{closed[0]}/8 cut off"


def connect_properties(broker: Broker) -> str:
    """A v5 CONNECT with 1,000,000 user properties (7 MB)."""
    sock = _open(broker.port)
    ok = _send(sock, connect("props", 5, user_properties(1_000_000)))
    try:
        answer = sock.recv(16)
    except OSError:
        answer = b""
    sock.close()
    return "cut off" if not ok or not answer else f"answered {answer[:4].hex()}"


def publish_properties(broker: Broker) -> str:
    """After CONNECT, a v5 PUBLISH with 1,000,000 user properties (7 MB)."""
    sock = _open(broker.port, connect("props", 5))
    sock.recv(64)
    ok = _send(sock, publish("t", b"x", version=5, properties=user_properties(1_000_000)))
    try:
        answer = sock.recv(16)
    except OSError:
        answer = b""
    sock.close()
    return "cut off" if not ok else f"answered {answer[:4].hex() or 'nothing'}"


def alias_amplification(broker: Broker) -> str:
    """A v5 subscriber to 'a/#' that never reads; a publisher sends one 60,000-byte topic
    with alias 1, then ~700 KB of alias-only PUBLISHes (8 bytes each)."""
    sub = _open(broker.port, connect("sink", 5))
    sub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    _send(sub, subscribe("a/#", 1, 5))
    time.sleep(0.2)
    pub = _open(broker.port, connect("amplifier", 5))
    topic = "a/" + "x" * 59998
    alias = b"\x23\x00\x01"
    _send(pub, publish(topic, b"", version=5, properties=alias))
    one = publish(b"", b"", version=5, properties=alias)
    burst = one * (700_000 // len(one))
    _send(pub, burst)  # one send: the broker reads as much as its buffer takes at once
    time.sleep(2.0)
    refused = any(first == 0xE0 for first, _ in _packets(pub))  # DISCONNECT
    pub.close()
    sub.close()
    return "topic refused" if refused else f"{len(burst) // 1000} KB sent"


def slow_http_head(broker: Broker) -> str:
    """An HTTP request head to ``http=`` trickled one byte every 4 s (ours only)."""
    if broker.kind != "ours":
        return "n/a"
    sock = _open(broker.http_port)
    head = b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    started = time.monotonic()
    for i in range(len(head)):
        if not _send(sock, head[i:i + 1]):
            break
        try:
            sock.settimeout(4)
            if sock.recv(64):
                return f"408 after {time.monotonic() - started:.1f} s"
        except TimeoutError:
            continue
        except OSError:
            break
    return f"closed after {time.monotonic() - started:.1f} s"


def flood(broker: Broker) -> str:
    """4 clients send 8-byte QoS 0 PUBLISHes (to a topic nobody subscribes to) as fast
    as their sockets take them for 5 s: each 64 KB read is 8,000 messages."""
    stop = time.monotonic() + 5
    sent = [0]
    burst = publish("f", b"xyz") * 8192  # 8 bytes each

    def one(i: int) -> None:
        sock = _open(broker.port, connect(f"flood{i}"))
        while time.monotonic() < stop:
            if not _send(sock, burst):
                return
            sent[0] += 8192
        sock.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return f"{sent[0] / 5 / 1000:.0f}k msg/s sent"


#: SSE streams ``unread_sse`` opens (``--sse-streams``; the issue's figure was 500).
SSE_STREAMS = 100
#: Retained messages and their size for ``retained_wildcard`` (``--retained N``; the
#: issue's figure: 100,000 of 10 KB).
RETAINED, RETAINED_SIZE = 100_000, 10_000


def unread_sse(broker: Broker) -> str:
    """``SSE_STREAMS`` SSE streams on ``http=`` that never read (4 KB receive buffers)
    while a publisher sends 200-byte messages to them as fast as it can, for up to 60 s:
    when were they all cut off, and how fast could it publish meanwhile (ours only)."""
    if broker.kind != "ours":
        return "n/a"
    streams = []
    for _ in range(SSE_STREAMS):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", broker.http_port))
        sock.sendall(b"GET /subscribe?topic=s/%23 HTTP/1.1\r\nHost: x\r\n"
                     b"Accept: text/event-stream\r\n\r\n")
        streams.append(sock)
    time.sleep(1.0)
    pub = _open(broker.port, connect("sse-publisher"))
    burst = publish("s/x", b"y" * 200) * 100
    started = time.monotonic()
    sent, all_cut = 0, None
    while time.monotonic() - started < 60 and all_cut is None:
        if not _send(pub, burst):
            break
        sent += 100
        if sent % 10_000 == 0:
            cut = sum(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != 1
                      for s in streams)  # no longer ESTABLISHED
            if cut == len(streams):
                all_cut = time.monotonic() - started
    rate = sent / (time.monotonic() - started)
    for sock in streams:
        sock.close()
    pub.close()
    when = f"all cut off in {all_cut:.0f} s" if all_cut is not None else "not all cut off"
    return f"{when}, {rate / 1000:.1f}k msg/s"


def _load_retained(broker: Broker) -> None:
    """``RETAINED`` retained messages of ``RETAINED_SIZE`` bytes, one topic each; returns
    once the broker has handled them all (a PINGREQ behind them is answered)."""
    sock = _open(broker.port, connect("retained-loader"))
    sock.settimeout(300)
    assert sock.recv(4)[:1] == b"\x20"
    body = b"r" * RETAINED_SIZE
    for start in range(0, RETAINED, 1000):
        sock.sendall(b"".join(publish(f"load/{n:06d}", body, retain=True)
                              for n in range(start, min(RETAINED, start + 1000))))
    sock.sendall(b"\xc0\x00")
    data = b""
    while not data.endswith(b"\xd0\x00"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()


def retained_wildcard(broker: Broker) -> str:
    """A new ``#`` subscriber over ``RETAINED`` retained messages of ``RETAINED_SIZE``
    bytes (loaded before the bystander's figures start): how long until it has them all,
    and what the bystander saw meanwhile.  Ours needs ``--max-retained-bytes 0`` (or
    more than 512 MiB) for the issue's 1 GB."""
    sock = _open(broker.port, connect("wildcard"))
    sock.settimeout(60)
    started = time.monotonic()
    _send(sock, subscribe("#"))
    expected = RETAINED * len(publish(f"load/{0:06d}", b"r" * RETAINED_SIZE, retain=True))
    received = -4 - 5  # CONNACK, SUBACK
    while received < expected:
        try:
            chunk = sock.recv(1 << 20)
        except OSError:
            break
        if not chunk:
            break
        received += len(chunk)
    seconds = time.monotonic() - started
    sock.close()
    return f"{max(0, received) * 100 // expected}% in {seconds:.1f} s"


retained_wildcard.prepare = _load_retained  # type: ignore[attr-defined]


ATTACKS: dict[str, Callable[[Broker], str]] = {
    f.__name__: f for f in (deep_retained, deep_filters, huge_announced, connect_properties,
                            publish_properties, alias_amplification, slow_http_head, flood,
                            unread_sse, retained_wildcard)
}


@dataclass
class Result:
    attack: str
    outcome: str
    rtt: dict[str, float]
    rss_before: int
    rss_peak: int
    rss_after: int

    def line(self) -> str:
        mb = 1 << 20
        return (f"{self.attack:20} {self.outcome:22} bystander p50 {self.rtt['p50']:6.1f} ms "
                f"p99 {self.rtt['p99']:7.1f} ms max {self.rtt['max']:7.1f} ms "
                f"lost {self.rtt['lost']:3.0f}  RSS {self.rss_before / mb:6.1f} -> peak "
                f"{self.rss_peak / mb:7.1f} -> {self.rss_after / mb:6.1f} MB")


#: Round trips the bystander times at least (a p99 of 100 or fewer is their maximum), and how
#: long past the attack it may take to get them.
MIN_TRIPS, MIN_WINDOW = 101, 6.0


def run(broker: Broker, name: str, bystander: Bystander) -> Result:
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
    outcome = ATTACKS[name](broker)
    # A p99 needs 100 round trips: an attack refused at once (huge_announced ends in
    # milliseconds) gave one or two, and its "p99" was the first ping's time (89 ms
    # once in CI, 3-21 ms in six runs after).  The bystander goes on until it has
    # them, at most MIN_WINDOW seconds past the attack.
    deadline = time.monotonic() + MIN_WINDOW
    while bystander.trips() < MIN_TRIPS and time.monotonic() < deadline:
        time.sleep(0.05)
    rtt = bystander.summary()
    time.sleep(2.0)
    done.set()
    sampler.join()
    return Result(name, outcome, rtt, before, peak[0], broker.rss())


def main() -> None:
    global SSE_STREAMS, RETAINED
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=("ours", "mosquitto"), default="ours")
    parser.add_argument("--attack", action="append", choices=sorted(ATTACKS))
    parser.add_argument("--sse-streams", type=int, default=SSE_STREAMS,
                        help="SSE streams of unread_sse (default %(default)s)")
    parser.add_argument("--retained", type=int, default=RETAINED,
                        help="retained messages of retained_wildcard (default %(default)s)")
    parser.add_argument("broker_args", nargs="*", help="extra options for our broker")
    args = parser.parse_args()
    SSE_STREAMS, RETAINED = args.sse_streams, args.retained
    for name in args.attack or list(ATTACKS):
        broker = Broker(args.broker, args.broker_args).start()  # a fresh broker each
        try:
            bystander = Bystander(broker.port)
            try:
                print(run(broker, name, bystander).line(), flush=True)
            finally:
                bystander.stop()
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
