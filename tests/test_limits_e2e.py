"""Hostile clients against a real twistd broker, measured from outside as issue 14 did: a
bystander paho client publishing to itself every 50 ms keeps fast round trips, and the
broker's RSS stays near where it was (bench/hostile.py runs the attacks).

Before the limits these attacks cost 1 to 3 GB and blocked the bystander for seconds.
Slow (a broker process per attack): ``pytest -m slow tests/test_limits_e2e.py``.
No reactor is involved (subprocesses, paho's thread, blocking sockets), so these are
plain pytest functions.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
#: The issue's bound for every attack (before the limits: 1.9-4 s).  It was 250 ms
#: here; measured on the shared 2-core machine (load average 10): 6-31 ms for the
#: short attacks, 42-64 ms for the alias flood with 65,535-byte topics (decoding its
#: shares of 256 packets, nothing else: py-spy), see docs/limits.md.
P99_MS = 50.0
MiB = 1 << 20


def _hostile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_hostile", BENCH / "hostile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


hostile = _hostile()


def attacked(name: str, *broker_args: str) -> Iterator[object]:
    broker = hostile.Broker("ours", list(broker_args)).start()
    try:
        bystander = hostile.Bystander(broker.port)
        try:
            yield hostile.run(broker, name, bystander)
        finally:
            bystander.stop()
    finally:
        broker.stop()


def check(result: object, outcome: str, peak_mib: float = 16.0, after_mib: float = 16.0,
          p99_ms: float = P99_MS) -> None:
    """The attack was refused as expected, the bystander stayed fast, RSS near baseline."""
    line = result.line()  # type: ignore[attr-defined]
    assert outcome in result.outcome, line  # type: ignore[attr-defined]
    assert result.rtt["p99"] < p99_ms and not result.rtt["lost"], line  # type: ignore[attr-defined]
    assert result.rss_peak - result.rss_before < peak_mib * MiB, line  # type: ignore[attr-defined]
    assert result.rss_after - result.rss_before < after_mib * MiB, line  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.timing
def test_deep_retained_topics() -> None:
    """200 retained PUBLISHes to 65,535-level topics: none kept (was +3 GB)."""
    for result in attacked("deep_retained"):
        check(result, "0/200 retained")


@pytest.mark.slow
@pytest.mark.timing
def test_deep_filters() -> None:
    """50 filters of 65,535 levels: all refused in SUBACK (was +959 MB, p99 1.9-2.8 s)."""
    for result in attacked("deep_filters"):
        check(result, "50/50 SUBACK 0x80")


@pytest.mark.slow
@pytest.mark.timing
def test_huge_packets_announced_before_connect() -> None:
    """8 sockets announcing 256 MB CONNECTs: cut off from the header (was +2 GB in 7 s)."""
    for result in attacked("huge_announced"):
        check(result, "8/8 cut off")


@pytest.mark.slow
@pytest.mark.timing
def test_a_million_user_properties() -> None:
    """In CONNECT and in PUBLISH: cut off, refused 0x95 (was a 1.5-2.6 s block, +211 MB)."""
    for result in attacked("connect_properties"):
        check(result, "cut off")
    for result in attacked("publish_properties"):
        check(result, "e00195")  # DISCONNECT 0x95


@pytest.mark.slow
@pytest.mark.timing
def test_alias_amplification_is_bounded_by_the_queued_bytes() -> None:
    """With topics as long as the protocol allows, 700 KB of alias-only PUBLISHes toward a
    subscriber that never reads cost at most the queued bytes twice (was +930 MB and a
    3 s stall); by default the 60 KB topic itself is refused.  A 64 KB read holds 8,000
    PUBLISHes, handled 256 (or fewer, WORK_BUDGET) a reactor turn by fairness per read,
    so the bystander's bound is the issue's 50 ms like the others (it was 600 ms,
    written before fairness per read; the allocator keeps some of the 60 KB blocks:
    RSS returns to within about 20 MB)."""
    for result in attacked("alias_amplification"):
        check(result, "topic refused")
    for result in attacked("alias_amplification", "--max-topic-length", "65535"):
        check(result, "KB sent", peak_mib=2 * 16 + 8, after_mib=2 * 16 + 8)


@pytest.mark.slow
@pytest.mark.timing
def test_trickled_http_head() -> None:
    """A request head trickled a byte every 4 s gets 408 at about 10 s (was never cut
    off).  The seconds are counted from before the first byte, on a loaded machine: the
    check is that it ends near the deadline, not at a precise time."""
    for result in attacked("slow_http_head"):
        check(result, "408 after ")
        seconds = float(result.outcome.split()[2])  # type: ignore[attr-defined]
        assert 8.0 <= seconds <= 14.0, result.outcome  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.timing
def test_flood_of_tiny_publishes() -> None:
    """Four clients flooding 8-byte PUBLISHes for 5 s: the bystander's p99 stays under the
    issue's 50 ms (was 457-473 ms: each 64 KB read was 8,000 messages handled at once;
    now 256 a reactor turn, measured 24 ms)."""
    for result in attacked("flood"):
        check(result, "msg/s sent", p99_ms=50)


@pytest.mark.slow
@pytest.mark.timing
def test_unread_sse_streams_are_cut_off() -> None:
    """500 SSE streams that never read (the issue's figure), flooded: all cut off within
    40 s (the 30 s stallTimeout after their 64 KiB send buffers fill; in the issue only
    52 of 500 within 55 s, publishing capped near 1,000 msg/s), the bystander's p99
    under 50 ms (quiet machine: 6.8 ms, RSS +47 MB: their backlogs and twisted.web's
    requests, handed back to the collector once they are cut off)."""
    streams = hostile.attacks.SSE_STREAMS
    hostile.attacks.SSE_STREAMS = 500
    try:
        for result in attacked("unread_sse"):
            check(result, "all cut off in", peak_mib=80, after_mib=80, p99_ms=P99_MS)
            seconds = float(result.outcome.split("in ")[1].split(" s")[0])  # type: ignore[attr-defined]
            assert seconds <= 40, result.line()  # type: ignore[attr-defined]
    finally:
        hostile.attacks.SSE_STREAMS = streams
