"""Protocol adapters: the only Twisted protocol code in the project.

Each adapter turns one transport's traffic into calls on the broker; the MQTT
byte-stream ones (TCP, TLS, UNIX, WebSocket) all feed the same sans-IO
:class:`~mqtt_twisted.core.connection.MQTTConnection`.
"""
