"""The layers of docs/architecture.md, checked over the import graph.

Every ``import`` and ``from ... import`` in ``feedsup/`` (at any depth, also
inside functions and ``TYPE_CHECKING`` blocks) is read with ``ast``; none may
cross a forbidden edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "feedsup"

# Modules that do I/O or read the clock: none of them in feedsup/binance/,
# which holds what we know about Binance and takes time as an argument.
IO_MODULES = ("socket", "select", "selectors", "zmq", "websocket", "urllib", "http",
              "threading", "subprocess", "multiprocessing", "asyncio", "time", "fcntl")

TOOLING = ("feedsup.tools",)
SIM = ("feedsup.sim",)

# Worker kinds (one per stream kind): none imports another's module.
WORKER_KINDS = {
    "feedsup.workers.market": "market", "feedsup.workers.depth": "depth",
    "feedsup.workers.account": "account", "feedsup.workers.account_spot": "account",
    "feedsup.workers.account_usdm": "account",
}

# The command line is the one place that offers the simulator as a
# subcommand (`feedsup sim`, imported only when that command runs).
ALLOWED = {("feedsup.cli", "feedsup.sim.cli")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports, absolute, with its line."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, node.lineno))
            # `from feedsup.workers import market` imports feedsup.workers.market
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def forbidden(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``, or None."""
    if any(importer == a and within(imported, (b,)) for a, b in ALLOWED):
        return None
    if within(importer, SIM):
        if within(imported, ("feedsup",)) and not within(imported, SIM) and imported != "feedsup":
            return "the simulator stands apart from the product"
        return None
    if within(importer, TOOLING):
        return None
    if within(imported, SIM) or within(imported, TOOLING):
        return "the product does not import the simulator or the tooling"
    if within(importer, ("feedsup.supervisor",)) and within(imported, ("feedsup.workers",)):
        return "the supervisor talks to workers only through feedsup/ipc"
    if within(importer, ("feedsup.workers",)) and within(imported, ("feedsup.supervisor",)):
        return "workers talk to the supervisor only through feedsup/ipc"
    kind, other = WORKER_KINDS.get(importer), WORKER_KINDS.get(imported)
    if kind and other and kind != other:
        return "a worker kind does not import another's; shared pieces live in workers/runtime.py"
    if within(importer, ("feedsup.ipc",)) and within(imported, ("feedsup.supervisor", "feedsup.workers")):
        return "feedsup/ipc is below both sides"
    if within(importer, ("feedsup.workers", "feedsup.ipc", "feedsup.binance")) and within(imported, ("feedsup.config",)):
        return "a worker does not import the config loader (feedsup/config_model.py holds the data model)"
    if within(importer, ("feedsup.binance",)):
        if within(imported, ("feedsup.supervisor", "feedsup.workers")):
            return "feedsup/binance is below the workers"
        if within(imported, IO_MODULES):
            return "feedsup/binance does no I/O and reads no clock"
    return None


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path)
        for imported, line in imports_of(path):
            why = forbidden(importer, imported)
            if why:
                found.append(f"{path.relative_to(ROOT)}:{line}: {importer} imports {imported}: {why}")
    return found


def test_no_forbidden_import_in_feedsup():
    assert violations() == []


@pytest.mark.parametrize("path, source, expected", [
    ("supervisor/x.py", "from feedsup.workers import market", "through feedsup/ipc"),
    ("supervisor/x.py", "from feedsup.workers.runtime import EXIT", "through feedsup/ipc"),
    ("workers/x.py", "import feedsup.supervisor.policy", "through feedsup/ipc"),
    ("ipc/x.py", "from feedsup.supervisor import parent", "below both sides"),
    ("workers/depth.py", "from feedsup.workers.market import handle_other", "another's"),
    ("workers/account_spot.py", "from feedsup.workers import depth", "another's"),
    ("ipc/x.py", "from ..workers import runtime", "below both sides"),
    ("config.py", "from feedsup.sim import server", "simulator or the tooling"),
    ("workers/x.py", "from feedsup.tools.demo import main", "simulator or the tooling"),
    ("sim/x.py", "from feedsup.workers import market", "apart from the product"),
    ("workers/x.py", "from feedsup.config import load_config", "config loader"),
    ("ipc/x.py", "from feedsup.config import Stream", "config loader"),
    ("binance/x.py", "import socket", "no I/O"),
    ("binance/x.py", "from time import time", "no I/O"),
    ("binance/x.py", "import time", "no I/O"),
    ("binance/x.py", "import urllib.parse", "no I/O"),
    ("binance/x.py", "from http import client", "no I/O"),
    ("binance/x.py", "import threading", "no I/O"),
    ("binance/x.py", "import zmq", "no I/O"),
    ("binance/x.py", "from feedsup.workers import rest", "below the workers"),
    ("binance/x.py", "def f():\n    import subprocess\n", "no I/O"),
    ("workers/x.py", "from feedsup.binance import normalise\nfrom feedsup.ipc import frames", None),
    ("supervisor/x.py", "from feedsup.ipc.exits import EX_CONFIG", None),
    ("workers/account.py", "from feedsup.workers.account_spot import SpotSession", None),
    ("ipc/x.py", "from feedsup.config_model import Stream", None),
])
def test_the_check_catches_each_forbidden_edge(tmp_path, monkeypatch, path, source, expected):
    """The check itself, on a planted file (so the test above cannot pass by reading nothing)."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    target = tmp_path / "feedsup" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source + "\n")
    found = violations(tmp_path / "feedsup")
    if expected is None:
        assert found == []
    else:
        assert len(found) >= 1 and all(expected in line for line in found), found


def test_a_worker_process_loads_neither_the_config_loader_nor_the_supervisor():
    """Transitively, too: what ``python -m feedsup.workers`` imports (every worker kind)."""
    code = ("import sys\n"
            "from feedsup.workers import __main__ as shell\n"
            "import importlib\n"
            "for kind in [*shell.KINDS.values(), shell.DEFAULT_KIND]: importlib.import_module(kind)\n"
            "print(' '.join(m for m in sys.modules if m == 'feedsup.config' or m.startswith("
            "('feedsup.config.', 'feedsup.supervisor', 'feedsup.sim', 'feedsup.tools'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == []


def test_the_readme_table_matches_the_tree():
    """Every module of the product has its row in the README's "where things
    live" table, and every file the table names exists."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("Where things live"):readme.index("## The demo")]
    named: set[str] = set()
    for row in table.splitlines():
        if not row.startswith("| ") or row.startswith(("| ---", "| responsibility")):
            continue
        folder = ""
        for cell in row.split("|")[2].split("/ "):
            path = cell.strip().strip("`")
            if not path:
                continue
            if "/" not in path and folder:   # `a.py` / `b.py` beside a full path: same folder
                path = folder + path
            folder = path.rpartition("/")[0] + "/"
            named.add(path)
    missing = [p for p in sorted(named) if not (ROOT / p).exists()]
    assert missing == []
    modules = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py" and not within(module_name(p), SIM)}
    unlisted = sorted(m for m in modules if m not in named)
    assert unlisted == []
