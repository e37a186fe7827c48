"""``python -m mqtt_twisted.cli``: the same as the ``mqtt-twisted`` console script."""

from mqtt_twisted.cli.main import main

main()
