"""CoAP over UDP (``coap=udp:5683``) as a plugin: a module of its own, found by
:func:`twisted.plugin.getPlugins` like any third-party drop-in."""

from __future__ import annotations

from mqtt_twisted.adapters.coap import CoapAdapter

coapAdapter = CoapAdapter()
