"""A test-only datagram adapter: ``--listen udp-echo-test=udp:PORT`` echoes each datagram.

A drop-in module (no ``__init__.py`` here or in ``mqtt_twisted/``): a process with
``tests/dropin`` on ``PYTHONPATH`` finds it as any third-party plugin
(tests/test_kit.py).  It shows what a datagram adapter needs: ``datagram = True`` (its
endpoints are ``udp:``, not stream ones), a typed key, and a
:class:`~mqtt_twisted.adapters.kit.DatagramListener` around its protocol.
"""

from typing import Any

from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from mqtt_twisted.adapters.kit import AdapterOption, DatagramListener, declare, option_values
from mqtt_twisted.interfaces import IDatagramAdapter


class Echo(DatagramProtocol):
    """Answers each datagram with ``prefix`` and the datagram."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.transport.write(self.prefix + data, addr)


@implementer(IDatagramAdapter)
class UDPEchoAdapter:
    name = "udp-echo-test"
    description = "echoes datagrams back (a test-only datagram adapter)"
    defaultEndpoint = "udp:5683"
    datagram = True
    options = declare(AdapterOption("prefix", str, "", "bytes put before each answer"))

    def buildListener(self, reactor: Any, broker: Any, endpointDescription: str,
                      settings: Any) -> DatagramListener:
        prefix = option_values(self.options, settings.extra)["prefix"].encode()
        return DatagramListener(reactor, endpointDescription, Echo(prefix))


udpEchoAdapter = UDPEchoAdapter()
