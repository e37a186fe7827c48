"""What the CoAP gateway costs next to MQTT: publish round trips, NON throughput into an
MQTT subscriber, and observe fan-out with the broker's memory per observer.

Starts ``twistd -n mqttbroker`` from this checkout with an MQTT and a CoAP/UDP listener
on loopback and drives it with plain sockets (CoAP messages from the project's own
sans-IO codec, MQTT packets from mqtt_twisted/loadgen/wire.py):

- CON POST round trips per second, one at a time, at ``qos=0`` and ``qos=1``, beside
  MQTT QoS 1 PUBLISH/PUBACK round trips on one connection, in interleaved 1-second
  slices (medians; the issue's target: a CON publish costs at most 2x an MQTT QoS 1
  publish);
- NON POSTs sent in batches (each once the subscriber has the last), and how many an
  MQTT subscriber got, how fast;
- N observers (one UDP socket, a client id each) registered, the broker's RSS growth per
  observer, then messages published over MQTT and the notifications per second.

    python bench/coap_publish.py --seconds 9 --non 20000 --observers 10000
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mqtt_twisted.coap import message as m  # noqa: E402
from mqtt_twisted.coap import options as opt  # noqa: E402
from mqtt_twisted.loadgen import wire as mqttwire  # noqa: E402


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_broker(workdir: str, mqtt_port: int, coap: str, root: Path = ROOT,
                 extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``twistd -n mqttbroker`` from the checkout at ``root`` with an MQTT listener on
    ``mqtt_port`` and a CoAP one on ``udp:{coap}``, once it accepts MQTT clients."""
    broker = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
         "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "--logfile", os.path.join(workdir, "broker.log"), "mqttbroker",
         "--listen", f"tcp:{mqtt_port}:interface=127.0.0.1",
         "--listen", f"coap=udp:{coap}", "--sys-interval", "0", *extra],
        cwd=workdir, env=dict(os.environ, PYTHONPATH=str(root)))
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", mqtt_port), timeout=0.2).close()
            return broker
        except OSError:
            if time.monotonic() > deadline or broker.poll() is not None:
                broker.kill()
                raise SystemExit("the broker did not start") from None
            time.sleep(0.05)


def post(mid: int, topic: str, qos: int, payload: bytes, mtype: int = m.CON) -> bytes:
    msg = m.CoapMessage(mtype, m.POST, mid, mid.to_bytes(2, "big"), [], payload)
    msg.add(opt.URI_PATH, "ps")
    for part in topic.split("/"):
        msg.add(opt.URI_PATH, part)
    msg.add(opt.URI_QUERY, f"qos={qos}")
    return m.encode(msg)


def mqtt_client(port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(mqttwire.connect(client_id))
    if len(sock.recv(4)) != mqttwire.CONNACK_LEN:
        raise SystemExit("no CONNACK")
    return sock


class Subscriber(threading.Thread):
    """An MQTT subscriber counting the PUBLISH packets it gets, and when."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        super().__init__(daemon=True)
        self.sock = mqtt_client(port, client_id)
        self.sock.sendall(mqttwire.subscribe(1, [topic], 0))
        self.sock.recv(5)
        self.count = 0
        self.first = self.last = 0.0

    def run(self) -> None:
        buf = bytearray()
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            buf += data
            n, used = mqttwire.count_publishes(buf)
            del buf[:used]
            if n:
                now = time.perf_counter()
                self.first = self.first or now
                self.last = now
                self.count += n


def con_round_trips(port: int, qos: int, seconds: float) -> float:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(5)
    payload = b"x" * 64
    done, mid, end = 0, 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        mid = (mid + 1) & 0xFFFF
        sock.send(post(mid, "bench/con", qos, payload))
        answer = m.decode(sock.recv(2048))
        if answer.code != m.CHANGED:
            raise SystemExit(f"CON POST answered {m.code_text(answer.code)}")
        done += 1
    sock.close()
    return done / (time.perf_counter() - start)


def mqtt_qos1_round_trips(port: int, seconds: float) -> float:
    sock = mqtt_client(port, "bench-pub")
    done, pid, end = 0, 0, time.perf_counter() + seconds
    start = time.perf_counter()
    payload = b"x" * 64
    while time.perf_counter() < end:
        pid = pid % 65535 + 1
        sock.sendall(mqttwire.publish("bench/mqtt", payload, 1, pid))
        ack = sock.recv(4)
        if len(ack) != 4 or ack[0] >> 4 != mqttwire.PUBACK:
            raise SystemExit("no PUBACK")
        done += 1
    sock.close()
    return done / (time.perf_counter() - start)


def non_throughput(coap_port: int, mqtt_port: int, count: int,
                   batch: int = 200) -> tuple[int, int, float]:
    """NON POSTs in batches of ``batch``, each sent once the subscriber got the last one
    (or after 0.5 s): the rate the broker sustains, and what UDP lost meanwhile."""
    sub = Subscriber(mqtt_port, "bench/non", "bench-non")
    sub.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", coap_port))
    datagrams = [post(i & 0xFFFF, "bench/non", 0, b"x" * 64, m.NON) for i in range(count)]
    start = time.perf_counter()
    for first in range(0, count, batch):
        for data in datagrams[first:first + batch]:
            sock.send(data)
        wait_until = time.perf_counter() + 0.5
        while sub.count < min(first + batch, count) - 10 and time.perf_counter() < wait_until:
            time.sleep(0.0005)
    while True:  # until the subscriber stops counting
        before = sub.count
        time.sleep(0.3)
        if sub.count == before:
            break
    elapsed = sub.last - start
    sock.close()
    sub.sock.close()
    return count, sub.count, sub.count / elapsed if elapsed > 0 else 0.0


def observe_fan_out(coap_port: int, mqtt_port: int, pid: int, observers: int,
                    messages: int) -> tuple[float, float, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    sock.connect(("127.0.0.1", coap_port))
    sock.settimeout(10)
    before = rss_kib(pid)
    pending = set()
    for i in range(observers):
        msg = m.CoapMessage(m.CON, m.GET, i & 0xFFFF, i.to_bytes(4, "big"))
        msg.add(opt.OBSERVE, 0).add(opt.URI_PATH, "ps").add(opt.URI_PATH, "bench")
        msg.add(opt.URI_PATH, "fan").add(opt.URI_QUERY, f"clientid=obs{i}")
        sock.send(m.encode(msg))
        pending.add(i)
        if len(pending) >= 64:  # a window, so that the socket buffers do not overflow
            while len(pending) > 32:
                pending.discard(int.from_bytes(m.decode(sock.recv(2048)).token, "big"))
    while pending:
        pending.discard(int.from_bytes(m.decode(sock.recv(2048)).token, "big"))
    time.sleep(1.0)
    per_observer = (rss_kib(pid) - before) / observers
    pub = mqtt_client(mqtt_port, "bench-fan")
    got, start = 0, time.perf_counter()
    for _ in range(messages):
        pub.sendall(mqttwire.publish("bench/fan", b"y" * 64, 0))
        deadline = got + observers
        while got < deadline:
            try:
                sock.recv(2048)
            except TimeoutError:
                break
            got += 1
        if got < deadline:
            break
    elapsed = time.perf_counter() - start
    pub.close()
    sock.close()
    return per_observer, got / elapsed, got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=9.0,
                        help="1-second slices of each round-trip test (median reported)")
    parser.add_argument("--non", type=int, default=20000, help="NON POSTs to send")
    parser.add_argument("--observers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=5, help="published to the observers")
    args = parser.parse_args()
    mqtt_port, coap_port = free_port(), free_port(socket.SOCK_DGRAM)
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker(tmp, mqtt_port, f"{coap_port}:interface=127.0.0.1"
                              ":maxObservations=4:maxRequestRate=0")
        try:
            sub = Subscriber(mqtt_port, "bench/#", "bench-all")  # every publish has a subscriber
            sub.start()
            # Interleaved 1-second slices, medians: the machine's load drifts, and this
            # way it weighs on the three figures alike.
            slices: dict[str, list[float]] = {"mqtt1": [], "con0": [], "con1": []}
            for _ in range(max(1, round(args.seconds))):
                slices["mqtt1"].append(mqtt_qos1_round_trips(mqtt_port, 1.0))
                slices["con0"].append(con_round_trips(coap_port, 0, 1.0))
                slices["con1"].append(con_round_trips(coap_port, 1, 1.0))
            mqtt1, con0, con1 = (statistics.median(slices[k]) for k in ("mqtt1", "con0", "con1"))
            sub.sock.close()
            sent, received, non_rate = non_throughput(coap_port, mqtt_port, args.non)
            kib, notes_rate, notes = observe_fan_out(coap_port, mqtt_port, broker.pid,
                                                     args.observers, args.messages)
        finally:
            broker.terminate()
            broker.wait(10)
    print(f"python {sys.version.split()[0]}, nproc {os.cpu_count()}, 64-byte payloads")
    print(f"MQTT QoS 1 PUBLISH/PUBACK round trips: {mqtt1:8.0f} /s")
    print(f"CoAP CON POST qos=0 round trips:      {con0:8.0f} /s  "
          f"({mqtt1 / con0:.2f}x the MQTT QoS 1 time)")
    print(f"CoAP CON POST qos=1 round trips:      {con1:8.0f} /s  "
          f"({mqtt1 / con1:.2f}x the MQTT QoS 1 time)")
    print(f"CoAP NON POST: {sent} sent, {received} reached the MQTT subscriber "
          f"({received / sent:.1%}), {non_rate:.0f} /s")
    print(f"observe: {args.observers} observers, {kib:.1f} KiB of broker RSS each; "
          f"{notes} notifications at {notes_rate:.0f} /s")


if __name__ == "__main__":
    main()
