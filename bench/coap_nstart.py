"""What NSTART costs a CoAP observer: CON notifications per second to one observer at
``qos=1`` with the listener's ``nstart`` at 1 (RFC 7252's default) and wider.

Starts ``twistd -n mqttbroker`` from this checkout for each ``nstart`` value, registers
one observer (a plain UDP socket that acknowledges every CON notification, at once or
``--ack-delay`` milliseconds after it came, as over a link with that round trip), publishes
``--messages`` QoS 1 messages over MQTT as fast as the socket takes them, and reports
the rate at which the notifications reached the observer (all of them must):

    python bench/coap_nstart.py --messages 3000 --nstart 1 16 --ack-delay 0 5
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from coap_publish import free_port, mqtt_client  # noqa: E402

from mqtt_twisted.coap import message as m  # noqa: E402
from mqtt_twisted.coap import options as opt  # noqa: E402
from mqtt_twisted.loadgen import wire as mqttwire  # noqa: E402


def start_broker(tmp: str, mqtt_port: int, coap_port: int, nstart: int) -> subprocess.Popen:
    broker = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
         "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "--logfile", os.path.join(tmp, f"broker-{nstart}.log"), "mqttbroker",
         "--listen", f"tcp:{mqtt_port}:interface=127.0.0.1",
         "--listen", f"coap=udp:{coap_port}:interface=127.0.0.1:nstart={nstart}",
         "--sys-interval", "0", "--max-queued", "1000000"],
        cwd=tmp, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", mqtt_port), timeout=0.2).close()
            return broker
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the broker did not start") from None
            time.sleep(0.05)


def notifications(coap_port: int, mqtt_port: int, messages: int,
                  ack_delay: float) -> float:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.connect(("127.0.0.1", coap_port))
    sock.settimeout(10)
    msg = m.CoapMessage(m.CON, m.GET, 1, b"obs")
    msg.add(opt.OBSERVE, 0).add(opt.URI_PATH, "ps").add(opt.URI_PATH, "nstart")
    msg.add(opt.URI_QUERY, "clientid=nstart").add(opt.URI_QUERY, "qos=1")
    sock.send(m.encode(msg))
    if m.decode(sock.recv(2048)).code != m.CONTENT:
        raise SystemExit("the observation was refused")
    got: set[bytes] = set()
    done = threading.Event()
    acks: queue.Queue[tuple[float, int]] = queue.Queue()

    def observe() -> None:
        while len(got) < messages:
            try:
                note = m.decode(sock.recv(2048))
            except TimeoutError:
                break
            if note.type == m.CON:
                if ack_delay:
                    acks.put((time.perf_counter() + ack_delay, note.mid))
                else:
                    sock.send(m.encode(m.CoapMessage(m.ACK, m.EMPTY, note.mid)))
            got.add(note.payload)
        done.set()

    def acknowledge() -> None:
        """The ACKs of a link ``ack_delay`` long: each one sent that long after its
        notification came, without holding up the notifications behind it."""
        while not done.is_set():
            try:
                due, mid = acks.get(timeout=0.1)
            except queue.Empty:
                continue
            time.sleep(max(0.0, due - time.perf_counter()))
            try:
                sock.send(m.encode(m.CoapMessage(m.ACK, m.EMPTY, mid)))
            except OSError:  # closed: the last notifications came
                return

    observer = threading.Thread(target=observe, daemon=True)
    threading.Thread(target=acknowledge, daemon=True).start()
    pub = mqtt_client(mqtt_port, "nstart-pub")
    start = time.perf_counter()
    observer.start()
    for n in range(messages):
        pub.sendall(mqttwire.publish("nstart", b"%08d" % n, 1, n % 65535 + 1))
    done.wait(messages * (ack_delay + 0.01) + 30)
    elapsed = time.perf_counter() - start
    pub.close()
    sock.close()
    if len(got) < messages:
        raise SystemExit(f"only {len(got)} of {messages} notifications came")
    return messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--nstart", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--ack-delay", type=float, nargs="+", default=[0.0, 5.0],
                        help="milliseconds the observer waits before each ACK")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, nproc {os.cpu_count()}, "
          f"{args.messages} QoS 1 messages to one observer")
    with tempfile.TemporaryDirectory() as tmp:
        for delay in args.ack_delay:
            for nstart in args.nstart:
                mqtt_port, coap_port = free_port(), free_port(socket.SOCK_DGRAM)
                broker = start_broker(tmp, mqtt_port, coap_port, nstart)
                try:
                    rate = notifications(coap_port, mqtt_port, args.messages, delay / 1000)
                finally:
                    broker.terminate()
                    broker.wait(10)
                print(f"ACK after {delay:4.1f} ms, nstart={nstart:3d}: "
                      f"{rate:8.0f} CON notifications/s")


if __name__ == "__main__":
    main()
