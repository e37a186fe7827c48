"""The live fuzzer for the ``http=`` and ``ws=`` listeners (issue 14): malformed and
mutated requests, huge headers, trickled heads and bodies, bad and oversized WebSocket
frames, over real sockets against the same ``twistd`` broker that serves MQTT, while a
bystander MQTT client measures its round trips through it.

It fails as the MQTT live fuzzer does (``tests/test_live_fuzz.py``): an error the
broker did not handle (a traceback in its log), a dead broker, a bystander p99 over
50 ms, or memory kept after the attackers left.  The default run sends 600 cases;
``pytest -m slow`` 4,000 (CI time: 10,000 took 7 minutes).  ``FUZZ_SEED=N`` replays a run."""

from __future__ import annotations

import base64
import os
import random
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from mqtt_twisted.codec import encode
from tests.livebroker import Bystander, LiveBroker, bystander_during, judge
from tests.redisserver import free_port
from tests.test_codec_fuzz import mutate, random_chunks, seed_packets

#: The broker's request deadline in these runs: trickled heads must meet it quickly.
REQUEST_TIMEOUT = 1.0

_PATHS = (b"/publish?topic=f/x", b"/publish?topic=f/x&qos=1&retain=1", b"/subscribe?topic=f/%23",
          b"/subscribe?topic=f/%23&timeout=1", b"/retained?topic=f/%23&limit=5",
          b"/session?client=c", b"/openapi.json", b"/", b"/nothing", b"/mqtt")
_METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"G\x00T", b"")


def _request(rng: random.Random) -> bytes:
    """A request that is valid, or nearly."""
    method = rng.choice(_METHODS[:6])
    path = rng.choice(_PATHS)
    body = os.urandom(rng.randrange(0, 300)) if method in (b"POST", b"PUT") else b""
    headers = [b"Host: x"]
    if rng.random() < 0.3:
        headers.append(b"Accept: text/event-stream")
    if rng.random() < 0.2:
        headers.append(b"Authorization: Bearer " + base64.b64encode(os.urandom(30)))
    if body or rng.random() < 0.2:
        headers.append(b"Content-Length: %d" % len(body))
    head = b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (method, path, b"\r\n".join(headers))
    return head + body


def http_case(rng: random.Random) -> tuple[bytes, float]:
    """One attacker's bytes for ``http=``, and how long to trickle them over."""
    kind = rng.randrange(8)
    if kind == 0:  # noise
        return os.urandom(rng.randrange(1, 400)), 0.0
    if kind == 1:  # huge header lines, or very many headers
        if rng.random() < 0.5:
            return b"GET / HTTP/1.1\r\nX-Big: " + b"a" * rng.choice((20_000, 70_000,
                                                                  300_000)) + b"\r\n\r\n", 0.0
        return b"GET / HTTP/1.1\r\n" + b"X-H: v\r\n" * rng.choice((500, 5000)) + b"\r\n", 0.0
    if kind == 2:  # a body that lies about its length, or a huge announced one
        length = rng.choice((10, 1 << 20, 1 << 31, -1))
        return (b"POST /publish?topic=f/x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                % length + os.urandom(rng.randrange(0, 50))), 0.0
    if kind == 3:  # chunked bodies, broken
        return (b"POST /publish?topic=f/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                b"\r\n\r\n" + rng.choice((b"zz\r\n", b"ffffffffff\r\nx", b"5\r\nabc\r\n0\r\n",
                                          b"3\r\nabc\r\n0\r\n\r\n"))), 0.0
    if kind == 4:  # trickled over more than the request deadline
        return _request(rng), REQUEST_TIMEOUT * rng.uniform(0.5, 2.0)
    if kind == 5:  # several requests on one connection (pipelined), some mutated
        return b"".join(mutate(rng, _request(rng), rng.randrange(0, 3))
                        for _ in range(rng.randrange(2, 5))), 0.0
    return mutate(rng, _request(rng), rng.randrange(1, 6)), 0.0


def _frame(opcode: int, payload: bytes, masked: bool = True, fin: bool = True,
           length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 1 << 16:
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + _masked(payload, key)


def _masked(payload: bytes, key: bytes) -> bytes:
    """``payload`` XORed with the repeated ``key``, as one big-integer XOR: a byte at a
    time in Python took 0.3 s per 2 MB frame, most of the slow run's minutes."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def ws_case(rng: random.Random) -> tuple[bytes, float]:
    """One attacker's bytes for ``ws=``: a handshake (maybe a bad one), then frames."""
    key = base64.b64encode(os.urandom(16))
    protocol = rng.choice((b"mqtt", b"mqtt", b"mqttv3.1", b"chat", b""))
    head = (b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n")
    if protocol:
        head += b"Sec-WebSocket-Protocol: " + protocol + b"\r\n"
    head += b"\r\n"
    if rng.random() < 0.15:
        head = mutate(rng, head, rng.randrange(1, 5))
    if rng.random() < 0.1:  # the handshake trickled past the deadline
        return head, REQUEST_TIMEOUT * rng.uniform(0.5, 2.0)
    version = rng.choice((4, 5))
    mqtt = [encode(p, version) for p in rng.sample(seed_packets(version), 3)]
    frames = []
    for _ in range(rng.randrange(1, 5)):
        kind = rng.randrange(9)
        payload = rng.choice(mqtt)
        if kind == 0:
            frames.append(_frame(0x2, mutate(rng, payload, rng.randrange(1, 4))))
        elif kind == 1:  # text frames are not MQTT [MQTT-6.0.0-1]
            frames.append(_frame(0x1, b"hello"))
        elif kind == 2:  # announces 2**62 bytes
            frames.append(_frame(0x2, b"x" * 10, length=1 << 62))
        elif kind == 3:  # oversized for real: 2 MB
            frames.append(_frame(0x2, os.urandom(2 << 20)))
        elif kind == 4:  # unmasked, from a client
            frames.append(_frame(0x2, payload, masked=False))
        elif kind == 5:  # a control frame over 125 bytes, or fragmented
            frames.append(_frame(0x9, b"p" * 200, fin=rng.random() < 0.5))
        elif kind == 6:  # reserved opcode, RSV bits
            frames.append(bytes((0xF3 | rng.choice((0x40, 0x20, 0x00)),)) + os.urandom(20))
        elif kind == 7:  # fragments of a binary message, never finished
            frames.append(_frame(0x2, payload[:3], fin=False) + _frame(0x0, payload[3:],
                                                                      fin=False))
        else:
            frames.append(_frame(0x2, payload))
    return head + b"".join(frames), 0.0


def _send(port: int, data: bytes, trickle: float, rng: random.Random) -> bool:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        time.sleep(0.01)
        return False
    try:
        if trickle:
            pieces = max(2, min(len(data), 8))
            step = max(1, len(data) // pieces)
            for i in range(0, len(data), step):
                sock.sendall(data[i:i + step])
                time.sleep(trickle / pieces)
        else:
            for chunk in random_chunks(rng, data):
                sock.sendall(chunk)
        sock.settimeout(0.005)
        try:
            sock.recv(65536)
        except OSError:
            pass
        if rng.random() < 0.3:  # a reset rather than a close
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return True
    except OSError:
        return True  # the broker closed on us: what it should do with most of these
    finally:
        sock.close()


def attack(ports: dict[str, int], seed: int, count: int, sent: list[int]) -> None:
    """``count`` cases alternating between the two listeners; trickled ones in threads
    of their own so that the run's length does not add them up."""
    rng = random.Random(seed)
    tricklers: list[threading.Thread] = []
    for n in range(count):
        name = "http" if n % 2 else "ws"
        data, trickle = (http_case if name == "http" else ws_case)(rng)
        case_rng = random.Random(rng.randrange(1 << 32))
        if trickle:
            tricklers = [t for t in tricklers if t.is_alive()]
            if len(tricklers) < 20:
                thread = threading.Thread(target=_send, args=(ports[name], data, trickle,
                                                              case_rng), daemon=True)
                thread.start()
                tricklers.append(thread)
                sent[0] += 1
            continue
        sent[0] += _send(ports[name], data, 0.0, case_rng)
    for thread in tricklers:
        thread.join()


def run_fuzz(directory: Path, cases: int) -> None:
    seed = int(os.environ.get("FUZZ_SEED", random.randrange(1 << 32)))
    print(f"live HTTP/WebSocket fuzz: seed {seed}, {cases} cases")
    ports = {"http": free_port(), "ws": free_port()}
    broker = LiveBroker(directory, "--listen", f"http=tcp:{ports['http']}:interface=127.0.0.1",
                        "--listen", f"ws=tcp:{ports['ws']}:interface=127.0.0.1",
                        "--request-timeout", str(REQUEST_TIMEOUT))
    try:
        bystander = Bystander(broker.port)
        for _ in range(20):
            bystander.round_trip()
        rss_before = broker.rss_kib()
        sent = [0]
        attacker = threading.Thread(target=attack, args=(ports, seed, cases, sent))
        attacker.start()
        bystander_during(bystander, lambda: not attacker.is_alive())
        attacker.join()
        assert broker.alive(), broker.log()[-3000:]
        assert sent[0] >= cases * 0.9, sent
        time.sleep(REQUEST_TIMEOUT * 2 + 1)  # the trickled ones cut off, streams ended
        judge(broker, bystander, rss_before, f"live HTTP/WebSocket fuzz: {sent[0]} cases")
        bystander.close()
    finally:
        broker.stop()


@pytest.mark.timing
def test_live_fuzz_http_short(tmp_path: Path) -> None:
    """600 cases: the quick run of every default test session."""
    run_fuzz(tmp_path, 600)


@pytest.mark.slow
@pytest.mark.timing
def test_live_fuzz_http_4k(tmp_path: Path) -> None:
    """4,000 cases (about 3 minutes on a 2-core machine; 10,000 passed too, in 7)."""
    run_fuzz(tmp_path, 4_000)
