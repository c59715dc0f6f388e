"""Import direction: the pure core never reaches I/O or the shell (style-anchors §6), the
tools stay apart from the daemon, and every module's "May import:" line is true.

Walks every `import` of ovs_ipsec/*.py with `ast` (no module is executed), including imports
inside functions and under `if TYPE_CHECKING:`. Every module of the package is in exactly one
layer below; a module in none (or a listed one that does not exist) fails the test.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ovs_ipsec"

# Pure: no I/O, clocks, processes or threads; imports only the core and the leaves.
CORE = [
    "model",
    "parse",
    "naming",
    "plan",
    "planner",
    "reconcile",
    "vicidata",
    "status",
    "sas",
    "causes",
    "capabilities",
    "failures",
    "render",
    "protection",
    "pki",
    "credentials",
    "ike_options",
    "ike_settings",
    "ovs_dirs",
]
# The daemon: its loop, its adapters (charon, OVSDB, kernel, files, control socket, metrics
# endpoint, systemd) and its entry points.
SHELL = [
    "charon",
    "events",
    "ovsdb",
    "xfrm",
    "xfrm_netlink",
    "proc",
    "files",
    "daemon",
    "control",
    "cli",
    "entry",
    "heap",
    "vici_socket",
    "sdnotify",
    "http_server",
    "metrics",
]
# Programs beside the daemon (test lab, demo, PKI command line): the daemon never imports them.
TOOLS = ["lab", "demo", "pki_tool"]
# Stdlib-only modules any layer may import (exception types with fields).
LEAVES = ["errors"]
# The package itself (__version__, PROGRAM_NAME) and `python -m ovs_ipsec`.
PACKAGE_FILES = ["__init__", "__main__"]
LAYERS = {
    "CORE": CORE,
    "SHELL": SHELL,
    "TOOLS": TOOLS,
    "LEAVES": LEAVES,
    "PACKAGE_FILES": PACKAGE_FILES,
}
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
THIRD_PARTY = {"pki": {"cryptography"}}
DYNAMIC = "<dynamic import>"


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
            if base == "ovs_ipsec":
                names.update(f"ovs_ipsec.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in {"import_module", "__import__"}:
                names.add(DYNAMIC)
    return names


def imported_modules(module: str) -> set[str]:
    path = PACKAGE / f"{module}.py"
    return imports_of(path.read_text(), str(path))


def internal(name: str) -> str | None:
    """`charon` for `ovs_ipsec.charon` (or deeper), None for anything outside the package."""
    parts = name.split(".")
    return parts[1] if parts[0] == "ovs_ipsec" and len(parts) > 1 else None


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
    assert not bad, f"ovs_ipsec/{module}.py imports {bad}"


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
    assert not bad, f"ovs_ipsec/{module}.py imports {bad}"


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
    """A new module must be classified before it can be checked; a listed module must exist."""
    on_disk = {path.stem for path in PACKAGE.glob("*.py")}
    listed = [module for modules in LAYERS.values() for module in modules]
    twice = sorted({m for m in listed if listed.count(m) > 1})
    assert not twice, f"in more than one layer: {twice}"
    assert not on_disk - set(listed), f"in no layer: {sorted(on_disk - set(listed))}"
    assert not set(listed) - on_disk, f"listed but missing: {sorted(set(listed) - on_disk)}"


@pytest.mark.parametrize("module", [*CORE, *SHELL, *LEAVES])
def test_the_daemon_never_imports_a_tool(module: str) -> None:
    """The lab, the demo and the PKI command line stay out of the daemon's imports."""
    bad = sorted(name for name in imported_modules(module) if internal(name) in TOOLS)
    assert not bad, f"ovs_ipsec/{module}.py imports {bad}"


def may_import(module: str) -> tuple[set[str], set[str], bool] | None:
    """The `May import:` line of a module's docstring as (modules of the package, outside
    packages, standard library allowed); None without such a line. Items are comma separated
    (a final "and" counts as a comma); a parenthesised remark after an item is ignored; "any
    core or shell module" stands for those two layers and the leaves."""
    docstring = ast.get_docstring(ast.parse((PACKAGE / f"{module}.py").read_text())) or ""
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
        elif item == "any core or shell module":
            inside |= {*CORE, *SHELL, *LEAVES}
        elif (PACKAGE / f"{item}.py").exists():
            inside.add(item)
        else:
            assert re.fullmatch(r"[A-Za-z_][\w.]*", item), f"{module}: cannot read {item!r}"
            outside.add(item)
    return inside, outside, stdlib


ALL_MODULES = sorted(path.stem for path in PACKAGE.glob("*.py"))


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
        module_name = internal(name)
        if module_name is not None:
            # `from ovs_ipsec import __version__` names no module: the package's __init__.
            if module_name not in inside and (PACKAGE / f"{module_name}.py").exists():
                bad.append(name)
        elif name.split(".")[0] in sys.stdlib_module_names:
            if not stdlib:
                bad.append(name)
        elif not any(name == o or name.startswith(o + ".") for o in outside):
            bad.append(name)
    assert not bad, f"ovs_ipsec/{module}.py imports {bad}, which its May import line omits"


def test_the_walker_sees_every_import_form() -> None:
    """The walker catches plain, from, package, relative, nested and dynamic imports (a check
    that missed one would pass vacuously)."""
    source = (
        "import socket\n"
        "import ovs.poller\n"
        "from ovs_ipsec import charon\n"
        "from . import daemon\n"
        "from .proc import run\n"
        "def f():\n"
        "    import subprocess\n"
        "    importlib.import_module('vici')\n"
    )
    assert imports_of(source) >= {
        "socket",
        "ovs.poller",
        "ovs_ipsec.charon",
        "ovs_ipsec.daemon",
        "ovs_ipsec.proc",
        "subprocess",
        DYNAMIC,
    }


def test_the_option_table_is_loaded_only_for_tunnels_with_ipsec_options() -> None:
    """The daemon's modules and a plan of option-less tunnels leave ike_options (about 0.9 MiB)
    unloaded; the first tunnel with an ipsec_* option loads it."""
    script = (
        "import sys\n"
        "import ovs_ipsec.cli\n"
        "from ovs_ipsec.model import InterfaceRow, Snapshot\n"
        "from ovs_ipsec.parse import parse_config\n"
        "from ovs_ipsec.plan import plan\n"
        "def conn(options):\n"
        "    row = InterfaceRow('t0', 'gre', {'remote_ip': '10.0.0.2', 'psk': 'Kx7-imports',\n"
        "                                     **options})\n"
        "    return plan(parse_config(Snapshot((row,), {}))).conns['ovs-10.0.0.2'].body\n"
        "plain = conn({})\n"
        "assert 'ovs_ipsec.ike_options' not in sys.modules\n"
        "tuned = conn({'ipsec_dpddelay': '7s'})\n"
        "assert 'ovs_ipsec.ike_options' in sys.modules\n"
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
        "for info in pkgutil.iter_modules(ovs_ipsec.__path__):\n"
        "    if info.name not in {'__main__', 'metrics'}:\n"
        "        importlib.import_module('ovs_ipsec.' + info.name)\n"
        "assert ovs.jsonrpc.Connection.recv is recv\n"
        "assert dict(ovs.unixctl.commands) == commands, sorted(ovs.unixctl.commands)\n"
        "from ovs_ipsec.ovsdb import receive_whole_utf8_characters\n"
        "receive_whole_utf8_characters()\n"
        "receive_whole_utf8_characters()\n"
        "assert ovs.jsonrpc.Connection.recv.__name__ == '_recv_whole_characters'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
