"""An SSE event is encoded once per message, not once per stream (``api.event_json``):
the bytes are the same as encoding each event whole."""

from __future__ import annotations

from mqtt_twisted.adapters import _httpapi as api
from mqtt_twisted.constants import PropertyId
from mqtt_twisted.message import Message


def test_same_bytes_as_encoding_each_event() -> None:
    """Text and binary payloads, copies of one message with another QoS or retain flag,
    a message with properties (not shared: its expiry depends on the time)."""
    text = Message("a/b", "héllo".encode(), 1, False)
    binary = Message("a/b", b"\xff\x00", 0, True)
    with_props = Message("p", b"x", 0, False,
                         properties={PropertyId.MESSAGE_EXPIRY_INTERVAL: 60})
    cases = [(text, 1, False), (text, 1, False), (text.copy(qos=0), 0, False),
             (binary, 0, True), (binary, 0, False), (with_props, 0, False)]
    for n, (message, qos, retain) in enumerate(cases):
        assert api.event_json(message, qos, retain, 10.0, str(n)) == \
            api.dumps(api.event(message, qos, retain, 10.0, str(n)))


def test_shared_between_streams() -> None:
    """The second stream's event reuses the first one's encoding (the costly part),
    also after other messages were encoded in between (the SSE writer serves one
    stream's several messages, then the next stream's): it is kept with the
    message's encodings."""
    message, other = Message("t", b"y" * 200, 0, False), Message("u", b"z", 0, False)
    first = api.event_json(message, 0, False, 0.0, "1")
    shared = message.wire[("sse", 0, False)]
    api.event_json(other, 0, False, 0.0, "1")
    again = api.event_json(message, 0, False, 0.0, "2")
    assert message.wire[("sse", 0, False)] is shared
    assert again == first.replace(b'"id":"1"', b'"id":"2"')


def test_a_stored_retained_message_keeps_no_encoding() -> None:
    """A message whose encodings must not be kept (``NO_WIRE``: a store's retained
    message) is encoded all the same, and nothing is added to it."""
    from mqtt_twisted.message import NO_WIRE

    message = Message("r", b"kept", 0, True)
    message.wire = NO_WIRE
    assert api.event_json(message, 0, True, 0.0, "7") == \
        api.dumps(api.event(message, 0, True, 0.0, "7"))
    assert NO_WIRE == {}
