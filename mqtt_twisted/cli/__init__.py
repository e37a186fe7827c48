"""``mqtt-twisted``: command-line tools beside the broker (docs/cli.md).

``pub`` and ``sub`` speak mosquitto_pub's and mosquitto_sub's options on top of
:mod:`mqtt_twisted.client`; ``passwd`` writes the broker's (Mosquitto's) password file;
``bench`` runs a short load test against any broker.  One module per command, each
with a ``main(argv)``; :mod:`mqtt_twisted.cli.main` dispatches.
"""
