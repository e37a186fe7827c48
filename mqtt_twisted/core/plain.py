"""An adapter's plain QoS 0 message written as one PUBLISH's bytes (sans-IO).

``core/qos0.py`` writes a client's plain QoS 0 PUBLISH to its receivers as the bytes it
came in, without a ``Message``, the router's dispatch or a delivery.  A message an
adapter publishes (a CoAP NON POST, ``adapters/_coaplean.py``, through
``Gateway.publish_plain``) has no PUBLISH of its own, but once it is known to be the
plain kind (QoS 0, not retained, no properties, a topic valid and within the limits)
the same holds: :func:`publish_plain` encodes it once (a run of them on one topic
from one sender, one buffer) and writes it to the receivers
``qos0.local_targets`` finds, with the same checks and counters, or says None and the
general path routes it.  The receivers must be MQTT connections of one class and one
wire format (v5 or not), as a client's must be of its own.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mqtt_twisted.codec import encode_vbi
from mqtt_twisted.constants import PacketType
from mqtt_twisted.core import connection, fastpath, qos0
from mqtt_twisted.core.connection import MQTTConnection
from mqtt_twisted.core.router import LocalRouter

_V5_NO_PROPERTIES = b"\x00"
#: A PUBLISH's fixed header (QoS 0, no flags) for each remaining length under 128.
_SHORT = [bytes((0x30, n)) for n in range(128)]


def qos0_in_use() -> ModuleType:
    """``core/qos0.py`` or its compiled twin: the module whose ``on_publish`` is the
    PUBLISH handler bound now (``core/fastpath.py``); ``cluster/inbox0.py`` delivers
    with it too."""
    compiled = fastpath.compiled
    if (compiled is not None and hasattr(compiled, "route_entry")  # (else an older build)
            and connection._HANDLERS[PacketType.PUBLISH] is compiled.on_publish):
        return compiled
    return qos0


def publish_plain(broker: Any, topic: str, payloads: list[bytes], sender: str,
                  module: ModuleType = qos0) -> int | None:
    """Write plain QoS 0 messages (``payloads``, one message each, in order) on ``topic``
    from client id ``sender`` to every receiver, all of them in one buffer a receiver
    (the number of receivers), or None if the general path must route them: a cluster
    node's router, receivers of more than one kind, or any check of
    ``module.local_targets`` (``module``: ``core/qos0.py`` or its compiled twin, the
    one in use)."""
    router = broker.router
    if type(router) is not LocalRouter:
        return None
    entry = module.route_entry(router, topic)
    cls: Any = None
    v5 = False
    if entry[1]:
        first = router.sessions[entry[1][0][0]].connection
        if not isinstance(first, MQTTConnection):
            return None  # offline, or an adapter's virtual session: the general path
        cls, v5 = type(first), first.version == 5
    name = topic.encode("utf-8")
    head = len(name).to_bytes(2, "big") + name + (_V5_NO_PROPERTIES if v5 else b"")
    parts: list[bytes] = []
    largest = 0
    for payload in payloads:
        length = len(head) + len(payload)
        fixed = _SHORT[length] if length < 128 else b"\x30" + encode_vbi(length)
        parts += (fixed, head, payload)
        if length + len(fixed) > largest:
            largest = length + len(fixed)
    data = b"".join(parts)
    targets = module.local_targets(broker, router, topic, largest, sender, v5, cls, None)
    if targets is None:
        return None
    for link in targets:
        link.transport.write(data)
    module._count(broker.stats, topic, len(payloads), len(targets), len(data))
    return len(targets)
