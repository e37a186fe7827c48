"""``python -m mqtt_twisted.cli``: the same as the ``mqtt-twisted`` console script."""

from mqtt_twisted.cli.main import main

if __name__ == "__main__":  # importing it (pkgutil.walk_packages) must not run it
    main()
