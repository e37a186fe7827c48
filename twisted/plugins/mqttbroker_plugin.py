"""Registers ``twistd mqttbroker``.  No __init__.py here: it would hide Twisted's plugins."""

from twisted.application.service import ServiceMaker

mqttBroker = ServiceMaker(
    "mqtt-twisted broker",
    "mqtt_twisted.tap",
    "A multi-protocol MQTT 3.1.1 / 5.0 broker (MQTT, TLS, WebSocket, HTTP adapters)",
    "mqttbroker",
)
