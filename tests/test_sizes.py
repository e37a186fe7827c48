"""Size guards: no module of the package over 600 lines, no class over 25 methods.

A module or class past these has taken on a second concern (STYLE.md: one
responsibility per module); split it rather than raise the numbers.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "mqtt_twisted"
MAX_LINES = 600
MAX_METHODS = 25


class SizeTests(SynchronousTestCase):
    def test_modules_at_most_600_lines(self) -> None:
        sources = [p for pattern in ("*.py", "*.pyx", "*.pxi") for p in PACKAGE.rglob(pattern)]
        long = {str(p.relative_to(PACKAGE)): n for p in sorted(sources)
                if (n := len(p.read_text().splitlines())) > MAX_LINES}
        self.assertEqual(long, {})

    def test_classes_at_most_25_methods(self) -> None:
        big = {}
        for path in sorted(PACKAGE.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    n = sum(isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef)
                            for b in node.body)
                    if n > MAX_METHODS:
                        big[f"{path.relative_to(PACKAGE)}:{node.name}"] = n
        self.assertEqual(big, {})
