"""The load generator shared by ``mqtt-twisted bench`` and the ``bench/`` scripts.

``wire`` hand-encodes the few MQTT 3.1.1 packets it needs (no dependency on the broker
under test), ``workers`` runs roles in processes driven over pipes, ``roles`` holds the
subscriber and publisher that load a broker.  Blocking sockets on purpose: the
generator must not be the bottleneck of the brokers it measures.
"""
