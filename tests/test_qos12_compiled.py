"""core/_qos12.py: the QoS 1/2 path's modules compiled as they are, bound where built,
the pure ones with MQTT_TWISTED_PURE=1 (docs/speedups.md, "The QoS 1/2 path")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mqtt_twisted.codec import PubAck, Publish, encode
from mqtt_twisted.core import _qos12, connection, delivery, inbound
from mqtt_twisted.testing import FakeClient, make_broker

_CHOICE = ("from mqtt_twisted.core import broker, _qos12, delivery\n"
           "print('compiled' if _qos12.compiled_in_use() else 'pure',"
           " type(delivery.Delivery.deliver).__name__)")


def _choice(env: dict[str, str]) -> str:
    base = {k: v for k, v in os.environ.items()
            if k not in ("MQTT_TWISTED_PURE", "MQTT_TWISTED_REQUIRE_EXT")}
    return subprocess.run([sys.executable, "-c", _CHOICE], env={**base, **env},
                          capture_output=True, text=True, check=True).stdout.strip()


def test_compiled_where_built_and_pure_when_asked() -> None:
    built = all(m is not None for m in _qos12.compiled.values())
    assert _choice({}) == ("compiled cython_function_or_method" if built else "pure function")
    assert _choice({"MQTT_TWISTED_PURE": "1"}) == "pure function"


@pytest.mark.parametrize("compiled", [False, True])
def test_qos1_flow_alike(compiled: bool) -> None:
    """The same bytes to both clients with either implementation bound."""
    if compiled and not all(_qos12.compiled.values()):
        pytest.skip("the compiled modules are not built")
    try:
        _qos12.use(compiled)
        assert (connection._HANDLERS[4] is inbound.on_puback) is not compiled
        broker, _ = make_broker()
        sub = FakeClient(broker, 4)
        sub.connect("sub")
        sub.subscribe("t", qos=1)
        pub = FakeClient(broker, 4)
        pub.connect("pub")
        sub.transport.written.clear()
        pub.transport.written.clear()
        pub.connection.dataReceived(b"".join(
            encode(Publish("t", b"m%d" % i, 1, False, False, i + 1), 4) for i in range(30)))
        sub.connection.dataReceived(b"".join(encode(PubAck(i + 1), 4) for i in range(30)))
        assert bytes(pub.transport.written) == b"".join(
            bytes((0x40, 2, 0, i + 1)) for i in range(30))
        assert bytes(sub.transport.written) == b"".join(
            encode(Publish("t", b"m%d" % i, 1, False, False, i + 1), 4) for i in range(30))
        assert not broker.sessions["sub"].inflight
        assert (type(delivery.Delivery.pump).__name__ == "cython_function_or_method") is compiled
    finally:
        from mqtt_twisted.codec import _accel
        _qos12.use(_accel._chosen)
