"""Codec micro-benchmark: microseconds per encode and per decode of typical packets.

Run from the checkout: ``python bench/bench_codec.py`` (the compiled codec when it is
built, docs/speedups.md; ``MQTT_TWISTED_PURE=1`` for the pure one; ``--both`` for the two
side by side).  Decoding goes through
a long-lived ``StreamDecoder.feed`` (what a connection does), one whole packet
per call.  Each figure is the best of several timeit repeats.
"""

from __future__ import annotations

import os
import platform
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mqtt_twisted.codec import Connect, Publish, StreamDecoder, Will, _accel, encode
from mqtt_twisted.constants import PropertyId as P

REPEATS = 7

CASES = [
    ("PUBLISH QoS 0, 64-byte payload", 4, Publish("sensors/room-1/temperature", bytes(64))),
    ("PUBLISH QoS 1 + 5 properties", 5, Publish(
        "sensors/room-1/temperature", bytes(64), qos=1, packet_id=42, properties={
            P.MESSAGE_EXPIRY_INTERVAL: 3600,
            P.CONTENT_TYPE: "application/json",
            P.RESPONSE_TOPIC: "replies/client-7",
            P.CORRELATION_DATA: b"request-0001",
            P.USER_PROPERTY: [("unit", "celsius"), ("source", "probe-3")],
        })),
    ("CONNECT will + user/password", 4, Connect(
        client_id="client-0001", keep_alive=60, will=Will("clients/0001/status", b"offline", 1),
        username="alice", password=b"s3cret")),
    ("CONNECT will + user/password + props", 5, Connect(
        client_id="client-0001", protocol_level=5, keep_alive=60,
        will=Will("clients/0001/status", b"offline", 1,
                  properties={P.WILL_DELAY_INTERVAL: 10}),
        username="alice", password=b"s3cret",
        properties={P.SESSION_EXPIRY_INTERVAL: 3600, P.RECEIVE_MAXIMUM: 100,
                    P.TOPIC_ALIAS_MAXIMUM: 10})),
]


def best_us(fn) -> float:
    """Best per-call time of ``fn`` in microseconds."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(REPEATS, number)) / number * 1e6


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def both() -> None:
    """``--both``: each case with the compiled and the pure codec, alternately in one
    process (a loaded machine disturbs both alike); the best of 3 x REPEATS each."""
    if _accel.speedups is None:
        raise SystemExit("the compiled codec is not built: pip install . (with a C compiler)")
    print(f"{'packet':<40} {'ver':>3} {'encode µs':>17} {'decode µs':>17}")
    print(f"{'':<44} {'compiled':>8} {'pure':>8} {'compiled':>8} {'pure':>8}")
    for name, version, packet in CASES:
        wire = encode(packet, version)
        best: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(3):
            for compiled in (True, False):
                _accel.use(compiled)
                decoder = StreamDecoder(version)
                enc = best_us(lambda p=packet, v=version: encode(p, v))
                dec = best_us(lambda w=wire, feed=decoder.feed: feed(w))
                best[compiled].append((enc, dec))
        (ce, cd), (pe, pd) = (tuple(map(min, zip(*best[c]))) for c in (True, False))
        print(f"{name:<40} {'v' + str(version):>3} {ce:>8.2f} {pe:>8.2f} {cd:>8.2f} {pd:>8.2f}")
    _accel.use_default()


def main() -> None:
    print(f"python {platform.python_version()} ({platform.python_implementation()}), "
          f"nproc {os.cpu_count()}, {cpu_model()}")
    if "--both" in sys.argv[1:]:
        both()
        return
    print(f"codec: {'compiled' if _accel.compiled_in_use() else 'pure Python'}")
    print(f"{'packet':<40} {'ver':>3} {'bytes':>5} {'encode µs':>10} {'decode µs':>10}")
    for name, version, packet in CASES:
        wire = encode(packet, version)
        decoder = StreamDecoder(version)
        assert decoder.feed(wire) == [packet]
        enc = best_us(lambda p=packet, v=version: encode(p, v))
        dec = best_us(lambda w=wire, feed=decoder.feed: feed(w))
        print(f"{name:<40} {'v' + str(version):>3} {len(wire):>5} {enc:>10.2f} {dec:>10.2f}")


if __name__ == "__main__":
    main()
