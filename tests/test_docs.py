"""The README's layout and the telemetry example's set-up match the tree (issue 11, item 15).

The layout had drifted (no Redis store, no JWT or SCRAM, no bench/compare.py or
examples/), the example's ``.env`` (it holds an access token) was not
git-ignored, and its README needed two environments.  These checks fail when a
module or directory is added without a line in the layout, a line names
something that is gone, the example imports a package its requirements.txt does
not install, or its README stops installing broker and client together.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "telemetry_client"


def layout() -> str:
    """The code block under the README's "Layout" heading."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Layout\n+```\n(.*?)^```", text, re.S | re.M)
    assert match, "README.md has no Layout code block"
    return match.group(1)


def public_modules(directory: Path) -> list[str]:
    """Module and package names in ``directory``, without the private ones."""
    names = [p.stem for p in directory.glob("*.py") if not p.name.startswith("_")]
    names += [p.name for p in directory.iterdir()
              if p.is_dir() and (p / "__init__.py").exists() and not p.name.startswith("_")]
    return sorted(names)


def tracked_top_level_directories() -> list[str]:
    """The checkout's top-level directories that git tracks, hidden ones aside (none
    outside a git checkout: test runs leave directories of their own there)."""
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        return []
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    return sorted({f.split("/")[0] for f in files if "/" in f and not f.startswith(".")})


class ReadmeLayoutTests(SynchronousTestCase):
    """Every directory and module the layout names exists, and the ones it must name are there."""

    def test_named_paths_exist(self) -> None:
        """The path starting each layout line exists, under the directory it is indented below."""
        parents: list[tuple[int, Path]] = []  # (indent, directory) of the enclosing lines
        for line in layout().splitlines():
            if not line.strip():
                continue
            indent = len(line) - len(line.lstrip())
            path = line.split()[0]
            while parents and parents[-1][0] >= indent:
                parents.pop()
            target = (parents[-1][1] if parents else ROOT) / path
            self.assertTrue(target.exists(), f"README layout names {path!r}: no {target}")
            if path.endswith("/"):
                parents.append((indent, target))

    def test_top_level_and_package_modules_listed(self) -> None:
        """Top-level directories, mqtt_twisted's modules, and the modules of store/, auth/,
        adapters/, plugins/, testing/, cluster/ and bench/ each appear in the layout."""
        text = layout()
        expected = [f"{name}/" for name in tracked_top_level_directories()]
        expected += public_modules(ROOT / "mqtt_twisted")
        for package in ("store", "auth", "adapters", "plugins", "testing", "cluster"):
            expected += public_modules(ROOT / "mqtt_twisted" / package)
        expected += [p.name for p in (ROOT / "bench").iterdir()
                     if p.suffix in (".py", ".js")]
        missing = [name for name in expected if not re.search(
            rf"(?<![\w./]){re.escape(name)}" + ("" if name.endswith("/") else r"(?![\w])"),
            text)]
        self.assertEqual(missing, [], "not in README.md's Layout section")


class TelemetryExampleTests(SynchronousTestCase):
    """The example installs what it imports, and its token file stays out of git."""

    def test_requirements_cover_imports(self) -> None:
        """Every third-party module main.py imports comes from a requirements.txt line."""
        tree = ast.parse((EXAMPLE / "main.py").read_text())
        modules = {alias.name.split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        third_party = sorted(modules - set(sys.stdlib_module_names) - {"__future__"})
        self.assertTrue(third_party)
        wanted = {re.split(r"[\s<>=!~;\[#]", line.strip(), maxsplit=1)[0].lower()
                  for line in (EXAMPLE / "requirements.txt").read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")}
        providers = importlib.metadata.packages_distributions()
        for module in third_party:
            dists = {d.lower() for d in providers.get(module, [])}
            self.assertTrue(dists & wanted, f"main.py imports {module} ({dists}), not in "
                                            f"requirements.txt {sorted(wanted)}")

    def test_env_file_ignored(self) -> None:
        """git ignores the example's .env (the token), not its .env.example."""
        if not (ROOT / ".git").exists() or not shutil.which("git"):
            raise SkipTest("not a git checkout")

        def ignored(path: str) -> bool:
            return subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index",
                                   path]).returncode == 0

        self.assertTrue(ignored("examples/telemetry_client/.env"))
        self.assertFalse(ignored("examples/telemetry_client/.env.example"))

    def test_readme_uses_one_environment(self) -> None:
        """The example's README installs the broker and the example into one venv."""
        text = (EXAMPLE / "README.md").read_text()
        self.assertIn("pip install . -r examples/telemetry_client/requirements.txt", text)
        self.assertIn("cp .env.example .env", text)
