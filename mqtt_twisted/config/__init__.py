"""The YAML configuration file (``twistd mqttbroker --config broker.yaml``).

``keys.py`` maps each key of the file to the command-line option it stands for (one
table entry per key), ``schema.py`` builds the file's JSON schema from that table, the
options' own bounds and the adapters' listener keys, ``load.py`` reads and checks a file
(errors name the file, line and key), ``listeners.py`` turns ``server.listeners`` items
into ``--listen`` values, and ``reload.py`` applies a changed file on SIGHUP.  The file
becomes command-line arguments placed before the real ones, so the command line wins and
every check of the command line applies to the file too.  See docs/configuration.md.
"""
