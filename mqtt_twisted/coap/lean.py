"""The commonest CoAP request read from its bytes: a POST or PUT of ``/ps/{topic}``
that publishes, recognised by its options without decoding them again (sans-IO).

A device publishes the same request over and over: the same options (Uri-Path,
Uri-Query, Content-Format), a new message id, token and payload.  Decoding the
options, checking them and parsing the ``/ps/`` mapping was most of the broker's
cost per NON POST (docs/benchmarks.md, "CoAP next to MQTT"), so :class:`PlanCache`
does it once per distinct option bytes and keeps the answer, a
:class:`PublishPlan`, keyed by those bytes.

Why the key is sound: the options run from after the token to the payload marker
0xFF.  An option *header* is never 0xFF (nibble 15 is reserved), but an option value
or an extended length may hold that byte.  So the key is the bytes up to the first
0xFF (or the end), and a plan is made only when those bytes, walked on their own,
are whole options that end exactly there.  The walk is a function of the bytes
alone, so any datagram with the same bytes there has the same options and its
payload marker (or its end) right after them.  Anything else, and every request
the plan does not cover (Block1/Block2, connection mode, an error to answer), gets
``None``: the caller takes the general path, which decodes the datagram as before.

What depends on the broker's settings (``maximum_qos``, ``retain_available``) is
not in a plan: :meth:`PlanCache.lookup` checks it for each request.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from mqtt_twisted.coap import blockwise, mapping
from mqtt_twisted.coap import message as m
from mqtt_twisted.coap import options as opt
from mqtt_twisted.coap.mapping import CoapError, PsRequest
from mqtt_twisted.codec.topics import is_reserved_topic, validate_topic_name
from mqtt_twisted.errors import MQTTError

#: Option bytes remembered at most (all of them forgotten when full: a device sends
#: a handful of distinct requests, a scan of random ones gains nothing from a cache).
PLANS_KEPT = 1024
#: The settings a plan is parsed under: the most permissive; the real ones are
#: applied per request.
_ANY_SETTINGS = SimpleNamespace(maximum_qos=2, retain_available=True)


@dataclass(frozen=True, slots=True)
class PublishPlan:
    """What one set of option bytes asks: publish ``ps`` (qos and retain as
    requested), with ``properties`` from its Content-Format and expiry, answered
    unless ``quiet`` (No-Response for 2.xx)."""

    ps: PsRequest
    properties: dict[int, Any]
    quiet: bool
    #: The topic's levels and UTF-8 bytes, for the broker's limits (which may change).
    levels: int = 0
    size: int = 0
    #: Whether the topic may be published to at all (a valid name, not the broker's
    #: own): the gateway need not check it again (``Gateway.publish_plain``).
    plain: bool = False


#: A key whose request the plans do not cover.
GENERAL = None


class PlanCache:
    """Publish plans by option bytes (see the module's docstring)."""

    __slots__ = ("plans",)

    def __init__(self) -> None:
        self.plans: dict[bytes, PublishPlan | None] = {}

    def lookup(self, data: bytes, settings: Any,
               max_payload: int) -> tuple[PublishPlan, int, bytes] | None:
        """For a datagram that is a POST/PUT publishing at QoS 0 (retained only where
        ``settings`` allow it), within ``max_payload``: its plan, token length and payload.
        None for anything else (the general path decodes it)."""
        first = data[0]
        tkl = first & 15
        start = 4 + tkl
        if first >> 6 != m.VERSION or tkl > m.MAX_TOKEN or len(data) < start \
                or data[1] not in (m.POST, m.PUT):
            return None
        marker = data.find(b"\xff", start)
        if marker < 0:
            key, payload = data[start:], b""
        else:
            key, payload = data[start:marker], data[marker + 1:]
            if not payload:
                return None  # a marker with nothing after it: the general path refuses it
        plans = self.plans
        plan = plans.get(key, self)
        if plan is self:
            if len(plans) >= PLANS_KEPT:
                plans.clear()
            plan = plans[key] = plan_of(key)
        if plan is None:
            return None
        ps = plan.ps
        if ps.qos or (ps.retain and not settings.retain_available) or len(payload) > max_payload:
            return None
        return plan, tkl, payload


def plan_of(key: bytes) -> PublishPlan | None:
    """The plan for option bytes ``key`` (no 0xFF in them), or None when they are not
    whole options or ask for more than a plain publish."""
    try:
        options, _ = m.decode_options(key, 0)
    except m.CoapFormatError:
        return None
    request = m.CoapMessage(m.NON, m.POST, 0, b"", options)
    try:
        mapping.check_options(request)
        if (blockwise.block_of(request, opt.BLOCK1) is not None
                or blockwise.block_of(request, opt.BLOCK2) is not None):
            return None
        path = request.strings(opt.URI_PATH)
        if not path or path[0] != mapping.PS:
            return None  # /mqtt/connection, or a 4.04
        ps = mapping.parse_request(request, _ANY_SETTINGS)
    except (CoapError, ValueError):
        return None
    if ps.action != mapping.PUBLISH or ps.token is not None:
        return None
    properties = mapping.publish_message(ps, request).properties or {}
    try:
        validate_topic_name(ps.topic)
        plain = not is_reserved_topic(ps.topic)
    except MQTTError:
        plain = False
    return PublishPlan(ps, properties,
                       mapping.no_response(request.option(opt.NO_RESPONSE), m.CHANGED),
                       ps.topic.count("/") + 1, len(ps.topic.encode("utf-8")), plain)
