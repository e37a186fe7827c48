"""``GET /retained`` over 20,000 retained messages of 10 KB against a real twistd broker
(issue 14): one anonymous request used to build a 197 MB answer, grow RSS by 568 MB and
block the reactor for 2.7 s.  Now the answer is a page (100 messages, at most 1 MiB of
payload), and a client paging through all of them, one request after another, neither
holds memory nor stalls a bystander.  Slow: ``pytest -m slow``."""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from mqtt_twisted.codec import Publish, encode
from tests.livebroker import Bystander, LiveBroker, connect
from tests.redisserver import free_port

RETAINED, SIZE = 20_000, 10_000


@pytest.mark.slow
@pytest.mark.timing
def test_get_retained_over_20000_large_messages_is_paged(tmp_path: Path) -> None:
    """Paging through 20,000 x 10 KB retained messages with GET /retained: each answer is
    a page of 100 with "next", the whole set comes back once, RSS grows by less than
    64 MiB while it is read, and the bystander's p99 stays under 50 ms."""
    http_port = free_port()
    # 200 MB from one loader: over the default share of one client (128 MiB).
    broker = LiveBroker(tmp_path, "--max-retained-bytes-per-client", "0",
                        listen=(f"http=tcp:{http_port}:interface=127.0.0.1",))
    try:
        loader = connect(broker.port, "loader")
        body = b"x" * SIZE
        for start in range(0, RETAINED, 1000):
            loader.sendall(b"".join(encode(Publish(f"big/{n:05d}", body, 0, True), 4)
                                    for n in range(start, start + 1000)))
        loader.sendall(b"\xc0\x00")  # PINGREQ: answered once every PUBLISH is handled
        assert loader.recv(2) == b"\xd0\x00"
        loader.close()
        bystander = Bystander(broker.port)
        baseline = [bystander.round_trip() for _ in range(20)]
        rss_before = broker.rss_kib()
        pages: list[dict] = []
        errors: list[BaseException] = []

        def read_all() -> None:
            try:
                client = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
                after = ""
                while True:
                    query = "/retained?topic=%23" + (f"&after={quote(after)}" if after else "")
                    client.request("GET", query)
                    answer = client.getresponse()
                    assert answer.status == 200, answer.read()[:200]
                    page = json.loads(answer.read())
                    pages.append(page)
                    if "next" not in page:
                        break
                    after = page["next"]
                client.close()
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        reader = threading.Thread(target=read_all, daemon=True)
        started = time.monotonic()
        reader.start()
        bystander.times.clear()
        rss_peak = rss_before
        while reader.is_alive():
            bystander.round_trip()
            rss_peak = max(rss_peak, broker.rss_kib())
            time.sleep(0.002)
        seconds = time.monotonic() - started
        assert not errors, errors
        topics = [m["topic"] for page in pages for m in page["messages"]]
        assert topics == [f"big/{n:05d}" for n in range(RETAINED)]
        assert max(len(page["messages"]) for page in pages) == 100
        p99 = bystander.percentile(0.99)
        print(f"GET /retained: {len(pages)} pages in {seconds:.1f} s; bystander baseline "
              f"median {statistics.median(baseline):.2f} ms, during: median "
              f"{statistics.median(bystander.times):.2f} ms, p99 {p99:.2f} ms, max "
              f"{max(bystander.times):.1f} ms over {len(bystander.times)} round trips; RSS "
              f"{rss_before / 1024:.0f} -> peak {rss_peak / 1024:.0f} MiB")
        assert len(bystander.times) >= 100, len(bystander.times)
        assert rss_peak - rss_before < 64 * 1024, (rss_before, rss_peak)
        assert p99 < 50, sorted(bystander.times)[-10:]
        assert broker.unhandled() == [], broker.unhandled()[:10]
        bystander.close()
    finally:
        broker.stop()
