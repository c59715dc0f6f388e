"""Import direction: the pure core never reaches I/O or the shell (style-anchors §6).

Walks every `import` of ovs_ipsec/*.py with `ast` (no module is executed), including imports
inside functions and under `if TYPE_CHECKING:`. Modules that do not exist yet are skipped.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ovs_ipsec"

CORE = [
    "model",
    "parse",
    "naming",
    "plan",
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
SHELL = [
    "charon",
    "events",
    "ovsdb",
    "xfrm",
    "proc",
    "apply",
    "daemon",
    "control",
    "cli",
    "entry",
    "heap",
    "vici_socket",
]
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
# Stdlib-only modules any layer may import (exception types with fields).
LEAVES = {"errors"}
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


def existing(modules: list[str]) -> list[str]:
    return [m for m in modules if (PACKAGE / f"{m}.py").exists()]


def internal(name: str) -> str | None:
    """`charon` for `ovs_ipsec.charon` (or deeper), None for anything outside the package."""
    parts = name.split(".")
    return parts[1] if parts[0] == "ovs_ipsec" and len(parts) > 1 else None


@pytest.mark.parametrize("module", existing(CORE))
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


@pytest.mark.parametrize("module", existing(CORE))
def test_core_imports_only_stdlib_and_core(module: str) -> None:
    """Besides the standard library, a core module imports only other core modules (pki alone
    may import cryptography), so a new shell module cannot sneak in under another name."""
    allowed = (set(sys.stdlib_module_names) - FORBIDDEN) | {"__future__"}
    allowed |= THIRD_PARTY.get(module, set())
    bad = sorted(
        name
        for name in imported_modules(module)
        if name != "ovs_ipsec"
        and internal(name) not in {*CORE, *LEAVES}
        and name.split(".")[0] not in allowed
    )
    assert not bad, f"ovs_ipsec/{module}.py imports {bad}"


def test_core_imports_form_no_cycle() -> None:
    """Dependencies inside the core point one way: its import graph has no cycle."""
    core = existing(CORE)
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
