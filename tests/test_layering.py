"""Which way imports run: the layering rules of /work/shared/STYLE.md, checked with ``ast``.

Every module under ``mqtt_twisted/`` is parsed (nothing is imported); its module-level
and function-level imports are collected, ``from x import y`` resolved to the module
``x.y`` when that is a module and to ``x`` otherwise, and imports under
``if TYPE_CHECKING:`` left out (they never run).  A rule broken by today's code is not
loosened: the import goes into ``KNOWN_VIOLATIONS`` with the reason it is still there,
and that list may only shrink (an entry whose import is gone fails the suite too).
"""

from __future__ import annotations

import ast
import importlib.machinery
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mqtt_twisted"

#: The only Twisted modules the sans-IO core may import at run time: nothing of
#: twisted.internet (STYLE.md), not even Deferreds (``core/_async.py`` recognises them by
#: their methods; the adapters' gateway, which hands out Deferreds, sits above the core
#: in ``mqtt_twisted/gateway.py``).  The clock is injected; a Clock or IReactorTime wanted
#: for a type hint goes under ``if TYPE_CHECKING:``.
CORE_TWISTED_ALLOWED = ("twisted.logger", "twisted.python.failure")

#: (rule, importer, imported) -> why the import is still there.  Fix one, then delete its
#: entry: test_known_violations_still_occur fails until you do.
KNOWN_VIOLATIONS: dict[tuple[str, str, str], str] = {}


# --- the import walker -------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Import:
    """One import statement's target, resolved to a module."""

    importer: str
    imported: str
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    """``mqtt_twisted/core/broker.py`` -> ``mqtt_twisted.core.broker`` (a package: its name)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module and package of ours, by dotted name."""
    return {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}


@cache
def _spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """Find a module without importing it (nor any package above it)."""
    parent, _, _ = name.rpartition(".")
    if not parent:
        if name in sys.builtin_module_names:
            return importlib.machinery.ModuleSpec(name, None)
        return importlib.machinery.PathFinder.find_spec(name)
    above = _spec(parent)
    if above is None or not above.submodule_search_locations:
        return None
    return importlib.machinery.PathFinder.find_spec(name, list(above.submodule_search_locations))


def is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node``, function bodies included, ``if TYPE_CHECKING:`` bodies not."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _statements(other)
            continue
        yield child
        yield from _statements(child)


def imports_of(name: str, source: str, is_package: bool,
               is_module: Callable[[str], bool]) -> list[Import]:
    """The modules ``source`` (the text of module ``name``) imports."""
    found: list[Import] = []
    package = name if is_package else name.rpartition(".")[0]
    for node in _statements(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if alias.name != "*" and is_module(candidate) else base
                found.append(Import(name, target, node.lineno))
    return found


def all_imports(root: Path = ROOT) -> list[Import]:
    """Every import of every module under ``mqtt_twisted/``."""
    modules = our_modules(root)

    def is_module(dotted: str) -> bool:
        if dotted == PACKAGE or dotted.startswith(PACKAGE + "."):
            return dotted in modules
        return _spec(dotted) is not None

    found: list[Import] = []
    for name, path in modules.items():
        found += imports_of(name, path.read_text(), path.name == "__init__.py", is_module)
    return sorted(set(found))


# --- the rules ---------------------------------------------------------------------------


def within(module: str, *packages: str) -> bool:
    """Is ``module`` one of ``packages`` or inside one of them?"""
    return any(module == p or module.startswith(p + ".") for p in packages)


def _ours(name: str) -> str:
    return f"{PACKAGE}.{name}"


def _private_outside(importer: str, imported: str) -> bool:
    """``imported`` is (inside) a ``_private`` module whose package ``importer`` is not in.

    Top-level private modules (``_thread``) and dunders (``__future__``) are left alone.
    """
    parts = imported.split(".")
    for n, part in enumerate(parts[1:], 1):
        if part.startswith("_") and not part.startswith("__"):
            return not within(importer, ".".join(parts[:n]))
    return False


@dataclass(frozen=True)
class Rule:
    """One layering rule: ``broken(importer, imported)`` is true for an import it forbids."""

    name: str
    text: str
    broken: Callable[[str, str], bool]


CODEC, CORE, STORE = _ours("codec"), _ours("core"), _ours("store")
COAP = _ours("coap")
ABOVE_CORE = tuple(_ours(p) for p in ("adapters", "store", "service", "tap", "cluster"))
CLUSTER_SANS_IO = tuple(_ours(f"cluster.{m}") for m in ("resp", "routes", "router"))
ABOVE_STORE = tuple(_ours(p) for p in ("core", "adapters", "service", "tap"))
SHARED = (_ours("constants"), _ours("errors"))

RULES = [
    Rule("codec-imports",
         "mqtt_twisted.codec imports nothing of ours but mqtt_twisted.constants and "
         "mqtt_twisted.errors",
         lambda a, b: within(a, CODEC) and within(b, PACKAGE)
         and not within(b, CODEC, *SHARED)),
    Rule("codec-no-twisted",
         "mqtt_twisted.codec imports nothing from Twisted (sans-IO: bytes in, packets out)",
         lambda a, b: within(a, CODEC) and within(b, "twisted")),
    Rule("coap-imports",
         "mqtt_twisted.coap (the sans-IO CoAP protocol) imports nothing of ours but itself, "
         "the MQTT codec's topic rules, mqtt_twisted.message, .constants and .errors",
         lambda a, b: within(a, COAP) and within(b, PACKAGE)
         and not within(b, COAP, CODEC, _ours("message"), *SHARED)),
    Rule("coap-no-twisted",
         "mqtt_twisted.coap imports nothing from Twisted (sans-IO: bytes in, messages out; "
         "the clock is injected)",
         lambda a, b: within(a, COAP) and within(b, "twisted")),
    Rule("core-layers",
         "mqtt_twisted.core never imports mqtt_twisted.adapters, .store, .service, .tap or "
         ".cluster (they sit above it)",
         lambda a, b: within(a, CORE) and within(b, *ABOVE_CORE)),
    Rule("core-reactor",
         "mqtt_twisted.core imports from Twisted only " + ", ".join(CORE_TWISTED_ALLOWED)
         + ": never the reactor side (twisted.internet.reactor, tcp, endpoints, protocol, "
         "task, *reactor, twisted.application); type-only imports go under TYPE_CHECKING",
         lambda a, b: within(a, CORE) and within(b, "twisted")
         and not within(b, *CORE_TWISTED_ALLOWED)),
    Rule("cluster-sans-io",
         "mqtt_twisted.cluster's codec, route table and router (resp, routes, router) import "
         "nothing of twisted.internet or twisted.application: only client.py and node.py "
         "do the I/O",
         lambda a, b: a in CLUSTER_SANS_IO
         and within(b, "twisted.internet", "twisted.application")),
    Rule("store-layers",
         "mqtt_twisted.store never imports mqtt_twisted.core, .adapters, .service or .tap",
         lambda a, b: within(a, STORE) and within(b, *ABOVE_STORE)),
    Rule("interfaces-abstract",
         "mqtt_twisted.interfaces imports nothing concrete of ours (only mqtt_twisted.constants "
         "and mqtt_twisted.errors)",
         lambda a, b: a == _ours("interfaces") and within(b, PACKAGE) and not within(b, *SHARED)),
    Rule("private-modules",
         "a module whose name starts with '_' is imported only from inside its own package "
         "(import the name from the package's public module or __init__ instead)",
         _private_outside),
    Rule("http-gateway-only",
         "the HTTP bridge (adapters.http, ._httpapi, ._httpstream) reaches the broker only "
         "through mqtt_twisted.gateway: no core module",
         lambda a, b: within(a, _ours("adapters.http"), _ours("adapters._httpapi"),
                             _ours("adapters._httpstream"))
         and within(b, CORE)),
    Rule("bridge-gateway-only",
         "the MQTT bridge (mqtt_twisted.bridge) reaches the broker only through "
         "mqtt_twisted.gateway (a virtual session, as an adapter): no core, adapters, "
         "service or tap module",
         lambda a, b: within(a, _ours("bridge"))
         and within(b, CORE, _ours("adapters"), _ours("service"), _ours("tap"))),
    Rule("testing-unused",
         "nothing of the broker imports mqtt_twisted.testing (it is for tests only)",
         lambda a, b: within(b, _ours("testing")) and not within(a, _ours("testing"))),
]
RULES_BY_NAME = {rule.name: rule for rule in RULES}


@dataclass(frozen=True)
class Violation:
    """An import a rule forbids."""

    rule: str
    importer: str
    imported: str
    line: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rule, self.importer, self.imported)

    def __str__(self) -> str:
        return (f"{self.importer} imports {self.imported} (line {self.line}), breaking "
                f"rule {self.rule}: {RULES_BY_NAME[self.rule].text}")


def violations(imports: list[Import]) -> list[Violation]:
    """Every (rule, import) pair where the rule forbids the import."""
    return [Violation(rule.name, i.importer, i.imported, i.line)
            for i in imports for rule in RULES if rule.broken(i.importer, i.imported)]


@cache
def todays_violations() -> tuple[Violation, ...]:
    return tuple(violations(all_imports()))


# --- the tests ---------------------------------------------------------------------------


class LayeringTests(SynchronousTestCase):
    """Today's tree keeps every rule, apart from the allow-listed imports."""

    def check(self, rule: str) -> None:
        """No import breaks ``rule`` except the allow-listed ones."""
        broken = [str(v) for v in todays_violations()
                  if v.rule == rule and v.key not in KNOWN_VIOLATIONS]
        self.assertEqual(broken, [], "\n" + "\n".join(broken))

    def test_codec_imports(self) -> None:
        """The codec imports nothing of ours but constants and errors."""
        self.check("codec-imports")

    def test_codec_no_twisted(self) -> None:
        """The codec imports nothing from Twisted."""
        self.check("codec-no-twisted")

    def test_coap_imports(self) -> None:
        """The CoAP protocol imports only itself, the codec, message, constants, errors."""
        self.check("coap-imports")

    def test_coap_no_twisted(self) -> None:
        """The CoAP protocol imports nothing from Twisted."""
        self.check("coap-no-twisted")

    def test_core_layers(self) -> None:
        """The core never imports adapters, stores, the service or the tap."""
        self.check("core-layers")

    def test_core_reactor(self) -> None:
        """The core imports only Deferreds, the logger and Failure from Twisted."""
        self.check("core-reactor")

    def test_cluster_sans_io(self) -> None:
        """The cluster's codec, route table and router do no I/O of their own."""
        self.check("cluster-sans-io")

    def test_store_layers(self) -> None:
        """Stores never import the core, adapters, the service or the tap."""
        self.check("store-layers")

    def test_interfaces_abstract(self) -> None:
        """interfaces.py imports nothing concrete of ours."""
        self.check("interfaces-abstract")

    def test_private_modules(self) -> None:
        """No module imports another package's _private module."""
        self.check("private-modules")

    def test_http_gateway_only(self) -> None:
        self.check("http-gateway-only")

    def test_bridge_gateway_only(self) -> None:
        """The bridge imports no core module: the Gateway is its door."""
        self.check("bridge-gateway-only")

    def test_testing_unused(self) -> None:
        """No broker module imports mqtt_twisted.testing."""
        self.check("testing-unused")

    def test_every_rule_has_a_test(self) -> None:
        """Each rule is checked by a test method of its own."""
        for rule in RULES:
            self.assertTrue(hasattr(self, "test_" + rule.name.replace("-", "_")), rule.name)

    def test_known_violations_still_occur(self) -> None:
        """Every allow-listed import is still there: a fixed one leaves the list."""
        found = {v.key for v in todays_violations()}
        gone = [key for key in KNOWN_VIOLATIONS if key not in found]
        self.assertEqual(gone, [], "fixed: remove these from KNOWN_VIOLATIONS")

    def test_known_violations_explained(self) -> None:
        """Each allow-list entry names an existing rule and gives a reason."""
        for (rule, importer, imported), reason in KNOWN_VIOLATIONS.items():
            self.assertIn(rule, RULES_BY_NAME)
            self.assertTrue(reason.strip(), (rule, importer, imported))

    def test_walk_covers_the_package(self) -> None:
        """The walker parses every module, and finds imports in the core and the codec."""
        modules = our_modules()
        self.assertIn("mqtt_twisted.core.broker", modules)
        self.assertIn("mqtt_twisted.codec", modules)
        importers = {i.importer for i in all_imports()}
        self.assertIn("mqtt_twisted.core.broker", importers)
        self.assertIn("mqtt_twisted.codec._decode", importers)


def _fake_is_module(name: str) -> bool:
    return name in {"pkg", "pkg.sub", "pkg.sub.mod", "pkg.sub._priv", "pkg.other",
                    "twisted.internet.reactor", "twisted.internet.defer"}


class WalkerTests(SynchronousTestCase):
    """The walker and the rules themselves, on made-up sources."""

    def targets(self, source: str, name: str = "pkg.sub.mod", is_package: bool = False
                ) -> list[str]:
        return [i.imported for i in imports_of(name, source, is_package, _fake_is_module)]

    def test_import_forms(self) -> None:
        """import a.b, from a import module, from a import name, relative and in functions."""
        source = (
            "import os.path\n"
            "from twisted.internet import reactor, defer\n"
            "from pkg.sub import _priv, thing\n"
            "from . import other_name\n"
            "from .. import other\n"
            "from ..other import x\n"
            "def f():\n"
            "    from pkg.sub.mod import y\n"
        )
        self.assertEqual(self.targets(source), [
            "os.path", "twisted.internet.reactor", "twisted.internet.defer", "pkg.sub._priv",
            "pkg.sub", "pkg.sub", "pkg.other", "pkg.other", "pkg.sub.mod"])
        self.assertEqual(self.targets("from . import mod\n", "pkg.sub", True), ["pkg.sub.mod"])

    def test_type_checking_left_out(self) -> None:
        """Imports under ``if TYPE_CHECKING:`` are ignored; its else branch is not."""
        source = (
            "import typing\n"
            "if TYPE_CHECKING:\n    import a\n"
            "if typing.TYPE_CHECKING:\n    import b\nelse:\n    import c\n"
        )
        self.assertEqual(self.targets(source), ["typing", "c"])

    def test_rules_catch(self) -> None:
        """Each rule flags the import it exists for, and lets the allowed ones through."""
        def rules(importer: str, imported: str) -> list[str]:
            return [v.rule for v in violations([Import(importer, imported, 1)])]

        m = "mqtt_twisted."
        self.assertEqual(rules(m + "codec.stream", m + "message"), ["codec-imports"])
        self.assertEqual(rules(m + "codec", m + "errors"), [])
        self.assertEqual(rules(m + "codec.topics", "twisted.python.failure"),
                         ["codec-no-twisted"])
        for above in ("adapters.http", "store.memory", "service", "tap", "cluster.router"):
            self.assertEqual(rules(m + "core.x", m + above), ["core-layers"], above)
        self.assertEqual(rules(m + "cluster.resp", "twisted.internet.protocol"),
                         ["cluster-sans-io"])
        self.assertEqual(rules(m + "cluster.client", "twisted.internet.protocol"), [])
        for reactor_side in ("twisted.internet.reactor", "twisted.internet.tcp",
                             "twisted.internet.endpoints", "twisted.internet.protocol",
                             "twisted.application.service", "twisted.internet.epollreactor",
                             "twisted.internet.task"):
            self.assertEqual(rules(m + "core.x", reactor_side), ["core-reactor"], reactor_side)
        for allowed in CORE_TWISTED_ALLOWED:
            self.assertEqual(rules(m + "core.x", allowed), [])
        for above in ("core.session", "adapters", "service", "tap"):
            self.assertEqual(rules(m + "store.x", m + above), ["store-layers"], above)
        self.assertEqual(rules(m + "interfaces", m + "message"), ["interfaces-abstract"])
        self.assertEqual(rules(m + "interfaces", m + "errors"), [])
        self.assertEqual(rules(m + "core.wire", m + "codec._encode"), ["private-modules"])
        self.assertEqual(rules(m + "codec.stream", m + "codec._decode"), [])
        self.assertEqual(rules(m + "store", "twisted.internet._sslverify"), ["private-modules"])
        self.assertEqual(rules(m + "store", "__future__"), [])
        self.assertEqual(rules(m + "service", m + "testing"), ["testing-unused"])

    def test_message_names_both_modules_and_the_rule(self) -> None:
        """A failure says which module imports which, and which rule that breaks."""
        text = str(Violation("store-layers", "mqtt_twisted.store.x", "mqtt_twisted.core", 3))
        for part in ("mqtt_twisted.store.x", "mqtt_twisted.core", "store-layers",
                     RULES_BY_NAME["store-layers"].text):
            self.assertIn(part, text)
