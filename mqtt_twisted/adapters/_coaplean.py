"""The lean path of the CoAP/UDP listener for its commonest request: a NON or CON POST
(or PUT) of ``/ps/{topic}`` publishing at QoS 0, which ``mqtt_twisted/coap/lean.py``
recognises from its bytes.

The same steps as the general path of ``adapters/coap.py`` and
``adapters/_coaprequests.py``, in the same order: duplicate detection (RFC 7252 §4.5:
a NON's id is remembered too), authentication, authorization, the gateway's publish,
the 2.04 (piggybacked on a CON's ACK, a NON of its own to a NON, none when the
request's No-Response asks for none).  What it leaves out is the cost: no CoapMessage
decoded, no PsRequest parsed, no Deferred chain when the gateway's answers are there
at once (no authenticator, no authorizer, or ones that answer synchronously).  When
one is not there yet, or is a refusal, the request goes on down the general path's
callbacks from that point, which produce the answer or the error as before.

Measured with ``python bench/coap_non.py`` (docs/benchmarks.md, "CoAP next to MQTT").
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mqtt_twisted.coap import message as m
from mqtt_twisted.coap.exchange import IN_PROGRESS
from mqtt_twisted.coap.lean import PlanCache, PublishPlan
from mqtt_twisted.gateway import PUBLISH
from mqtt_twisted.records import Credentials

log = Logger(namespace="mqtt_twisted.adapters.coap")

#: What :func:`at_once` says of a Deferred with no value yet (or a failure).
PENDING: Any = object()
#: The first two bytes of a NON 2.04 and of an ACK 2.04, by token length.
_NON_CHANGED = tuple(bytes((0x50 | tkl, m.CHANGED)) for tkl in range(m.MAX_TOKEN + 1))
_ACK_CHANGED = tuple(bytes((0x60 | tkl, m.CHANGED)) for tkl in range(m.MAX_TOKEN + 1))
#: Endpoints whose ``host:port`` text is kept (all forgotten when full).
PEERS_KEPT = 4096
#: Payload bytes a run holds before it is written (as core/qos0.py's RUN_BYTES: a
#: receiver that fills up is paused after at most this much more).
RUN_BYTES = 16384


def at_once(d: Deferred[Any]) -> Any:
    """The value ``d`` has already (a Deferred that fired with one), else PENDING."""
    if d.called and not d.paused:  # (paused: its result is a Deferred it waits for)
        result = d.result
        if not isinstance(result, Failure):
            return result
    return PENDING


def _log_failure(failure: Failure, topic: str) -> None:
    log.failure("CoAP QoS 0 publish to {topic} failed", failure, topic=topic)


class LeanPublisher:
    """One listener's lean path: ``take`` a datagram, or leave it (False)."""

    __slots__ = ("server", "plans", "peers", "port", "run", "run_topic", "run_sender",
                 "run_properties", "run_bytes")

    def __init__(self, server: Any) -> None:
        self.server = server  # the CoapServer: dedup, send, mids, requests, follow
        self.plans = PlanCache()
        self.peers: dict[Any, str] = {}  # address -> its text (a device sends again)
        #: The listener's BatchedPort (None: another transport, DTLS's, a test's).
        self.port: Any = None
        #: Payloads published during the port's read, on one topic from one sender,
        #: written together when the topic or sender changes, another request is
        #: handled, the run reaches RUN_BYTES, or the read ends (``datagramsRead``).
        self.run: list[bytes] = []
        self.run_topic = ""
        self.run_sender = ""
        self.run_properties: dict[int, Any] = {}
        self.run_bytes = 0

    def take(self, data: bytes, addr: Any) -> bool:
        """Serve ``data`` (a CON or NON within the rate) if a plan covers it."""
        server = self.server
        requests = server.requests
        config = requests.config
        if config.connection_required:
            return False
        service = requests.service
        settings = service.settings
        found = self.plans.lookup(data, settings, config.max_payload)
        if found is None:
            return False
        plan, tkl, payload = found
        ps = plan.ps
        if not plan.plain or ps.retain or plan.levels > settings.max_topic_levels \
                or plan.size > settings.max_topic_length:
            return False  # a refusal, or a retained message's quota: the general path's
        dedup = server.dedup
        key = (addr, data[2] << 8 | data[3])
        now, seen = dedup.look(key)
        if seen is not None:
            if seen[1]:
                server.send(seen[1], addr)  # the same answer again, not a second publish
            return True
        peer = self.peers.get(addr)
        if peer is None:
            if len(self.peers) >= PEERS_KEPT:
                self.peers.clear()
            peer = self.peers[addr] = f"{addr[0]}:{addr[1]}"
        client_id = ps.client_id or "coap-" + peer
        if service.open_to_all:  # nobody to ask: what they would answer at once
            self._publish(ps.topic, payload, plan, client_id)
        else:
            dedup.remember(key, now, IN_PROGRESS)
            if not self._asked(data, addr, plan, payload, client_id, peer):
                return True  # the general path's callbacks answer it
        answer = self._answer(data, tkl, plan)
        if answer is not None:
            server.send(answer, addr)
        dedup.remember(key, now, answer or IN_PROGRESS)
        return True

    def _answer(self, data: bytes, tkl: int, plan: PublishPlan) -> bytes | None:
        """The answer to a request published at once: a NON 2.04 of our own to a NON
        (none when it asked for none), the ACK a CON needs (with its 2.04 piggybacked
        unless it asked for none)."""
        if data[0] & 0x30:  # NON
            if plan.quiet:
                return None
            return _NON_CHANGED[tkl] + self.server.mids().to_bytes(2, "big") + data[4:4 + tkl]
        if plan.quiet:
            return m.empty_ack(data[2] << 8 | data[3])
        return _ACK_CHANGED[tkl] + data[2:4 + tkl]

    def _asked(self, data: bytes, addr: Any, plan: PublishPlan, payload: bytes,
               client_id: str, peer: str) -> bool:
        """Authenticate and authorize as the general path does, and publish if both
        answer yes at once (True); else hand the request to the general path's
        callbacks from the step that is not there yet (False)."""
        server = self.server
        requests = server.requests
        service = requests.service
        ps = plan.ps
        credentials = Credentials(client_id, ps.username, ps.password, None, peer, "coap")
        d = service.authenticate(credentials)
        identity = at_once(d)
        if identity is PENDING:
            request = m.decode(data)
            d.addCallback(requests.act_as, ps, request, server.link(addr), client_id,
                          credentials)
            server.follow(d.addErrback(requests.failed, request), request, addr)
            return False
        allowed = service.authorize(PUBLISH, identity, client_id, ps.topic)
        if at_once(allowed) is not True:  # not yet, or no: the general path answers
            request = m.decode(data)
            answer = requests.publish_if(allowed, ps, request, client_id)
            server.follow(answer.addErrback(requests.failed, request), request, addr)
            return False
        self._publish(ps.topic, payload, plan, client_id)
        return True

    def _publish(self, topic: str, payload: bytes, plan: PublishPlan, client_id: str) -> None:
        """Publish at QoS 0, not retained, to a topic the plan found valid and
        :meth:`take` within the limits: at once, or in the run of the port's read under
        way; at most once: a store failure is only logged."""
        port = self.port
        if port is None or port.pending is None:  # not within a BatchedPort's read
            self._published(topic, [payload], plan.properties, client_id)
            return
        run = self.run
        if run and (topic != self.run_topic or client_id != self.run_sender
                    or plan.properties is not self.run_properties
                    or self.run_bytes > RUN_BYTES):
            self.flush()
            run = self.run
        if not run:
            self.run_topic, self.run_sender = topic, client_id
            self.run_properties, self.run_bytes = plan.properties, 0
        run.append(payload)
        self.run_bytes += len(payload)

    def flush(self) -> None:
        """Publish the run held so far (see ``run``)."""
        if self.run:
            payloads, self.run = self.run, []
            self._published(self.run_topic, payloads, self.run_properties, self.run_sender)

    def _published(self, topic: str, payloads: list[bytes], properties: dict[int, Any],
                   client_id: str) -> None:
        for pending in self.server.requests.service.publish_plain(topic, payloads,
                                                                  properties, client_id):
            pending.addErrback(_log_failure, topic)
