"""Registers ``twistd mqttbroker``.  No __init__.py here: it would hide Twisted's plugins."""

from twisted.application.service import ServiceMaker

mqttBroker = ServiceMaker(
    "mqtt-twisted broker",
    "mqtt_twisted.tap",
    "An MQTT 3.1 / 3.1.1 / 5.0 broker with pluggable adapters, stores and auth",
    "mqttbroker",
)
