"""mqtt-twisted: a multi-protocol MQTT 3.1.1 / 5.0 broker on Twisted."""

__version__ = "0.1.0"
