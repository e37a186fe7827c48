"""MQTT benchmark load generator: one broker on 127.0.0.1, one JSON line per scenario.

Why it is built this way: the load generator must never be the bottleneck, even for the
fastest broker we compare with, on a 2-core machine where the broker takes one core.  So:

* raw sockets with pre-encoded MQTT 3.1.1 packets (``mqtt_twisted.loadgen.wire``); the hot path only patches a
  timestamp into a 64 KiB batch of concatenated PUBLISHes and calls ``send``;
* publishers and subscribers in separate processes (``multiprocessing``), each driven by
  commands over a pipe with a timeout on every answer, so a stuck broker fails a scenario
  instead of hanging the run;
* subscribers that only walk fixed headers (and read a timestamp or packet id when the
  scenario needs one), with a strided fast path for runs of same-size QoS 0 PUBLISHes;
* every phase bounded by a message count and by time; TCP_NODELAY on every socket.

``ceiling`` measures the generator itself: publishers writing straight into a counting sink
(fan-in) and through a byte-for-byte tee relay (fan-out), with no broker.

Usage::

    python bench/loadgen.py --port 1883 [--scenario fan-in ...] [--quick] [--broker NAME]
                            [--broker-pid PID]
    python bench/loadgen.py --scenario ceiling

Only 127.0.0.1 is ever targeted.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, replace

from mqtt_twisted.loadgen import wire as w
from mqtt_twisted.loadgen.roles import PublisherRole, SubscriberRole
from mqtt_twisted.loadgen.workers import (
    HOST,  # the only address this tool ever connects to or listens on
    NS,
    Control,
    ScenarioError,
    Worker,
    broker_cpu_s,
    broker_rss_kib,
    client_id,
    percentile,
    raise_fd_limit,
    tune_socket,
)

# Source addresses of the connections scenario's clients (still loopback): one address has
# only ~28k ephemeral ports, and TIME_WAIT leftovers of earlier runs eat into them.
SOURCES = [f"127.0.0.{n}" for n in range(2, 18)]
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux >= 4.2
BROKER_SCENARIOS = ["fan-in", "fan-out", "qos1", "qos2", "latency", "many-subscriptions",
                    "connections", "retained", "publisher-disconnect"]
ALL_SCENARIOS = ["ceiling", *BROKER_SCENARIOS]


@dataclass(frozen=True)
class Settings:
    """Sizes and time bounds of every scenario (full run; ``QUICK`` shrinks them)."""

    payload: int = 64
    batch_bytes: int = 64 * 1024
    throughput_s: float = 5.0        # publishing time of fan-in, fan-out, qos1, qos2
    max_messages: int = 20_000_000   # count bound of each throughput publisher
    drain_s: float = 15.0            # longest wait for the broker to deliver what it accepted
    idle_s: float = 2.0              # after the publishers finish, no traffic for this long ends it
    fanin_publishers: int = 4
    fanout_subscribers: int = 10
    window: int = 100
    latency_rate: int = 1000
    latency_s: float = 10.0
    many_clients: int = 100
    many_filters: int = 100_000
    many_publish_s: float = 3.0
    connections_first: int = 5000
    connections_max: int = 0         # 0: as many as the descriptor limit allows
    connections_reserve: int = 100   # descriptors kept back for both processes' own use
    connections_hold_s: float = 2.0
    connections_phase_s: float = 30.0
    retained: int = 100_000
    disconnect_messages: int = 10_000  # per QoS, per variant
    ceiling_s: float = 3.0
    scenario_timeout_s: float = 120.0  # hard bound of any one scenario


FULL = Settings()
QUICK = replace(FULL, throughput_s=1.0, drain_s=3.0, idle_s=1.0, latency_s=2.0,
                many_filters=10_000, many_publish_s=1.0, connections_first=500,
                connections_max=2000,
                connections_phase_s=5.0, connections_hold_s=0.5, retained=5_000,
                disconnect_messages=1_000, ceiling_s=1.0, scenario_timeout_s=60.0)


class RelayRole:
    """Ceiling fan-out relay: a fake broker that copies one publisher's bytes to every
    subscriber unchanged (valid because a single publisher's stream is already framed)."""

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0), backlog=128)

    def port(self) -> dict:
        return {"port": self.listener.getsockname()[1]}

    def run(self, deadline_s: float) -> dict:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, None)
        subs: list[socket.socket] = []
        pending: dict[socket.socket, bytes] = {}  # connected, not yet classified
        publisher = None
        forwarded = 0
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                if sock is self.listener:
                    conn, _ = sock.accept()
                    tune_socket(conn)
                    pending[conn] = b""
                    sel.register(conn, selectors.EVENT_READ, None)
                    continue
                data = sock.recv(1 << 20)
                if not data:
                    sel.unregister(sock)
                    if sock is publisher:
                        return {"forwarded": forwarded}
                    continue
                if sock is publisher:
                    for s in subs:
                        s.sendall(data)
                    forwarded += len(data)
                    continue
                buf = pending[sock] + data
                pos = 0
                for first, body, end in w.split(buf)[0]:
                    kind = first >> 4
                    if kind == w.PUBLISH:  # the publisher: forward from here on, unparsed
                        publisher = sock
                        for s in subs:
                            s.sendall(buf[pos:])
                        forwarded += len(buf) - pos
                        pos = len(buf)
                        break
                    if kind == 1:  # CONNECT
                        sock.sendall(b"\x20\x02\x00\x00")
                    elif kind == 8:  # SUBSCRIBE: grant QoS 0
                        sock.sendall(b"\x90\x03" + buf[body:body + 2] + b"\x00")
                        subs.append(sock)
                    pos = end
                pending[sock] = buf[pos:]
        return {"forwarded": forwarded}

    def close(self) -> dict:
        self.listener.close()
        return {}


# -- scenarios -----------------------------------------------------------------------------


class Run:
    """Everything one scenario needs: port, settings, deadline, and the workers to clean up."""

    def __init__(self, port: int, cfg: Settings, broker_pid: int | None, tag: str) -> None:
        self.port, self.cfg, self.broker_pid, self.tag = port, cfg, broker_pid, tag
        self.deadline = time.monotonic() + cfg.scenario_timeout_s
        self.control = Control()
        self.workers: list[Worker] = []

    def left(self) -> float:
        """Seconds before the scenario's hard timeout."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ScenarioError(f"scenario timeout ({self.cfg.scenario_timeout_s:.0f} s)")
        return remaining

    def spawn(self, role: type, *args) -> Worker:
        worker = Worker(role, *args)
        self.workers.append(worker)
        return worker

    def subscribers(self, procs: int, clients: int, filters: list[str] | None = None,
                    qos: int = 0, port: int | None = None) -> list[Worker]:
        """``clients`` connected sockets spread over ``procs`` processes, each subscribed to
        ``filters`` if given; ``worker.clients`` holds the indexes of a worker's sockets."""
        workers = []
        first = 0
        for p in range(procs):
            n = clients // procs + (1 if p < clients % procs else 0)
            wk = self.spawn(SubscriberRole, port or self.port, self.control, self.tag,
                            None if port else self.broker_pid, p)
            wk.clients = range(first, first + n)
            first += n
            wk.send("connect", clients=n)
            workers.append(wk)
        for wk in workers:
            wk.reply(self.left())
        if filters:
            self.subscribe(workers, lambda _: filters, qos)
        return workers

    def subscribe(self, workers: list[Worker], filters_of, qos: int = 0) -> dict:
        """Subscribe client c to ``filters_of(c)`` on every worker; the slowest time counts."""
        for wk in workers:
            wk.send("subscribe", filters=[filters_of(c) for c in wk.clients], qos=qos,
                    timeout=self.left())
        answers = [wk.reply(self.left()) for wk in workers]
        return {"elapsed": max(a["elapsed"] for a in answers),
                "refused": sum(a["refused"] for a in answers)}

    def publishers(self, n: int, port: int | None = None, first_index: int = 0) -> list[Worker]:
        workers = [self.spawn(PublisherRole, port or self.port, first_index + i, self.tag,
                              self.control) for i in range(n)]
        for wk in workers:
            wk.send("connect")
        for wk in workers:
            wk.reply(self.left())
        return workers

    def measure(self, subs: list[Worker], pubs: list[Worker], mode: str, publish: str,
                per_socket, **publish_args) -> tuple[list[dict], list[dict], int]:
        """Start counting on ``subs``, run ``publish`` on every publisher from a common start
        time, then tell the subscribers what to expect (``per_socket(total sent)``) and
        collect everything: ``(subscriber answers, publisher answers, start time)``."""
        self.control.reset()
        cfg = self.cfg
        bound = min(self.left(), publish_args.get("duration_s", 0) + cfg.drain_s)
        for wk in subs:
            wk.send("count", mode=mode, idle_s=cfg.idle_s, deadline_s=bound)
        start = time.monotonic_ns() + NS // 20
        for wk in pubs:
            wk.send(publish, start_ns=start, **publish_args)
        pub_results = [wk.reply(self.left()) for wk in pubs]
        self.control.finish(per_socket(sum(r["sent"] for r in pub_results)))
        sub_results = [wk.reply(self.left()) for wk in subs]
        return sub_results, pub_results, start

    def close(self) -> None:
        for wk in self.workers:
            wk.stop()


def _drain(subs: list[dict], expected: int, delivered: int) -> dict:
    """``lost`` when the subscribers went idle short of ``expected``; ``undelivered`` when
    they were still receiving at the time limit (the broker buffered more than it could
    deliver in time, which is not a proven loss)."""
    missing = max(0, expected - delivered)
    if any(r["reason"] == "deadline" for r in subs):
        return {"lost": None, "undelivered": missing, "drained": False}
    return {"lost": missing, "drained": True}


def _throughput(subs: list[dict], pubs: list[dict], start: int, copies: int) -> dict:
    """Delivered rate from the common start to the last delivery, and the share delivered
    (``copies``: deliveries expected per message sent)."""
    delivered = sum(sum(r["counts"]) for r in subs)
    sent = sum(r["sent"] for r in pubs)
    last = max(r["last_ns"] for r in subs)
    pub_end = max(r["end_ns"] for r in pubs)
    expected = sent * copies
    return {
        "sent": sent,
        "delivered": delivered,
        **_drain(subs, expected, delivered),
        "delivered_per_s": round(delivered / ((last - start) / NS)) if last > start else 0,
        "delivered_pct": round(100.0 * delivered / expected, 3) if expected else 0.0,
        "published_per_s": round(sent / ((pub_end - start) / NS)),
        "seconds": round((max(last, pub_end) - start) / NS, 3),
    }


def _batch(cfg: Settings, topics: list[str], count: int, duration_s: float | None = None) -> dict:
    return {"topics": topics, "size": cfg.payload, "count": count,
            "duration_s": duration_s or cfg.throughput_s, "batch_bytes": cfg.batch_bytes}


def scenario_fan_in(run: Run) -> dict:
    """4 publishers (one topic each) -> 1 subscriber on bench/#, QoS 0."""
    cfg, n = run.cfg, run.cfg.fanin_publishers
    subs = run.subscribers(1, 1, ["bench/#"])
    pubs = run.publishers(n)
    s, p, start = run.measure(subs, pubs, "qos0", "batch", lambda sent: sent,
                              **_batch(cfg, ["bench/{i}"], cfg.max_messages // n))
    return _throughput(s, p, start, 1)


def scenario_fan_out(run: Run) -> dict:
    """1 publisher -> 10 subscribers (in 2 processes) on one topic, QoS 0."""
    cfg, n = run.cfg, run.cfg.fanout_subscribers
    subs = run.subscribers(2, n, ["bench/fanout"])
    pubs = run.publishers(1)
    s, p, start = run.measure(subs, pubs, "qos0", "batch", lambda sent: sent,
                              **_batch(cfg, ["bench/fanout"], cfg.max_messages // n))
    res = _throughput(s, p, start, n)
    res["messages_per_s"] = round(res["delivered_per_s"] / n)
    return res


def _scenario_qos(run: Run, qos: int) -> dict:
    """1 publisher with a window of unacknowledged messages -> 1 subscriber at the same QoS."""
    cfg = run.cfg
    topic = f"bench/qos{qos}"
    subs = run.subscribers(1, 1, [topic], qos=qos)
    pubs = run.publishers(1)
    s, p, start = run.measure(subs, pubs, f"ack{qos}", "window", lambda sent: sent, topic=topic,
                              size=cfg.payload, qos=qos, window=cfg.window,
                              count=cfg.max_messages, duration_s=cfg.throughput_s,
                              drain_s=cfg.drain_s)
    res = _throughput(s, p, start, 1)
    res["acknowledged"] = p[0]["completed"]
    return res


def scenario_qos1(run: Run) -> dict:
    return _scenario_qos(run, 1)


def scenario_qos2(run: Run) -> dict:
    return _scenario_qos(run, 2)


def scenario_latency(run: Run) -> dict:
    """1,000 msg/s paced, QoS 0: send-to-receive time of every message."""
    cfg = run.cfg
    subs = run.subscribers(1, 1, ["bench/latency"])
    pubs = run.publishers(1)
    s, p, _ = run.measure(subs, pubs, "latency", "paced", lambda sent: sent,
                          topic="bench/latency", size=cfg.payload, rate=cfg.latency_rate,
                          duration_s=cfg.latency_s)
    lat = sorted(v / 1e6 for v in s[0]["lat"])
    sent = p[0]["sent"]
    return {
        "sent": sent, "delivered": len(lat), **_drain(s, sent, len(lat)),
        "p50_ms": round(percentile(lat, 50), 4), "p99_ms": round(percentile(lat, 99), 4),
        "p999_ms": round(percentile(lat, 99.9), 4), "max_ms": round(lat[-1], 4) if lat else None,
        "cdf_ms": [round(percentile(lat, q), 4) for q in range(101)],
    }


def many_filters(client: int, count: int) -> tuple[list[str], list[str], list[str]]:
    """Client ``client``'s ``count`` distinct filters, a third each exact, ``+`` and ``#``.

    Returns ``(hit filters, other filters, hit topics)``: each hit topic matches exactly
    one filter of the whole population (its own hit filter), so a publish is one delivery.
    All topics have the same length, which keeps the subscribers on their fast path.
    """
    c = f"bench/m/{client:02d}"
    filters = []
    for i in range(count):
        kind = i % 3
        filters.append(f"{c}/{i:04d}/e{i:04d}" if kind == 0 else
                       f"{c}/+/p{i:04d}" if kind == 1 else f"{c}/{i:04d}/#")
    topics = [f"{c}/0000/e0000", f"{c}/0000/p0001", f"{c}/0002/h0000"]
    return filters[:3], filters[3:], topics


def scenario_many_subscriptions(run: Run) -> dict:
    """Publish rate with only the matching filters, then with 100,000 filters held by 100
    clients: the difference per publish is the cost of matching against the larger index."""
    cfg = run.cfg
    clients = cfg.many_clients
    per_client = cfg.many_filters // clients
    table = [many_filters(c, per_client) for c in range(clients)]
    topics = [t for _, _, ts in table for t in ts]
    subs = run.subscribers(2, clients)
    pubs = run.publishers(1)
    run.subscribe(subs, lambda c: table[c][0])

    def phase(seconds: float) -> dict:
        s, p, start = run.measure(subs, pubs, "qos0", "batch", lambda sent: sent / clients,
                                  ahead=4 * len(topics),
                                  **_batch(cfg, topics, cfg.max_messages, seconds))
        return _throughput(s, p, start, 1)

    phase(cfg.many_publish_s / 4)  # warm-up: first-use costs must not count as "base"
    base = phase(cfg.many_publish_s)
    rss0, cpu0 = broker_rss_kib(run.broker_pid), broker_cpu_s(run.broker_pid)
    sub = run.subscribe(subs, lambda c: table[c][1])
    rss1, cpu1 = broker_rss_kib(run.broker_pid), broker_cpu_s(run.broker_pid)
    full = phase(cfg.many_publish_s)
    total = clients * per_client
    added = total - 3 * clients
    res = {
        "subscriptions": total, "subscribe_s": round(sub["elapsed"], 3),
        "subscriptions_per_s": round(added / sub["elapsed"]), "refused": sub["refused"],
        "base_per_s": base["delivered_per_s"], "publish_per_s": full["delivered_per_s"],
        "sent": base["sent"] + full["sent"], "delivered_pct": full["delivered_pct"],
        "drained": base["drained"] and full["drained"],
        "lost": None if None in (base["lost"], full["lost"]) else base["lost"] + full["lost"],
    }
    if rss0 is not None and rss1 is not None:
        res["rss_per_subscription_bytes"] = round((rss1 - rss0) * 1024 / max(1, added))
    if cpu0 is not None and cpu1 is not None:
        # The broker's CPU time per subscription: the rate a broker with a core of its
        # own would reach, on a machine shared with other work (1 / this).
        res["subscribe_cpu_us"] = round((cpu1 - cpu0) * 1e6 / max(1, added), 3)
    if full["delivered_per_s"] and base["delivered_per_s"]:
        res["publish_vs_base"] = round(full["delivered_per_s"] / base["delivered_per_s"], 3)
        res["match_cost_us"] = round(1e6 / full["delivered_per_s"]
                                     - 1e6 / base["delivered_per_s"], 3)
    res["ok"] = sub["refused"] == 0 and res["lost"] == 0
    return res


def open_many(port: int, n: int, held: list[socket.socket], deadline: float, tag: str,
              window: int = 32, per_connection_s: float = 10.0,
              keepalive: int = 0) -> tuple[int, int, str]:
    """Open ``n`` MQTT connections with up to ``window`` handshakes in flight (below the
    listen backlog of every broker here); append them to ``held``.

    Returns ``(connected, failed, why it stopped early or "")``.
    """
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, list] = {}
    started = done = failed = 0
    why = ""
    while done + failed < n:
        now = time.monotonic()
        if now > deadline:
            why = "phase time limit"
            break
        while len(pending) < window and started < n and not why:
            try:
                s = socket.socket()
            except OSError as e:
                why = f"loadgen: {e}"
                break
            s.setblocking(False)
            tune_socket(s)
            # Pick the port at connect() time from the whole 4-tuple, not at bind() time.
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((SOURCES[started % len(SOURCES)], 0))
            s.connect_ex((HOST, port))
            pending[s] = [now, b""]
            sel.register(s, selectors.EVENT_WRITE)
            started += 1
        if why and not pending:
            break
        for key, events in sel.select(0.1):
            s = key.fileobj
            try:
                if events & selectors.EVENT_WRITE:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    s.send(w.connect(client_id(tag), keepalive))
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                data = pending[s][1] + s.recv(16)
                if not data or (len(data) >= 4 and (data[0] != 0x20 or data[3] != 0)):
                    raise OSError("refused or closed")
                pending[s][1] = data
                if len(data) >= 4:
                    sel.unregister(s)
                    del pending[s]
                    held.append(s)
                    done += 1
            except OSError:
                sel.unregister(s)
                del pending[s]
                s.close()
                failed += 1
        for s, (t0, _) in list(pending.items()):
            if now - t0 > per_connection_s:
                sel.unregister(s)
                del pending[s]
                s.close()
                failed += 1
    for s in pending:
        s.close()
    sel.close()
    return done, failed, why


def count_alive(held: list[socket.socket]) -> int:
    """How many of ``held`` the broker has not closed (no EOF, no error pending)."""
    sel = selectors.DefaultSelector()
    for s in held:
        sel.register(s, selectors.EVENT_READ)
    dead = 0
    for key, _ in sel.select(0):
        try:
            if not key.fileobj.recv(1024):
                dead += 1
        except BlockingIOError:
            pass
        except OSError:
            dead += 1
    sel.close()
    return len(held) - dead


def scenario_connections(run: Run) -> dict:
    """5,000 idle connections, then as many as the descriptor limit allows: connects/s, how
    many are still held after a pause, and the broker's RSS per connection."""
    cfg = run.cfg
    target = raise_fd_limit() - cfg.connections_reserve
    target = min(target, cfg.connections_max or target)
    first = min(cfg.connections_first, target)
    held: list[socket.socket] = []
    rss0 = broker_rss_kib(run.broker_pid)
    try:
        t0 = time.monotonic()
        ok1, failed1, why1 = open_many(run.port, first, held,
                                       t0 + min(cfg.connections_phase_s, run.left()), run.tag)
        connect_s = time.monotonic() - t0
        time.sleep(cfg.connections_hold_s)
        held1, rss1 = count_alive(held), broker_rss_kib(run.broker_pid)
        t1 = time.monotonic()
        ok2, failed2, why2 = open_many(run.port, target - len(held), held,
                                       t1 + min(cfg.connections_phase_s, run.left()), run.tag)
        more_s = time.monotonic() - t1
        time.sleep(cfg.connections_hold_s)
        held2, rss2 = count_alive(held), broker_rss_kib(run.broker_pid)
    finally:
        linger = struct.pack("ii", 1, 0)  # close with a reset: no 20k TIME_WAIT leftovers
        for s in held:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.close()
    res = {
        "first": first, "connects_per_s": round(ok1 / connect_s), "held_first": held1,
        "target": target, "held": held2, "connects_per_s_all": round(ok2 / more_s) if ok2 else 0,
        "failed": failed1 + failed2, "stopped": why1 or why2 or None, "rss_base_kib": rss0,
    }
    if rss0 is not None and rss1 is not None and held1:
        res["rss_per_conn_kib"] = round((rss1 - rss0) / held1, 2)
    if rss0 is not None and rss2 is not None and held2:
        res["rss_per_conn_max_kib"] = round((rss2 - rss0) / held2, 2)
        res["rss_max_kib"] = rss2
    res["ok"] = held1 == first and held2 == target
    return res


def scenario_retained(run: Run) -> dict:
    """Store 100,000 retained messages, then time a ``#`` subscriber until it has them all."""
    cfg, n = run.cfg, run.cfg.retained
    sub = run.subscribers(1, 1)[0]
    pub = run.publishers(1)[0]
    stored = pub.call("retained", run.left(), topic_fmt="bench/retained/{:06d}",
                      size=cfg.payload, n=n, timeout=run.left())
    run.control.expect(n)
    got = sub.call("count", run.left(), mode="qos0", deadline_s=run.left() - 1, idle_s=0,
                   send_first=w.subscribe(1, ["#"], 0))
    received = got["counts"][0]
    return {
        "retained": n, "store_s": round(stored["elapsed"], 3), "received": received,
        "fetch_s": round((got["last_ns"] - got["start_ns"]) / NS, 3) if received else None,
        "lost": n - received, "drained": got["reason"] == "complete", "ok": received == n,
    }


def scenario_publisher_disconnect(run: Run) -> dict:
    """A publisher writes N QoS 0 and N QoS 1 PUBLISHes and disconnects at once, first with a
    DISCONNECT and a clean close, then by closing with PUBACKs unread (the kernel sends a
    reset): the QoS 1 subscriber must receive every message of both."""
    cfg, n = run.cfg, run.cfg.disconnect_messages
    topic = "bench/pd"
    sub = run.subscribers(1, 1, [topic], qos=1)[0]
    run.control.reset()
    sub.send("count", mode="seq", deadline_s=min(run.left(), 30 + cfg.drain_s),
             idle_s=cfg.idle_s)
    variants = ["disconnect", "reset"]
    for index, variant in enumerate(variants):
        pub = run.publishers(1, first_index=index)[0]
        pub.call("burst_close", run.left(), topic=topic, size=cfg.payload, n=n,
                 careful=variant == "disconnect")
    run.control.finish(2 * n * len(variants))
    got = sub.reply(run.left())
    seen = got["seen"]
    res: dict = {"sent": 2 * n * len(variants), "delivered": len(seen),
                 "duplicates": got["counts"][0] - len(seen)}
    for index, variant in enumerate(variants):
        mine = [seq for pub, seq in seen if pub == index]
        res[f"lost_qos0_{variant}"] = n - sum(1 for seq in mine if seq % 2 == 0)
        res[f"lost_qos1_{variant}"] = n - sum(1 for seq in mine if seq % 2 == 1)
    res["lost"] = res["sent"] - len(seen)
    res["drained"] = got["reason"] != "deadline"
    res["ok"] = res["lost"] == 0
    return res


def scenario_ceiling(run: Run) -> dict:
    """The generator's own ceiling, no broker: fan-in into a counting sink, and fan-out
    through a byte-copying relay."""
    cfg, n = run.cfg, run.cfg.fanin_publishers
    fast = replace(cfg, throughput_s=cfg.ceiling_s)
    sink = run.spawn(SubscriberRole, 0, run.control, run.tag, None)
    port = sink.call("listen", run.left())["port"]
    sink.send("accept", clients=n, timeout=10.0)
    pubs = run.publishers(n, port=port)
    sink.reply(run.left())
    s, p, start = run.measure([sink], pubs, "qos0", "batch", lambda sent: sent / n,
                              **_batch(fast, ["bench/{i}"], cfg.max_messages // n))
    fan_in = _throughput(s, p, start, 1)

    relay = run.spawn(RelayRole)
    port = relay.call("port", run.left())["port"]
    relay.send("run", deadline_s=run.left())
    k = cfg.fanout_subscribers
    subs = run.subscribers(2, k, ["bench/fanout"], port=port)
    pub = run.publishers(1, port=port)
    s, p, start = run.measure(subs, pub, "qos0", "batch", lambda sent: sent,
                              **_batch(fast, ["bench/fanout"], cfg.max_messages // k))
    fan_out = _throughput(s, p, start, k)
    return {"fanin_per_s": fan_in["delivered_per_s"], "fanin_pct": fan_in["delivered_pct"],
            "fanout_deliveries_per_s": fan_out["delivered_per_s"],
            "fanout_pct": fan_out["delivered_pct"],
            "ok": fan_in["lost"] == 0 and fan_out["lost"] == 0}  # None (not drained) fails


SCENARIOS = {name: globals()["scenario_" + name.replace("-", "_")] for name in ALL_SCENARIOS}


def run_scenario(name: str, port: int, cfg: Settings, broker: str, pid: int | None) -> dict:
    """Run one scenario and return its result line (``ok: false`` plus ``error`` on failure)."""
    run = Run(port, cfg, pid, tag=name[:2].replace("-", ""))
    line: dict = {"broker": broker, "scenario": name, "quick": cfg is QUICK}
    t0 = time.monotonic()
    try:
        figures = SCENARIOS[name](run)
        line["ok"] = figures.pop("ok", figures.get("lost", 0) == 0)
        line.update(figures)
    except (ScenarioError, OSError) as e:
        line.update(ok=False, error=f"{type(e).__name__}: {e}")
    finally:
        run.close()
    line["elapsed_s"] = round(time.monotonic() - t0, 2)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, help="the broker's port on 127.0.0.1")
    parser.add_argument("--scenario", action="append", choices=[*ALL_SCENARIOS, "all"],
                        help="repeatable; default: all (ceiling alone without --port)")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (seconds)")
    parser.add_argument("--broker", default="unknown", help="name written into each line")
    parser.add_argument("--broker-pid", type=int, help="broker pid, for RSS per connection")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE",
                        default=[s for s in os.environ.get("LOADGEN_SET", "").split(",") if s],
                        help="change one size of Settings, e.g. many_filters=1000000 "
                             "(repeatable; also LOADGEN_SET=a=1,b=2 in the environment, "
                             "which is how bench/compare.py passes sizes on)")
    args = parser.parse_args(argv)
    names = args.scenario or ["all"]
    if "all" in names:
        names = ALL_SCENARIOS if args.port else ["ceiling"]
    if any(n != "ceiling" for n in names) and not args.port:
        parser.error("--port is required for broker scenarios")
    raise_fd_limit()
    cfg = QUICK if args.quick else FULL
    for assignment in args.set:
        name, _, value = assignment.partition("=")
        if name not in Settings.__dataclass_fields__:
            parser.error(f"--set: no size named {name!r}")
        cfg = replace(cfg, **{name: type(getattr(cfg, name))(value)})
    ok = True
    for name in names:
        line = run_scenario(name, args.port or 0, cfg,
                            "none" if name == "ceiling" else args.broker, args.broker_pid)
        ok &= line["ok"]
        print(json.dumps(line, separators=(",", ":")), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
