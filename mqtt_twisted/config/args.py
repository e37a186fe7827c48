"""The configuration file as command-line arguments, in front of the real ones.

``--config FILE`` is found with getopt (as Twisted parses: abbreviations too), the file
is read and checked (``load.py``), and its values become ``--option=value`` arguments
placed before the command line's, so that an option given on the command line wins: a
value replaces the file's, and a repeatable option (``--listen``, ``--auth``,
``--admin-user``) replaces the file's whole list.
"""

from __future__ import annotations

import getopt
from typing import Any

from mqtt_twisted.config.keys import REPEATABLE


def config_path(options: Any, argv: list[str]) -> tuple[str | None, set[str]]:
    """``--config``'s value (None when not given) and the options the command line gives."""
    try:
        pairs, _ = getopt.getopt(argv, options.shortOpt, options.longOpt)
    except getopt.GetoptError:
        return None, set()  # Twisted's own parse reports it
    given: set[str] = set()
    path = None
    for flag, value in pairs:
        name = flag.lstrip("-")
        name = options.synonyms.get(name) or options.synonyms.get(name.replace("-", "_"), name)
        name = name.replace("_", "-")  # opt_admin_user's name is admin_user
        given.add(name)
        if name == "config":
            path = value
    return path, given


def with_config(options: Any, argv: list[str]) -> list[str]:
    """``argv`` with the file's arguments in front (``argv`` itself without ``--config``).
    Sets ``options.origins`` and ``options.config_file``; raises ConfigError."""
    path, given = config_path(options, argv)
    if path is None or given & {"help", "version"}:
        return argv  # --help and --version answer whatever the file holds
    # Here, not at the top: jsonschema and PyYAML take half a second to import under
    # load, which a broker started without --config should not pay.
    from mqtt_twisted.config.load import load_config
    from mqtt_twisted.interfaces import IAdapter
    from mqtt_twisted.plugins import plugins_by_name

    config = load_config(path, type(options), plugins_by_name(IAdapter))
    options.config_file = config
    front: list[str] = []
    for option, text in config.arguments:
        if option in REPEATABLE and option in given:
            continue  # the command line's list replaces the file's
        if option.startswith("bridge") and "bridge" in given:
            continue  # and its bridges replace the file's, with all their options
        if text is None:
            front.append(f"--{option}")
        else:
            front.append(f"--{option}={text}")
            options.origins[(option, text)] = config.origins[(option, text)]
    return front + argv
