"""Optional compiled speedups (docs/speedups.md); metadata is in pyproject.toml.

``pip install .`` compiles ``mqtt_twisted/codec/_speedups.pyx`` and
``mqtt_twisted/core/_subscribe.pyx`` with Cython when a C compiler works, and installs
the pure-Python package when it does not: the build never fails for want of a compiler.  ``MQTT_TWISTED_NO_EXT=1`` skips the extension;
``MQTT_TWISTED_REQUIRE_EXT=1`` makes a failed build an error (CI, where gcc exists).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """build_ext that warns and goes on when the compiler is missing or fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler at all: distutils' CCompilerError, OSError...
            self._skip(e)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            self._skip(e)

    def _skip(self, error: Exception) -> None:
        if _flag("MQTT_TWISTED_REQUIRE_EXT"):
            raise error
        print(f"warning: mqtt_twisted's compiled speedups not built ({error}); "
              "the pure-Python codec is used", file=sys.stderr)


def extensions() -> list[Extension]:
    if _flag("MQTT_TWISTED_NO_EXT"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if _flag("MQTT_TWISTED_REQUIRE_EXT"):
            raise
        print("warning: Cython not installed: the pure-Python codec is used", file=sys.stderr)
        return []
    modules = [("mqtt_twisted.codec._speedups", "mqtt_twisted/codec/_speedups.pyx"),
               ("mqtt_twisted.core._qos0", "mqtt_twisted/core/_qos0.pyx"),
               ("mqtt_twisted.core._subscribe", "mqtt_twisted/core/_subscribe.pyx"),
               ("mqtt_twisted.cluster._entries", "mqtt_twisted/cluster/_entries.pyx"),
               ("mqtt_twisted.cluster._resp", "mqtt_twisted/cluster/_resp.pyx"),
               ("mqtt_twisted.adapters._mmsg", "mqtt_twisted/adapters/_mmsg.pyx")]
    built = []
    for name, source in modules:  # one at a time: one that Cython refuses leaves the others
        try:
            built += cythonize([Extension(name, [source])], language_level=3, quiet=True)
        except Exception as e:
            if _flag("MQTT_TWISTED_REQUIRE_EXT"):
                raise
            print(f"warning: {source} not translated ({e}); its pure-Python twin is used",
                  file=sys.stderr)
    return built


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
