"""A flood of CoAP CON requests from one address against a real ``twistd`` broker
(issue 15: "a flood of CONs from one address cannot slow the broker's MQTT
clients"): a separate process sends CON POSTs from one UDP socket as fast as it can
while an MQTT bystander measures its round trips through the broker."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.livebroker import Bystander, LiveBroker, free_udp_port

#: Sends CON POSTs to argv[1] from one socket for argv[2] seconds, reading the answers
#: it has time for; prints what it sent and the answer codes it saw, as JSON.
FLOODER = textwrap.dedent("""\
    import json, socket, sys, time
    from collections import Counter
    from mqtt_twisted.coap import message as m
    from mqtt_twisted.coap import options as opt

    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    datagrams = []
    for mid in range(65536):
        msg = m.CoapMessage(m.CON, m.POST, mid, mid.to_bytes(2, "big"), [], b"flood")
        msg.add(opt.URI_PATH, "ps").add(opt.URI_PATH, "flood").add(opt.URI_QUERY, "qos=1")
        datagrams.append(m.encode(msg))
    sent, codes = 0, Counter()
    print("READY", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sock.send(datagrams[sent & 0xFFFF])
            sent += 1
        except BlockingIOError:
            pass
        try:
            while True:
                codes[m.code_text(m.decode(sock.recv(2048)).code)] += 1
        except BlockingIOError:
            pass
    print(json.dumps({"sent": sent, "codes": codes}), flush=True)
    """)


@pytest.mark.slow
@pytest.mark.timing
def test_con_flood_does_not_slow_mqtt_clients(tmp_path: Path) -> None:
    """10 s of CON POSTs from one address (tens of thousands a second, far past
    ``maxRequestRate``): the broker serves 1,000 a second to it and answers the rest
    4.29, and an MQTT bystander's round trips stay under 50 ms at the 99th percentile."""
    coap_port = free_udp_port()
    broker = LiveBroker(tmp_path, listen=[f"coap=udp:{coap_port}:interface=127.0.0.1"])
    try:
        bystander = Bystander(broker.port)
        baseline = [bystander.round_trip() for _ in range(50)]
        script = tmp_path / "flooder.py"
        script.write_text(FLOODER)
        root = Path(__file__).resolve().parent.parent  # the flooder imports this tree
        flooder = subprocess.Popen([sys.executable, str(script), str(coap_port), "10"],
                                   stdout=subprocess.PIPE, text=True, cwd=root,
                                   env={**os.environ, "PYTHONPATH": str(root)})
        assert flooder.stdout is not None
        assert flooder.stdout.readline().strip() == "READY"
        time.sleep(0.5)  # the flood is on
        bystander.times.clear()
        while flooder.poll() is None and len(bystander.times) < 5000:
            bystander.round_trip()
            time.sleep(0.002)
        during = bystander.times[:]
        report = json.loads(flooder.stdout.read().strip().splitlines()[-1])
        flooder.wait(10)
        assert broker.alive()
        assert broker.unhandled() == []
        codes = report["codes"]
        print(f"flooder: {report['sent']} CON POSTs sent in 10 s, answers {codes}; "
              f"bystander round trip: baseline median {statistics.median(baseline):.2f} ms, "
              f"during the flood median {statistics.median(during):.2f} ms, p99 "
              f"{bystander.percentile(0.99):.2f} ms, max {max(during):.2f} ms over "
              f"{len(during)} round trips")
        assert report["sent"] > 20 * 1000  # well past the listener's 1,000 a second
        assert codes.get("4.29", 0) > 0 and codes.get("2.04", 0) > 0, codes
        assert codes["2.04"] <= 1000 * 11 + 1000  # the rate limit held
        assert len(during) >= 500, f"only {len(during)} round trips during the flood"
        assert bystander.percentile(0.99) < 50, sorted(during)[-10:]
        bystander.close()
    finally:
        broker.stop()
