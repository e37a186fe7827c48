"""What a real client sends: paho-mqtt 2.x talking to a scripted socket on 127.0.0.1.

The "server" here is a plain blocking socket in the test thread (no reactor);
paho runs its own network thread (``loop_start``).  Each packet paho sends is
captured byte for byte, decoded with our codec, checked field by field, and
re-encoded to the very same bytes.  Our replies (CONNACK, SUBACK, PUBACK) are
hand-encoded, and paho's callbacks firing shows it accepted them.
"""

from __future__ import annotations

import socket
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqtt_twisted.codec import (
    Connect,
    Disconnect,
    Publish,
    StreamDecoder,
    Subscribe,
    Subscription,
    Will,
    encode,
)
from mqtt_twisted.constants import PropertyId

TIMEOUT = 5.0  # seconds; every wait below is bounded by it


class ScriptedBroker:
    """A listening socket that reads paho's packets one at a time and writes canned replies."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.decoder = StreamDecoder()  # server side: CONNECT fixes the version
        self.unread = b""

    def accept(self) -> None:
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(TIMEOUT)

    def read_packet(self):
        """Return (raw bytes, decoded packet) of the next packet from the client."""
        raw = bytearray()
        while True:
            if not self.unread:
                self.unread = self.conn.recv(65_536)
                assert self.unread, "paho closed the connection"
            # Feeding one byte at a time marks exactly where each packet ends.
            byte, self.unread = self.unread[:1], self.unread[1:]
            raw += byte
            packets = self.decoder.feed(byte)
            if packets:
                (packet,) = packets
                return bytes(raw), packet

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


class PahoEvents:
    """paho callbacks (API version 2) turned into Events the test thread waits on."""

    def __init__(self, client: mqtt.Client) -> None:
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.published = threading.Event()
        self.granted: list = []
        client.on_connect = self.on_connect
        client.on_subscribe = self.on_subscribe
        client.on_publish = self.on_publish

    def on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            self.connected.set()

    def on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.granted = [int(rc.value) for rc in reason_codes]
        self.subscribed.set()

    def on_publish(self, client, userdata, mid, reason_code, properties):
        self.published.set()


def run_session(client: mqtt.Client, version: int, subscribe, publish) -> list:
    """Drive CONNECT, SUBSCRIBE, PUBLISH (QoS 1) and DISCONNECT; return (raw, packet) pairs."""
    broker = ScriptedBroker()
    events = PahoEvents(client)
    captured = []
    try:
        client.connect("127.0.0.1", broker.port, keepalive=30, **(
            {"clean_start": True, "properties": connect_properties()} if version == 5 else {}))
        client.loop_start()
        broker.accept()

        captured.append(broker.read_packet())
        # CONNACK: no session present, accepted; v5 adds an empty property length.
        broker.send(bytes.fromhex("20 02 00 00" if version == 4 else "20 03 00 00 00"))
        assert events.connected.wait(TIMEOUT), "paho did not accept our CONNACK"

        subscribe()
        raw, sub = broker.read_packet()
        captured.append((raw, sub))
        pid = sub.packet_id.to_bytes(2, "big")
        # SUBACK granting QoS 1 (v5: property length 0 before the reason code).
        broker.send(b"\x90\x03" + pid + b"\x01" if version == 4
                    else b"\x90\x04" + pid + b"\x00\x01")
        assert events.subscribed.wait(TIMEOUT), "paho did not accept our SUBACK"
        assert events.granted == [1]

        publish()
        raw, pub = broker.read_packet()
        captured.append((raw, pub))
        broker.send(b"\x40\x02" + pub.packet_id.to_bytes(2, "big"))  # PUBACK
        assert events.published.wait(TIMEOUT), "paho did not accept our PUBACK"

        client.disconnect()
        captured.append(broker.read_packet())
    finally:
        client.loop_stop()
        broker.close()
    for raw, packet in captured:
        # Our encoder writes what paho wrote: same field order, same lengths.
        assert encode(packet, version) == raw, (packet, raw.hex(" "))
    return [packet for _, packet in captured]


def connect_properties() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 120
    props.ReceiveMaximum = 16
    return props


def test_paho_v311_session_decodes_field_for_field():
    """paho's 3.1.1 CONNECT (will, credentials), SUBSCRIBE, PUBLISH and DISCONNECT decode."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-311",
                         clean_session=True, protocol=mqtt.MQTTv311)
    client.will_set("clients/paho-311/status", b"offline", qos=1, retain=True)
    client.username_pw_set("alice", "s3cret")

    connect, subscribe, publish, disconnect = run_session(
        client, 4,
        subscribe=lambda: client.subscribe([("a/+", 1), ("b/#", 0)]),
        publish=lambda: client.publish("sensors/t1", b"21.5", qos=1, retain=True),
    )

    assert connect == Connect(
        client_id="paho-311", protocol_level=4, clean_start=True, keep_alive=30,
        will=Will("clients/paho-311/status", b"offline", qos=1, retain=True),
        username="alice", password=b"s3cret",
    )
    assert subscribe == Subscribe(subscribe.packet_id, [
        Subscription("a/+", 1), Subscription("b/#", 0),
    ])
    assert publish == Publish("sensors/t1", b"21.5", qos=1, retain=True,
                              packet_id=publish.packet_id)
    assert publish.packet_id != subscribe.packet_id
    assert disconnect == Disconnect()


def test_paho_v5_session_decodes_field_for_field():
    """paho's 5.0 packets decode with their properties and subscription options intact."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-v5",
                         protocol=mqtt.MQTTv5)
    will_props = Properties(PacketTypes.WILLMESSAGE)
    will_props.WillDelayInterval = 10
    will_props.MessageExpiryInterval = 300
    client.will_set("clients/paho-v5/status", b"offline", qos=2, retain=False,
                    properties=will_props)
    client.username_pw_set("bob", "hunter2")

    sub_props = Properties(PacketTypes.SUBSCRIBE)
    sub_props.SubscriptionIdentifier = 42
    options = SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True,
                               retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
    pub_props = Properties(PacketTypes.PUBLISH)
    pub_props.ContentType = "application/json"
    pub_props.ResponseTopic = "replies/paho-v5"
    pub_props.CorrelationData = b"\x00\x01req-7"
    pub_props.UserProperty = [("unit", "\u00b0C"), ("unit", "K")]
    pub_props.MessageExpiryInterval = 3600

    connect, subscribe, publish, disconnect = run_session(
        client, 5,
        subscribe=lambda: client.subscribe("a/+", options=options, properties=sub_props),
        publish=lambda: client.publish("sensors/t1", b'{"t": 21.5}', qos=1,
                                       properties=pub_props),
    )

    P = PropertyId
    assert connect == Connect(
        client_id="paho-v5", protocol_level=5, clean_start=True, keep_alive=30,
        will=Will("clients/paho-v5/status", b"offline", qos=2, retain=False, properties={
            P.WILL_DELAY_INTERVAL: 10, P.MESSAGE_EXPIRY_INTERVAL: 300,
        }),
        username="bob", password=b"hunter2",
        properties={P.SESSION_EXPIRY_INTERVAL: 120, P.RECEIVE_MAXIMUM: 16},
    )
    assert subscribe == Subscribe(
        subscribe.packet_id,
        # Retain handling 1: send retained messages only for a new subscription (3.8.3.1).
        [Subscription("a/+", 1, no_local=True, retain_as_published=True, retain_handling=1)],
        {P.SUBSCRIPTION_IDENTIFIER: 42},  # a single int in SUBSCRIBE
    )
    assert publish == Publish(
        "sensors/t1", b'{"t": 21.5}', qos=1, packet_id=publish.packet_id, properties={
            P.CONTENT_TYPE: "application/json",
            P.RESPONSE_TOPIC: "replies/paho-v5",
            P.CORRELATION_DATA: b"\x00\x01req-7",
            P.USER_PROPERTY: [("unit", "\u00b0C"), ("unit", "K")],  # order kept, repeats kept
            P.MESSAGE_EXPIRY_INTERVAL: 3600,
        },
    )
    assert disconnect == Disconnect()
