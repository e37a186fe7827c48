"""The load generator's two roles, each run in its own process by a ``Worker``: a
subscriber holding sockets and counting (or timing) what arrives, and a publisher
loading the broker through one socket (moved from ``bench/loadgen.py``)."""

from __future__ import annotations

import select
import selectors
import socket
import time

from mqtt_twisted.loadgen import wire as w
from mqtt_twisted.loadgen.workers import (
    HOST,
    NS,
    Control,
    ScenarioError,
    broker_cpu_ticks,
    client_id,
    open_client,
    recv_exact,
    tune_socket,
    unsent_bytes,
    wait_until,
)

__all__ = ["PublisherRole", "SubscriberRole"]


class SubscriberRole:
    """Holds several subscriber sockets and counts what arrives on them."""

    def __init__(self, port: int, control: Control, tag: str, broker_pid: int | None,
                 slot: int = 0, host: str = HOST) -> None:
        self.port, self.control, self.tag, self.broker_pid = port, control, tag, broker_pid
        self.host = host
        self.slot = slot
        self.socks: list[socket.socket] = []
        self.left: list[bytes] = []
        self.listener: socket.socket | None = None

    def connect(self, clients: int) -> dict:
        for _ in range(clients):
            self.socks.append(open_client(self.port, client_id(self.tag), host=self.host))
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
            tune_socket(sock)
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
        self.per_pub: dict[int, int] = {}
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

    def _parse_stamped(self, i: int, data: bytes, now: int) -> int:
        """Every PUBLISH's send-to-receive time, the count from each publisher, and the
        QoS 1/2 acknowledgements."""
        buf = self._joined(i, data)
        out = bytearray()
        n = 0
        lat = self.lat
        per_pub = self.per_pub
        found, rest = w.split(buf)
        for first, body, _ in found:
            kind = first >> 4
            if kind == w.PUBLISH:
                n += 1
                pid, pay = w.publish_parts(buf, first, body)
                sent_ns, _, pub = w.PAYLOAD_HEADER.unpack_from(buf, pay)
                lat.append(now - sent_ns)
                per_pub[pub] = per_pub.get(pub, 0) + 1
                if pid >= 0:
                    out += w.ack(w.PUBREC if first & 0x04 else w.PUBACK, buf[pid:pid + 2])
            elif kind == w.PUBREL:
                out += w.ack(w.PUBCOMP, buf[body:body + 2])
        self.left[i] = buf[rest:]
        for pub, got in per_pub.items():
            self.control.set_received_from(pub, got)
        if out:
            self.socks[i].sendall(out)
        return n

    def close(self) -> dict:
        for s in self.socks:
            s.close()
        if self.listener:
            self.listener.close()
        return {}


class PublisherRole:
    """One publisher socket and the ways of loading a broker through it."""

    def __init__(self, port: int, index: int, tag: str, control: Control,
                 host: str = HOST) -> None:
        self.port, self.index, self.tag, self.control = port, index, tag, control
        self.host = host
        self.sock: socket.socket | None = None

    def connect(self) -> dict:
        self.sock = open_client(self.port, client_id(self.tag), host=self.host)
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

    def stamped(self, topic: str, size: int, qos: int, window: int, count: int,
                duration_s: float, drain_s: float, start_ns: int, share: int = 1) -> dict:
        """Every PUBLISH stamped with its send time, at most ``window`` ahead: neither
        unacknowledged (QoS 1/2: PUBACK / PUBCOMP) nor not yet received by the
        subscribers (``control.received_from(index) / share``: ``share`` is the number of
        subscriber sockets, all in one process), so that the rate and latencies measured are those of a broker at
        capacity without a growing backlog (``mqtt-twisted bench``)."""
        template = bytearray(w.publish(topic, w.payload(size, 0, self.index), qos,
                                       1 if qos else 0))
        at, plen = w.payload_offset(template), len(template)
        pid_at = at - 2
        sock, control, index = self.sock, self.control, self.index
        sock.settimeout(10.0)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        deadline = start_ns + int(duration_s * NS)
        stuck = deadline + int(drain_s * NS)
        sent = completed = 0
        left = b""
        wait_until(start_ns)
        while True:
            now = time.monotonic_ns()
            sending = now < deadline and sent < count
            unacked = sent - completed if qos else 0
            inflight = max(unacked, int(sent - control.received_from(index) / share))
            if sending and inflight < window:
                k = min(window - inflight, count - sent)
                buf = bytearray(template * k)
                for j in range(k):
                    w.PAYLOAD_HEADER.pack_into(buf, j * plen + at, now, sent + j, index)
                    if qos:
                        w.PACKET_ID.pack_into(buf, j * plen + pid_at, (sent + j) % 65535 + 1)
                try:
                    sock.sendall(buf)
                except TimeoutError:
                    raise ScenarioError("the broker stopped reading for 10 s") from None
                sent += k
                continue
            if (not sending and unacked == 0) or now > stuck:
                break
            if not qos or not poller.poll(0.5):
                time.sleep(0.0001)
                continue
            data = sock.recv(1 << 16)
            if not data:
                raise ScenarioError("connection closed by the broker")
            buf2 = left + data if left else data
            out = bytearray()
            found, rest = w.split(buf2)
            for first, body, _ in found:
                kind = first >> 4
                if kind in (w.PUBACK, w.PUBCOMP):
                    completed += 1
                elif kind == w.PUBREC:
                    out += w.ack(w.PUBREL, buf2[body:body + 2])
            left = buf2[rest:]
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
