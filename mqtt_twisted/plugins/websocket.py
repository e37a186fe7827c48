"""The ``ws`` adapter: MQTT over WebSocket and WSS (``--listen ws=tcp:8080``)."""

from mqtt_twisted.adapters.websocket import WebSocketAdapter

webSocketAdapter = WebSocketAdapter()
