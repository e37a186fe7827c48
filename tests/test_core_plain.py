"""An adapter's plain QoS 0 message as one PUBLISH's bytes (core/plain.py, through
``Gateway.publish_plain``) against the general path (``Gateway.publish``).

Each scenario runs on fresh sans-IO brokers, once publishing every message through
``Gateway.publish`` and once through ``Gateway.publish_plain`` (on the pure QoS 0
module, then the compiled one where built): every client must get the same bytes in
the same order, each publish reach as many, and the broker keep the same counters and
queues.  The scenarios mix receivers the plain path takes (v4, v5, several at once)
with those it must leave to the general one (v4 beside v5, a small maximum packet
size, outbound aliases, a subscription id, an offline session, a paused receiver, a
share group)."""

from __future__ import annotations

from typing import Any

import pytest

from mqtt_twisted.codec import Subscribe, Subscription
from mqtt_twisted.constants import PropertyId
from mqtt_twisted.core import fastpath, qos0
from mqtt_twisted.core.plain import publish_plain, qos0_in_use
from mqtt_twisted.core.settings import BrokerSettings
from mqtt_twisted.gateway import Gateway
from mqtt_twisted.message import Message
from mqtt_twisted.testing import FakeClient, make_broker

_P = PropertyId
COUNTERS = ("messages_received", "messages_sent", "bytes_sent", "deliveries",
            "dropped_too_large", "messages_dropped")
SENDER = "coap-127.0.0.1:5683"


def module_of(impl: str) -> Any:
    if impl == "compiled":
        if fastpath.compiled is None:
            pytest.skip("core/_qos0.pyx is not built here")
        return fastpath.compiled
    return qos0


class Run:
    """One broker, its gateway, and how each publish went."""

    def __init__(self, impl: str, settings: BrokerSettings | None = None) -> None:
        self.impl = impl
        self.broker, self.clock = make_broker(settings)
        self.gateway = Gateway(self.broker)
        if impl != "general":
            self.gateway._qos0 = module_of(impl)
        self.pending: list[Any] = []

    def publish(self, topic: str, *payloads: bytes) -> None:
        """``payloads`` on ``topic``: one run through ``publish_plain``, or each through
        ``Gateway.publish``."""
        if self.impl == "general":
            for payload in payloads:
                self.successResult(self.gateway.publish(
                    Message(topic, payload, 0, False, None, {}), SENDER))
        else:
            self.pending += self.gateway.publish_plain(topic, list(payloads), {}, SENDER)

    @staticmethod
    def successResult(d: Any) -> Any:
        out: list[Any] = []
        d.addBoth(out.append)
        assert out and not hasattr(out[0], "raiseException"), out
        return out[0]


def outcome(run: Run, clients: dict[str, FakeClient]) -> dict[str, Any]:
    stats = run.broker.stats
    return {
        "bytes": {name: bytes(c.transport.written) for name, c in clients.items()},
        "stats": {name: getattr(stats, name) for name in COUNTERS},
        "queued": {cid: len(s.queue) for cid, s in run.broker.sessions.items()},
    }


def scenario(run: Run, share: bool = True) -> dict[str, FakeClient]:
    clients: dict[str, FakeClient] = {}

    def client(name: str, version: int, *filters: str, props: dict | None = None,
               clean: bool = True, **options: Any) -> FakeClient:
        c = clients[name] = FakeClient(run.broker, version)
        c.connect(name, clean=clean, properties=props or ({_P.SESSION_EXPIRY_INTERVAL: 60}
                                                          if not clean and version == 5
                                                          else None))
        if filters:
            c.subscribe(*filters, **options)
        return c

    client("a4", 4, "v4/#", "mixed/#")
    client("b4", 4, "v4/t", qos=1)
    client("a5", 5, "v5/#", "mixed/#")
    client("b5", 5, "v5/t")
    client("small", 5, "small/#", props={_P.MAXIMUM_PACKET_SIZE: 40})
    client("alias", 5, "alias/#", props={_P.TOPIC_ALIAS_MAXIMUM: 4})
    ids = client("ids", 5)
    ids.send(Subscribe(ids.pid(), [Subscription("ids/#", 0)], {_P.SUBSCRIPTION_IDENTIFIER: 3}))
    ids.received()
    off = client("off", 4, "off/#", clean=False)
    if share:  # (while any share group exists, every message takes the general path)
        client("share", 4, "$share/g/shared/#")
    paused = client("paused", 4, "paused/#")
    for payload in (b"1", b"z" * 300, b"y" * 20000):
        for topic in ("v4/t", "v4/u", "v5/t", "mixed/x", "small/x", "alias/x", "ids/x", "nobody/here", "off/x", "shared/x", "paused/x"):
            run.publish(topic, payload)
        if payload == b"1":
            off.drop()
            paused.connection.pauseWriting()
    return clients


@pytest.mark.parametrize("impl", ["pure", "compiled"])
def test_same_bytes_as_the_general_path(impl: str) -> None:
    settings = BrokerSettings(queue_qos0_offline=True)  # (the offline session's queue)
    general = Run("general", settings)
    expected = outcome(general, scenario(general))
    plain = Run(impl, BrokerSettings(queue_qos0_offline=True))
    got = outcome(plain, scenario(plain))
    assert got == expected
    assert plain.pending == []  # (the memory store: no write to wait for)
    assert all(expected["bytes"][name] for name in ("a4", "b4", "a5", "b5", "small", "alias",
                                                     "ids", "share"))
    assert expected["queued"]["off"] > 0


@pytest.mark.parametrize("impl", ["pure", "compiled"])
def test_taken_where_it_can_be(impl: str) -> None:
    """Written by core/plain.py (a count, not None) for one kind of receiver, v4 or v5,
    and for none; the general path's for the rest."""
    run = Run(impl, BrokerSettings(queue_qos0_offline=True))
    clients = scenario(run, share=False)
    module = run.gateway._qos0
    took = {topic: publish_plain(run.broker, topic, [b"p"], SENDER, module)
            for topic in ("v4/t", "v5/t", "nobody/here", "mixed/x", "small/x", "alias/x",
                          "ids/x", "off/x", "paused/x")}
    # (alias/x: the broker's outbound aliases are off, so the receiver gets none either way)
    assert took == {"v4/t": 2, "v5/t": 2, "nobody/here": 0, "mixed/x": None,
                    "small/x": 1, "alias/x": 1, "ids/x": None, "off/x": None,
                    "paused/x": None}
    assert publish_plain(run.broker, "small/x", [b"p", b"p" * 40], SENDER, module) is None
    assert clients["b5"].received()[-1].topic == "v5/t"


def test_the_module_in_use() -> None:
    """The gateway writes with the QoS 0 module the PUBLISH handler is bound to."""
    expected = fastpath.compiled if (fastpath.compiled is not None
                                     and fastpath.handler() is fastpath.compiled.on_publish) \
        else qos0
    assert qos0_in_use() is expected
    assert Gateway(make_broker()[0])._qos0 is expected
