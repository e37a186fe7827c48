"""A peer node's QoS 0 pub/sub messages, delivered here: records of ``Message``s
(``batch.py``) through the router's ``receive``, plain PUBLISHes as their publisher
sent them (``rawlane.py``) written in runs by the compiled QoS 0 path
(``qos0.deliver_raw``), and each of those whose receivers here need more handed to
``receive`` as a ``Message``."""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.logger import Logger

from mqtt_twisted.cluster.batch import item_message, read_push
from mqtt_twisted.cluster.rawlane import RAW, decode
from mqtt_twisted.core.connection import MQTTConnection
from mqtt_twisted.core.plain import qos0_in_use

log = Logger()


def receive_push(broker: Any, router: Any, data: bytes) -> None:
    """A peer's QoS 0 pub/sub message for this node (``router``: its ClusterRouter),
    either kind; one that cannot be read is logged and skipped."""
    if data[:1] == RAW:
        receive(broker, router, data)
        return
    try:
        origin, items = read_push(data)
    except Exception as e:
        log.warn("cluster: an inbox message could not be read: {error}", error=e)
        return
    receive_message = router.receive
    for item in items:
        try:
            message = item_message(item)
            _, groups, resent = item
        except Exception as e:
            log.warn("cluster: an inbox message could not be read: {error}", error=e)
            continue
        receive_message(message, origin, groups, resent)


def receive(broker: Any, router: Any, data: bytes) -> int:
    """A peer's raw pub/sub message, delivered here (``router``: the ClusterRouter):
    the PUBLISHes delivered in runs; a malformed message or run is logged and skipped
    (what came before it in the run is delivered)."""
    try:
        origin, runs = decode(data)
    except Exception as e:
        log.warn("cluster: a raw inbox message could not be read: {error}", error=e)
        return 0
    deliver = _delivery()
    general = partial(_general, router, origin)
    local = router.local
    written = 0
    for i in range(0, len(runs), 3):
        sender, v5, blob = runs[i:i + 3]
        try:
            if type(sender) is not str or type(blob) is not bytes:
                raise ValueError("a run is a sender's id, v5 and bytes")
            written += deliver(broker, local, sender, 1 if v5 else 0, blob, MQTTConnection,
                               general)
        except ValueError as e:
            log.warn("cluster: a raw inbox run from {origin} could not be read: {error}",
                     origin=origin, error=e)
    router.received += written
    return written


def _general(router: Any, origin: str, message: Any) -> None:
    """A raw PUBLISH whose receivers here need the general path."""
    router.receive(message, origin)


def _delivery() -> Any:
    """``deliver_raw`` of the QoS 0 module in use (compiled or not, as the PUBLISH
    handler bound now: ``core/fastpath.py``)."""
    return qos0_in_use().deliver_raw
