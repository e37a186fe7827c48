"""MQTT benchmark load generator: one broker on 127.0.0.1, one JSON line per scenario.

Why it is built this way: the load generator must never be the bottleneck, even for the
fastest broker we compare with, on a 2-core machine where the broker takes one core.  So:

* raw sockets with pre-encoded MQTT 3.1.1 packets (``mqttwire``); the hot path only patches a
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
import fcntl
import itertools
import json
import multiprocessing as mp
import os
import resource
import selectors
import socket
import struct
import sys
import termios
import time
from dataclasses import dataclass, replace

import mqttwire as w

HOST = "127.0.0.1"  # the only address this tool ever connects to or listens on
# Source addresses of the connections scenario's clients (still loopback): one address has
# only ~28k ephemeral ports, and TIME_WAIT leftovers of earlier runs eat into them.
SOURCES = [f"127.0.0.{n}" for n in range(2, 18)]
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux >= 4.2
BROKER_SCENARIOS = ["fan-in", "fan-out", "qos1", "qos2", "latency", "many-subscriptions",
                    "connections", "retained", "publisher-disconnect"]
ALL_SCENARIOS = ["ceiling", *BROKER_SCENARIOS]
NS = 1_000_000_000


class ScenarioError(Exception):
    """A scenario could not complete: timeout, refused connection, dead worker."""


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


# -- sockets -------------------------------------------------------------------------------


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes (within the socket's timeout)."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ScenarioError("connection closed by the broker")
        data += chunk
    return data


def open_client(port: int, client_id: str, timeout: float = 10.0) -> socket.socket:
    """Connect, send CONNECT and wait for a successful CONNACK."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    _tune(sock)
    sock.sendall(w.connect(client_id))
    ack = recv_exact(sock, w.CONNACK_LEN)
    if ack[0] != 0x20 or ack[3] != 0:
        sock.close()
        raise ScenarioError(f"CONNACK refused: {ack.hex()}")
    return sock


_IDS = itertools.count()


def client_id(tag: str) -> str:
    """A client identifier unique on this machine for the run (pid + counter), 3.1.1-safe:
    alphanumeric, at most 23 characters.  A duplicate would make the broker take over (close)
    the older connection."""
    return f"lg{tag}{os.getpid():x}n{next(_IDS):x}"


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (SIOCOUTQ)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]


def broker_rss_kib(pid: int | None) -> int | None:
    """The broker's resident set size (VmRSS, KiB) from /proc, or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def broker_cpu_ticks(pid: int | None) -> int:
    """The broker's user + system CPU time in clock ticks (0 when unknown)."""
    if not pid:
        return 0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def wait_until(t_ns: int) -> None:
    delay = t_ns - time.monotonic_ns()
    if delay > 0:
        time.sleep(delay / NS)


# -- worker processes ----------------------------------------------------------------------


class Worker:
    """A child process running one ``*Role`` object, driven by ``(command, kwargs)`` messages."""

    def __init__(self, role: type, *args) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=_serve, args=(role, child, *args), daemon=True)
        self.proc.start()
        self.name = f"{role.__name__.removesuffix('Role').lower()} (pid {self.proc.pid})"
        child.close()

    def send(self, command: str, **kwargs) -> None:
        self.conn.send((command, kwargs))

    def reply(self, timeout: float):
        """The answer to the last command; ScenarioError on timeout, error or death."""
        try:
            if not self.conn.poll(max(0.0, timeout)):
                raise ScenarioError(f"{self.name} gave no answer within {timeout:.0f} s")
            answer = self.conn.recv()
        except (EOFError, OSError) as e:
            raise ScenarioError(f"{self.name} died") from e
        if isinstance(answer, dict) and "error" in answer:
            raise ScenarioError(f"{self.name}: {answer['error']}")
        return answer

    def call(self, command: str, wait: float, **kwargs):
        self.send(command, **kwargs)
        return self.reply(wait)

    def stop(self) -> None:
        """End the process (politely, then by force)."""
        try:
            self.send("close")
        except OSError:
            pass
        self.proc.join(0.5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(1.0)
        self.conn.close()


def _serve(role: type, conn, *args) -> None:
    """Child process main loop: run commands on the role object until ``close``."""
    obj = role(*args)
    while True:
        try:
            command, kwargs = conn.recv()
        except EOFError:
            return
        try:
            answer = getattr(obj, command)(**kwargs)
        except Exception as e:
            answer = {"error": f"{type(e).__name__}: {e}"}
        try:
            conn.send(answer)
        except OSError:
            return
        if command == "close":
            return


class Control:
    """Values the parent, subscriber and publisher processes share while they count.

    ``expected`` is the number of PUBLISHes each subscriber socket should get on average (-1
    until known): a process with k sockets stops once it has counted k times that.  ``done``
    says the publishers have finished, which lets the idle timeout apply.  Each subscriber
    process also publishes its running count in its own slot (no lock needed), which lets a
    publisher stay a bounded number of messages ahead of delivery.
    """

    SLOTS = 16  # subscriber processes at most

    def __init__(self) -> None:
        self._arr = mp.RawArray("d", 2 + self.SLOTS)
        self.reset()

    def reset(self) -> None:
        self._arr[0] = -1
        self._arr[1] = 0
        for i in range(self.SLOTS):
            self._arr[2 + i] = 0

    def set_received(self, slot: int, n: int) -> None:
        self._arr[2 + slot] = n

    @property
    def received(self) -> int:
        return int(sum(self._arr[2:]))

    def expect(self, per_socket: float) -> None:
        self._arr[0] = per_socket

    def finish(self, per_socket: float) -> None:
        self._arr[0] = per_socket
        self._arr[1] = 1

    @property
    def expected(self) -> int:
        return self._arr[0]

    @property
    def done(self) -> bool:
        return bool(self._arr[1])


class SubscriberRole:
    """Holds several subscriber sockets and counts what arrives on them."""

    def __init__(self, port: int, control: Control, tag: str, broker_pid: int | None,
                 slot: int = 0) -> None:
        self.port, self.control, self.tag, self.broker_pid = port, control, tag, broker_pid
        self.slot = slot
        self.socks: list[socket.socket] = []
        self.left: list[bytes] = []
        self.listener: socket.socket | None = None

    def connect(self, clients: int) -> dict:
        for _ in range(clients):
            self.socks.append(open_client(self.port, client_id(self.tag)))
            self.left.append(b"")
        return {"connected": len(self.socks)}

    def listen(self) -> dict:
        """Ceiling sink: listen on an ephemeral loopback port, acting as a fake broker."""
        self.listener = socket.create_server((HOST, 0), backlog=128)
        return {"port": self.listener.getsockname()[1]}

    def accept(self, clients: int, timeout: float) -> dict:
        """Ceiling sink: accept publishers, answering each CONNECT with a CONNACK."""
        self.listener.settimeout(timeout)
        for _ in range(clients):
            sock, _ = self.listener.accept()
            sock.settimeout(timeout)
            _tune(sock)
            head = recv_exact(sock, 2)
            recv_exact(sock, head[1])  # short CONNECT: one-byte remaining length
            sock.sendall(b"\x20\x02\x00\x00")
            self.socks.append(sock)
            self.left.append(b"")
        return {"accepted": len(self.socks)}

    def subscribe(self, filters: list[list[str]], qos: int, per_packet: int = 100,
                  timeout: float = 60.0) -> dict:
        """Subscribe socket i to ``filters[i]``; wait for every SUBACK; count refused filters."""
        t0 = time.monotonic()
        pending = {}
        for i, flist in enumerate(filters):
            chunks = [flist[k:k + per_packet] for k in range(0, len(flist), per_packet)]
            data = b"".join(w.subscribe(n + 1, c, qos) for n, c in enumerate(chunks))
            self.socks[i].sendall(data)
            pending[i] = len(chunks)
        refused = 0
        sel = selectors.DefaultSelector()
        for i in pending:
            sel.register(self.socks[i], selectors.EVENT_READ, i)
        deadline = t0 + timeout
        while pending:
            if time.monotonic() > deadline:
                raise ScenarioError(f"{sum(pending.values())} SUBACKs missing after {timeout} s")
            for key, _ in sel.select(0.5):
                i = key.data
                data = self.socks[i].recv(1 << 20)
                if not data:
                    raise ScenarioError("connection closed while subscribing")
                buf = self.left[i] + data
                found, rest = w.split(buf)
                for first, body, end in found:
                    if first >> 4 == w.SUBACK:
                        refused += buf[body + 2:end].count(0x80)
                        pending[i] -= 1
                        if not pending[i]:
                            del pending[i]
                            sel.unregister(self.socks[i])
                self.left[i] = buf[rest:]
        sel.close()
        return {"elapsed": time.monotonic() - t0, "refused": refused}

    def count(self, mode: str, deadline_s: float, idle_s: float, send_first: bytes = b"") -> dict:
        """Count PUBLISHes until every socket has ``control.expected``, or idle, or deadline.

        Modes: ``qos0`` counts only; ``ack1``/``ack2`` acknowledge QoS 1/2 deliveries;
        ``latency`` records send-to-receive times; ``seq`` records (publisher, sequence)
        pairs and acknowledges QoS 1.  ``send_first`` (e.g. a SUBSCRIBE) is written to every
        socket at the start, for timing what follows it.
        """
        parse = getattr(self, f"_parse_{mode}")
        self.lat: list[int] = []
        self.seen: set[tuple[int, int]] = set()
        counts = [0] * len(self.socks)
        live = len(self.socks)
        sel = selectors.DefaultSelector()
        for i, s in enumerate(self.socks):
            sel.register(s, selectors.EVENT_READ, i)
        start = time.monotonic_ns()
        for s in self.socks:
            if send_first:
                s.sendall(send_first)
        deadline = start + int(deadline_s * NS)
        first_ns = last_ns = 0
        activity = start
        control = self.control
        reason = "closed"
        busy_ticks = broker_cpu_ticks(self.broker_pid)
        while live:
            events = sel.select(0.05)
            now = time.monotonic_ns()
            for key, _ in events:
                i = key.data
                data = key.fileobj.recv(1 << 20)
                if not data:
                    sel.unregister(key.fileobj)
                    live -= 1
                    continue
                n = parse(i, data, now)
                if n:
                    counts[i] += n
                    last_ns = now
                    if not first_ns:
                        first_ns = now
                activity = now
            if events:
                control.set_received(self.slot, sum(counts))
            expected = control.expected
            if expected >= 0 and sum(counts) >= int(expected * len(counts) + 1e-6):
                reason = "complete"
                break
            if control.done and now - activity > idle_s * NS:
                # No delivery for idle_s: lost, unless the broker is still busy (a slow
                # broker can work through its backlog for seconds between deliveries).
                ticks = broker_cpu_ticks(self.broker_pid)
                if ticks - busy_ticks > idle_s * 10:  # > 10 % of one core (100 ticks/s)
                    busy_ticks, activity = ticks, now
                else:
                    reason = "idle"  # the broker went quiet: what is missing is lost
                    break
            if now > deadline:
                reason = "deadline"  # still arriving: what is missing is undelivered, not lost
                break
        sel.close()
        return {"counts": counts, "start_ns": start, "first_ns": first_ns, "last_ns": last_ns,
                "reason": reason, "lat": self.lat, "seen": sorted(self.seen)}

    def _joined(self, i: int, data: bytes) -> bytes:
        return self.left[i] + data if self.left[i] else data

    def _parse_qos0(self, i: int, data: bytes, now: int) -> int:
        buf = self._joined(i, data)
        n, pos = w.count_publishes(buf)
        self.left[i] = buf[pos:]
        return n

    def _parse_ack1(self, i: int, data: bytes, now: int) -> int:
        return self._parse_acking(i, data, now, record=False)

    def _parse_seq(self, i: int, data: bytes, now: int) -> int:
        return self._parse_acking(i, data, now, record=True)

    def _parse_acking(self, i: int, data: bytes, now: int, record: bool) -> int:
        buf = self._joined(i, data)
        out = bytearray()
        n = 0
        found, rest = w.split(buf)
        for first, body, _ in found:
            if first >> 4 == w.PUBLISH:
                n += 1
                pid, pay = w.publish_parts(buf, first, body)
                if pid >= 0:
                    out += w.ack(w.PUBACK, buf[pid:pid + 2])
                if record:
                    _, seq, pub = w.PAYLOAD_HEADER.unpack_from(buf, pay)
                    self.seen.add((pub, seq))
        self.left[i] = buf[rest:]
        if out:
            self.socks[i].sendall(out)
        return n

    def _parse_ack2(self, i: int, data: bytes, now: int) -> int:
        buf = self._joined(i, data)
        out = bytearray()
        n = 0
        found, rest = w.split(buf)
        for first, body, _ in found:
            kind = first >> 4
            if kind == w.PUBLISH:
                n += 1
                pid, _ = w.publish_parts(buf, first, body)
                if pid >= 0:
                    out += w.ack(w.PUBREC if first & 0x04 else w.PUBACK, buf[pid:pid + 2])
            elif kind == w.PUBREL:
                out += w.ack(w.PUBCOMP, buf[body:body + 2])
        self.left[i] = buf[rest:]
        if out:
            self.socks[i].sendall(out)
        return n

    def _parse_latency(self, i: int, data: bytes, now: int) -> int:
        buf = self._joined(i, data)
        n = 0
        found, rest = w.split(buf)
        for first, body, _ in found:
            if first >> 4 == w.PUBLISH:
                n += 1
                _, pay = w.publish_parts(buf, first, body)
                self.lat.append(now - w.TIMESTAMP.unpack_from(buf, pay)[0])
        self.left[i] = buf[rest:]
        return n

    def close(self) -> dict:
        for s in self.socks:
            s.close()
        if self.listener:
            self.listener.close()
        return {}


class PublisherRole:
    """One publisher socket and the ways of loading a broker through it."""

    def __init__(self, port: int, index: int, tag: str, control: Control) -> None:
        self.port, self.index, self.tag, self.control = port, index, tag, control
        self.sock: socket.socket | None = None

    def connect(self) -> dict:
        self.sock = open_client(self.port, client_id(self.tag))
        return {}

    def batch(self, topics: list[str], size: int, count: int, duration_s: float,
              start_ns: int, batch_bytes: int, ahead: int = 0) -> dict:
        """QoS 0 PUBLISHes cycling over ``topics`` (``{i}`` is this publisher's index),
        ~``batch_bytes`` per send, until the count or the time is reached; the send time is
        patched into the first PUBLISH of each batch.  ``ahead`` > 0: never more than that
        many messages sent but not yet received by the subscribers (closed loop: measures
        capacity without leaving a backlog in the broker)."""
        one_round = [w.publish(t.format(i=self.index), w.payload(size, 0, self.index))
                     for t in topics]
        round_bytes = b"".join(one_round)
        rounds = max(1, min(batch_bytes // len(round_bytes), -(-count // len(topics))))
        batch = bytearray(round_bytes * rounds)
        per_batch = rounds * len(topics)
        ts_at = w.payload_offset(one_round[0])
        sock = self.sock
        sock.settimeout(0.2)
        view = memoryview(batch)
        deadline = start_ns + int(duration_s * NS)
        sent = 0
        wait_until(start_ns)
        while sent + per_batch <= count and time.monotonic_ns() < deadline:
            if ahead and sent - self.control.received > ahead:
                time.sleep(0.0002)
                continue
            w.TIMESTAMP.pack_into(batch, ts_at, time.monotonic_ns())
            off = 0
            while off < len(batch):
                try:
                    off += sock.send(view[off:])
                except TimeoutError:
                    if time.monotonic_ns() > deadline:
                        break
            if off < len(batch):  # stopped mid-batch at the deadline: count whole packets
                sent += w.count_publishes(batch[:off])[0]
                break
            sent += per_batch
        return {"sent": sent, "end_ns": time.monotonic_ns()}

    def paced(self, topic: str, size: int, rate: int, duration_s: float, start_ns: int) -> dict:
        """One QoS 0 PUBLISH every 1/rate s, each stamped just before its own send."""
        packet = bytearray(w.publish(topic, w.payload(size, 0, self.index)))
        at = w.payload_offset(packet)
        total = int(rate * duration_s)
        for seq in range(total):
            wait_until(start_ns + seq * NS // rate)
            w.PAYLOAD_HEADER.pack_into(packet, at, time.monotonic_ns(), seq, self.index)
            self.sock.sendall(packet)
        return {"sent": total, "end_ns": time.monotonic_ns()}

    def window(self, topic: str, size: int, qos: int, window: int, count: int,
               duration_s: float, drain_s: float, start_ns: int) -> dict:
        """QoS 1/2 PUBLISHes with at most ``window`` unacknowledged (PUBACK / PUBCOMP)."""
        ids = 65535
        packet_len = len(w.publish(topic, w.payload(size), qos, 1))
        blob = b"".join(w.publish(topic, w.payload(size, 0, self.index), qos, pid)
                        for pid in range(1, ids + 1))
        sock = self.sock
        sock.settimeout(0.2)
        deadline = start_ns + int(duration_s * NS)
        stuck = deadline + int(drain_s * NS)
        sent = completed = nxt = 0
        left = b""
        wait_until(start_ns)
        while True:
            now = time.monotonic_ns()
            sending = now < deadline and sent < count
            inflight = sent - completed
            if sending and inflight < window:
                k = min(window - inflight, count - sent)
                a, b = nxt * packet_len, (nxt + k) * packet_len
                data = blob[a:b] if nxt + k <= ids else blob[a:] + blob[:b - len(blob)]
                sock.sendall(data)
                nxt = (nxt + k) % ids
                sent += k
            elif (not sending and inflight == 0) or now > stuck:
                break
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not data:
                raise ScenarioError("connection closed by the broker")
            buf = left + data if left else data
            out = bytearray()
            found, rest = w.split(buf)
            for first, body, _ in found:
                kind = first >> 4
                if kind in (w.PUBACK, w.PUBCOMP):
                    completed += 1
                elif kind == w.PUBREC:
                    out += w.ack(w.PUBREL, buf[body:body + 2])
            left = buf[rest:]
            if out:
                sock.sendall(out)
        return {"sent": sent, "completed": completed, "end_ns": time.monotonic_ns()}

    def burst_close(self, topic: str, size: int, n: int, careful: bool) -> dict:
        """Write ``n`` QoS 0 and ``n`` QoS 1 PUBLISHes (alternating) and disconnect at once,
        without waiting for a single PUBACK.

        ``careful``: DISCONNECT, half-close, then read (and drop) until the broker closes:
        nothing the broker does can be blamed on us.  Otherwise close as soon as the broker's
        kernel has acknowledged our bytes (SIOCOUTQ = 0): with PUBACKs unread, the kernel then
        resets the connection, which a broker must survive without dropping what it received.
        (Waiting for SIOCOUTQ matters: a reset discards our own untransmitted bytes.)
        """
        parts = []
        for seq in range(n):
            parts.append(w.publish(topic, w.payload(size, 2 * seq, self.index), 0))
            parts.append(w.publish(topic, w.payload(size, 2 * seq + 1, self.index), 1,
                                   seq % 65535 + 1))
        if careful:
            parts.append(w.DISCONNECT)
        sock = self.sock
        sock.settimeout(30.0)
        sock.sendall(b"".join(parts))
        limit = time.monotonic() + 30.0
        if careful:
            sock.shutdown(socket.SHUT_WR)
            while time.monotonic() < limit and sock.recv(1 << 16):
                pass
        else:
            while unsent_bytes(sock) and time.monotonic() < limit:
                time.sleep(0.001)
        sock.close()
        self.sock = None
        return {"sent": 2 * n}

    def retained(self, topic_fmt: str, size: int, n: int, timeout: float) -> dict:
        """Store ``n`` retained messages on distinct topics: QoS 0, except the last at QoS 1,
        whose PUBACK tells that the broker has processed all the ones before it."""
        data = b"".join(w.publish(topic_fmt.format(i), w.payload(size, i), 0, retain=True)
                        for i in range(n - 1))
        data += w.publish(topic_fmt.format(n - 1), w.payload(size, n - 1), 1, 1, retain=True)
        self.sock.settimeout(timeout)
        t0 = time.monotonic()
        self.sock.sendall(data)
        ack = recv_exact(self.sock, 4)
        if ack[0] >> 4 != w.PUBACK:
            raise ScenarioError(f"expected PUBACK, got {ack.hex()}")
        return {"elapsed": time.monotonic() - t0}

    def close(self) -> dict:
        if self.sock:
            self.sock.close()
        return {}


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
                    _tune(conn)
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


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


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
    sub = run.subscribe(subs, lambda c: table[c][1])
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
    if full["delivered_per_s"] and base["delivered_per_s"]:
        res["match_cost_us"] = round(1e6 / full["delivered_per_s"]
                                     - 1e6 / base["delivered_per_s"], 3)
    res["ok"] = sub["refused"] == 0 and res["lost"] == 0
    return res


def open_many(port: int, n: int, held: list[socket.socket], deadline: float, tag: str,
              window: int = 32, per_connection_s: float = 10.0) -> tuple[int, int, str]:
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
            _tune(s)
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
                    s.send(w.connect(client_id(tag)))
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
    args = parser.parse_args(argv)
    names = args.scenario or ["all"]
    if "all" in names:
        names = ALL_SCENARIOS if args.port else ["ceiling"]
    if any(n != "ceiling" for n in names) and not args.port:
        parser.error("--port is required for broker scenarios")
    raise_fd_limit()
    cfg = QUICK if args.quick else FULL
    ok = True
    for name in names:
        line = run_scenario(name, args.port or 0, cfg,
                            "none" if name == "ceiling" else args.broker, args.broker_pid)
        ok &= line["ok"]
        print(json.dumps(line, separators=(",", ":")), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
