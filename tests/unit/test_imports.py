"""Import direction: the pure core never reaches I/O or the shell (style-anchors §6), adapters
never reach the daemon, the tools stay apart from the daemon, and every module's "May import:"
line is true.

The layer of a module is the subpackage it lives in (`core/`, `adapters/`, `daemon/`, `tools/`);
the few top-level modules are named below. Walks every `import` with `ast` (no module is
executed), including imports inside functions and under `if TYPE_CHECKING:`. A module the test
cannot classify fails it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ovs_ipsec"
SUBPACKAGES = ("core", "adapters", "daemon", "tools")
# Top-level modules: the entry points, the exception types any layer may raise, the package.
TOP_LEVEL = {
    "cli": "ENTRY",
    "entry": "ENTRY",
    "errors": "LEAF",
    "__init__": "PACKAGE",
    "__main__": "PACKAGE",
}


def module_name(path: Path) -> str:
    """`core.model` for ovs_ipsec/core/model.py, `core` for ovs_ipsec/core/__init__.py."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    first = module.split(".")[0]
    if first in SUBPACKAGES:
        return first.upper()
    return TOP_LEVEL.get(module)


ALL_MODULES = sorted(module_name(path) for path in PACKAGE.rglob("*.py"))
LAYERS: dict[str, list[str]] = {}
for _module in ALL_MODULES:
    LAYERS.setdefault(layer_of(_module) or "UNCLASSIFIED", []).append(_module)
CORE = LAYERS["CORE"]
ADAPTERS = LAYERS["ADAPTERS"]
DAEMON = LAYERS["DAEMON"]
TOOLS = LAYERS["TOOLS"]
LEAVES = LAYERS["LEAF"]
PACKAGE_FILES = LAYERS["PACKAGE"]
SHELL = [*ADAPTERS, *DAEMON, *LAYERS["ENTRY"]]
# Besides the shell: I/O, processes, clocks, threads, and the OVS and VICI libraries.
FORBIDDEN = {
    "ovs",
    "vici",
    "subprocess",
    "socket",
    "time",
    "os",
    "shutil",
    "select",
    "signal",
    "threading",
    "asyncio",
}
# Third-party packages a core module may use besides the standard library.
THIRD_PARTY = {"core.pki": {"cryptography"}}
DYNAMIC = "<dynamic import>"


def path_of(module: str) -> Path:
    base = PACKAGE.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imports_of(source: str, filename: str = "<source>") -> set[str]:
    """Absolute dotted names of everything `source` imports, at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from .x import y
                base = "ovs_ipsec" + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            names.add(base)
            if base == "ovs_ipsec" or base.startswith("ovs_ipsec."):
                names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in {"import_module", "__import__"}:
                names.add(DYNAMIC)
    return names


def imported_modules(module: str) -> set[str]:
    path = path_of(module)
    return imports_of(path.read_text(), str(path))


def internal(name: str) -> str | None:
    """`adapters.charon` for `ovs_ipsec.adapters.charon` or `ovs_ipsec.adapters.charon.Charon`
    (the longest prefix that is a module of the package); None outside the package and for
    names of the package itself (`from ovs_ipsec import __version__`)."""
    parts = name.split(".")
    if parts[0] != "ovs_ipsec":
        return None
    for end in range(len(parts), 1, -1):
        candidate = ".".join(parts[1:end])
        if candidate in ALL_MODULES:
            return candidate
    return None


@pytest.mark.parametrize("module", CORE)
def test_core_never_imports_io_or_the_shell(module: str) -> None:
    """A core module imports none of ovs, vici, subprocess, socket, time (nor other I/O,
    thread or clock modules), no shell module (charon, ovsdb, xfrm, proc, daemon, control,
    cli, ...), and nothing dynamically."""
    bad = sorted(
        name
        for name in imported_modules(module)
        if name == DYNAMIC or name.split(".")[0] in FORBIDDEN or internal(name) in SHELL
    )
    assert not bad, f"{path_of(module)} imports {bad}"


@pytest.mark.parametrize("module", CORE)
def test_core_imports_only_stdlib_and_core(module: str) -> None:
    """Besides the standard library, a core module imports only other core modules (pki alone
    may import cryptography), so a new shell module cannot sneak in under another name."""
    allowed = (set(sys.stdlib_module_names) - FORBIDDEN) | {"__future__"}
    allowed |= THIRD_PARTY.get(module, set())
    bad = sorted(
        name
        for name in imported_modules(module)
        if name != "ovs_ipsec"
        and internal(name) not in {*CORE, *LEAVES, *PACKAGE_FILES}
        and name.split(".")[0] not in allowed
    )
    assert not bad, f"{path_of(module)} imports {bad}"


def test_core_imports_form_no_cycle() -> None:
    """Dependencies inside the core point one way: its import graph has no cycle."""
    core = CORE
    graph = {m: {internal(n) for n in imported_modules(m)} & set(core) for m in core}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " -> ".join((*path, module))
        if module in done:
            return
        for dependency in sorted(graph[module]):
            visit(dependency, (*path, module))
        done.add(module)

    for module in core:
        visit(module, ())


def test_every_module_is_in_exactly_one_layer() -> None:
    """Every module lives in a layer's subpackage or is a named top-level module: a new
    top-level module must be classified before it can be checked."""
    assert not LAYERS.get("UNCLASSIFIED"), f"in no layer: {LAYERS.get('UNCLASSIFIED')}"
    assert set(TOP_LEVEL) <= set(ALL_MODULES), sorted(set(TOP_LEVEL) - set(ALL_MODULES))


@pytest.mark.parametrize("module", ADAPTERS)
def test_adapters_never_import_the_daemon_or_the_entry_points(module: str) -> None:
    """An adapter talks to one external system and knows nothing of the loop that drives it,
    so the daemon can hand it fakes."""
    bad = sorted(
        name
        for name in imported_modules(module)
        if (layer_of(internal(name) or "") or "") in {"DAEMON", "ENTRY"}
    )
    assert not bad, f"{path_of(module)} imports {bad}"


@pytest.mark.parametrize("module", [*CORE, *SHELL, *LEAVES, *PACKAGE_FILES])
def test_the_daemon_never_imports_a_tool(module: str) -> None:
    """The lab, the demo and the PKI command line stay out of the daemon's imports."""
    bad = sorted(name for name in imported_modules(module) if internal(name) in TOOLS)
    assert not bad, f"{path_of(module)} imports {bad}"


def resolve(item: str) -> str | None:
    """The module a "May import:" item names: a path under the package (`core.model`) or a
    unique tail of one (`model`, `xfrm.netlink`)."""
    if item in ALL_MODULES:
        return item
    tails = [m for m in ALL_MODULES if m.endswith("." + item)]
    return tails[0] if len(tails) == 1 else None


def may_import(module: str) -> tuple[set[str], set[str], bool] | None:
    """The `May import:` line of a module's docstring as (modules of the package, outside
    packages, standard library allowed); None without such a line. Items are comma separated
    (a final "and" counts as a comma); a parenthesised remark after an item is ignored; "any
    core or adapter module" stands for those two layers and the leaves."""
    docstring = ast.get_docstring(ast.parse(path_of(module).read_text())) or ""
    found = re.search(r"May import:(.*?)(?:\.\s*$|\.\n\n)", docstring, re.S)
    if found is None:
        return None
    text = re.sub(r"\([^)]*\)", "", " ".join(found.group(1).split()))
    inside: set[str] = set()
    outside: set[str] = set()
    stdlib = False
    for item in re.split(r",|\band\b", text):
        item = item.strip()
        if item == "stdlib":
            stdlib = True
        elif item == "any core or adapter module":
            inside |= {*CORE, *ADAPTERS, *LEAVES}
        elif item.endswith(".*") and item[:-2] in SUBPACKAGES:
            inside |= {m for m in ALL_MODULES if m.split(".")[0] == item[:-2]}
        elif resolve(item) is not None:
            inside.add(resolve(item))
        else:
            assert re.fullmatch(r"[A-Za-z_][\w.]*", item), f"{module}: cannot read {item!r}"
            assert not item.startswith("ovs_ipsec"), f"{module}: no such module {item!r}"
            outside.add(item)
    return inside, outside, stdlib


@pytest.mark.parametrize("module", ALL_MODULES)
def test_may_import_lines_are_true(module: str) -> None:
    """What a module's docstring says it may import covers everything it does import: modules
    of the package by name, other packages by the dotted name (or a parent of it), the standard
    library by the word stdlib."""
    allowed = may_import(module)
    if allowed is None:
        return
    inside, outside, stdlib = allowed
    bad = []
    for name in sorted(imported_modules(module) - {"ovs_ipsec", "__future__", DYNAMIC}):
        own = internal(name)
        if own is not None:
            # A subpackage's __init__ is imported on the way to its modules.
            if (
                own not in inside
                and own not in SUBPACKAGES
                and "." + own not in {"." + m.rpartition(".")[0] for m in inside}
            ):
                bad.append(name)
        elif name.startswith("ovs_ipsec"):
            continue  # `from ovs_ipsec.core import model` also names the package it comes from
        elif name.split(".")[0] in sys.stdlib_module_names:
            if not stdlib:
                bad.append(name)
        elif not any(name == o or name.startswith(o + ".") for o in outside):
            bad.append(name)
    assert not bad, f"{path_of(module)} imports {bad}, which its May import line omits"


def test_the_walker_sees_every_import_form() -> None:
    """The walker catches plain, from, package, relative, nested and dynamic imports (a check
    that missed one would pass vacuously)."""
    source = (
        "import socket\n"
        "import ovs.poller\n"
        "from ovs_ipsec.adapters import charon\n"
        "from ovs_ipsec.adapters.proc import run\n"
        "def f():\n"
        "    import subprocess\n"
        "    importlib.import_module('vici')\n"
    )
    assert imports_of(source) >= {
        "socket",
        "ovs.poller",
        "ovs_ipsec.adapters.charon",
        "ovs_ipsec.adapters.proc",
        "subprocess",
        DYNAMIC,
    }


def test_the_option_table_is_loaded_only_for_tunnels_with_ipsec_options() -> None:
    """The daemon's modules and a plan of option-less tunnels leave the option table and its
    translation (about 0.9 MiB) unloaded; the first tunnel with an ipsec_* option loads them. The
    documentation generator is never loaded."""
    script = (
        "import sys\n"
        "import ovs_ipsec.cli\n"
        "from ovs_ipsec.core.model import InterfaceRow, Snapshot\n"
        "from ovs_ipsec.core.parse import parse_config\n"
        "from ovs_ipsec.core.connections import plan\n"
        "def conn(options):\n"
        "    row = InterfaceRow('t0', 'gre', {'remote_ip': '10.0.0.2', 'psk': 'Kx7-imports',\n"
        "                                     **options})\n"
        "    return plan(parse_config(Snapshot((row,), {}))).conns['ovs-10.0.0.2'].body\n"
        "table = ('options', 'proposals', 'translate', 'values')\n"
        "def loaded(name):\n"
        "    return 'ovs_ipsec.core.ike_options.' + name in sys.modules\n"
        "plain = conn({})\n"
        "assert not any(loaded(name) for name in table), sorted(sys.modules)\n"
        "tuned = conn({'ipsec_dpddelay': '7s'})\n"
        "assert all(loaded(name) for name in table), sorted(sys.modules)\n"
        "assert not loaded('docs')\n"
        "assert tuned.get('dpd_delay') == '7s' and 'dpd_delay' not in plain, tuned\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_importing_the_modules_leaves_the_ovs_library_alone() -> None:
    """Importing every module patches no library class and registers no control command; the
    entry point does both, explicitly (`receive_whole_utf8_characters`, `register_commands`)."""
    script = (
        "import importlib, pkgutil\n"
        "import ovs.jsonrpc, ovs.unixctl\n"
        "import ovs_ipsec\n"
        "recv, commands = ovs.jsonrpc.Connection.recv, dict(ovs.unixctl.commands)\n"
        "for info in pkgutil.walk_packages(ovs_ipsec.__path__, 'ovs_ipsec.'):\n"
        "    if info.name.rpartition('.')[2] not in {'__main__', 'metrics'}:\n"
        "        importlib.import_module(info.name)\n"
        "assert ovs.jsonrpc.Connection.recv is recv\n"
        "assert dict(ovs.unixctl.commands) == commands, sorted(ovs.unixctl.commands)\n"
        "from ovs_ipsec.adapters.ovsdb import receive_whole_utf8_characters\n"
        "receive_whole_utf8_characters()\n"
        "receive_whole_utf8_characters()\n"
        "assert ovs.jsonrpc.Connection.recv.__name__ == '_recv_whole_characters'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_test_modules_have_unique_names() -> None:
    """pytest imports test modules by their base name (rootdir mode, no packages): two with one
    name in different folders stop the whole run at collection."""
    tests = Path(__file__).resolve().parents[1]
    names = Counter(path.name for path in tests.rglob("test_*.py") if "guest" not in path.parts)
    assert not [name for name, count in names.items() if count > 1]
