"""The attacks of ``bench/hostile.py`` (issue 14, docs/limits.md), over raw sockets, and
the bytes they are made of: each takes a running broker and returns what it saw.

Deep topics (retained messages and filters of 65,535 levels), huge packets announced
before CONNECT, a million user properties in CONNECT and in PUBLISH, alias-only PUBLISHes
toward a subscriber that never reads, an HTTP request head trickled a byte every 4 s
(ours only: ``http=``), a flood of 8-byte PUBLISHes from four clients, SSE streams that
never read (``SSE_STREAMS``), and a new ``#`` subscriber over ``RETAINED`` retained
messages of ``RETAINED_SIZE`` bytes.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hostile import Broker


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


#: The publisher's rate before the streams open (``unread_sse.prepare``), msg/s.
_UNSUBSCRIBED_RATE = [0.0]


def _publish_for(pub: socket.socket, seconds: float, topic: str = "s/x",
                 until: Callable[[int], bool] | None = None) -> tuple[int, list[int]]:
    """Publish 200-byte messages to ``topic`` as fast as the broker reads them, for
    ``seconds`` (or until ``until(sent)``, asked every 10,000): how many, and how many
    in each second (a publisher held back shows as slow seconds)."""
    burst = publish(topic, b"y" * 200) * 100
    started = time.monotonic()
    sent, seconds_sent = 0, [0]
    while time.monotonic() - started < seconds:
        if not _send(pub, burst):
            break
        sent += 100
        second = int(time.monotonic() - started)
        seconds_sent.extend([0] * (second + 1 - len(seconds_sent)))
        seconds_sent[second] += 100
        if until is not None and sent % 10_000 == 0 and until(sent):
            break
    return sent, seconds_sent


def _unsubscribed_rate(broker: Broker) -> None:
    """The same publisher with nobody subscribed, before the attack's window."""
    if broker.kind != "ours":
        return
    pub = _open(broker.port, connect("sse-publisher-alone"))
    sent, _ = _publish_for(pub, 3.0)
    pub.close()
    _UNSUBSCRIBED_RATE[0] = sent / 3.0


def unread_sse(broker: Broker) -> str:
    """``SSE_STREAMS`` SSE streams on ``http=`` that never read (4 KB receive buffers)
    while a publisher sends 200-byte messages to them as fast as it can, for up to 60 s:
    when were they all cut off, and how fast could it publish meanwhile (overall; the
    slowest whole second; and alone, before the streams opened: ours only)."""
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
    # A subscriber that reads: what the broker routes each second, as it handles it (the
    # publisher's own count moves by whole kernel buffers, megabytes on loopback).
    size = len(publish("s/x", b"y" * 200))
    routed: list[int] = [0]
    reader = _open(broker.port, connect("sse-counter"))
    reader.recv(4)
    _send(reader, subscribe("s/#"))
    stop = threading.Event()

    def count() -> None:
        reader.settimeout(0.2)
        first = time.monotonic()
        while not stop.is_set():
            try:
                n = len(reader.recv(1 << 20))
            except TimeoutError:
                continue
            except OSError:
                return
            second = int(time.monotonic() - first)
            routed.extend([0] * (second + 1 - len(routed)))
            routed[second] += n

    counter = threading.Thread(target=count, daemon=True)
    pub = _open(broker.port, connect("sse-publisher"))
    started = time.monotonic()
    counter.start()
    all_cut: list[float] = []

    def cut_off(sent: int) -> bool:
        cut = sum(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != 1
                  for s in streams)  # no longer ESTABLISHED
        if cut == len(streams):
            all_cut.append(time.monotonic() - started)
        return bool(all_cut)

    sent, _ = _publish_for(pub, 60.0, until=cut_off)
    rate = sent / (time.monotonic() - started)
    for sock in streams:
        sock.close()
    pub.close()
    stop.set()
    counter.join()
    reader.close()
    when = f"all cut off in {all_cut[0]:.0f} s" if all_cut else "not all cut off"
    whole = [n // size for n in routed[:-1] or routed]
    if os.environ.get("HOSTILE_SECONDS"):  # each second's count, for a closer look
        print("unread_sse: msg/s routed each second:", whole, flush=True)
    return (f"{when}, {rate / 1000:.1f}k msg/s (routed each second: median "
            f"{sorted(whole)[len(whole) // 2]}, slowest {min(whole)}, {whole.count(0)} s "
            f"at 0; alone {_UNSUBSCRIBED_RATE[0] / 1000:.1f}k)")


unread_sse.prepare = _unsubscribed_rate  # type: ignore[attr-defined]


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
    more than 512 MiB) and ``--max-retained-bytes-per-client 0`` for the issue's 1 GB."""
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
