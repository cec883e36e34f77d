"""The package map in docs/packages.md is true: every import of every module under sensor/ is
one the map allows, there is no import cycle (lazy imports included), platform-neutral modules
never import their ``*_windows`` siblings, and few modules sit loose at the top."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "docs" / "packages.md"
MAX_LOOSE = 6
STAGES = ("sensor.sources", "sensor.enrich", "sensor.detect", "sensor.deliver", "sensor.testing",
          "sensor.events")


def modules(pkg_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package folder."""
    out = {}
    base = pkg_dir.parent
    for f in sorted(pkg_dir.rglob("*.py")):
        name = ".".join(f.relative_to(base).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules ``name`` imports anywhere in its file (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base[: len(base) - (node.level - 1)]
                mod = ".".join(parts + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    deps = set()
    for m in found:
        while m and m not in known:
            m = m.rpartition(".")[0]
        if m and m != name:
            deps.add(m)
    return deps


def unit(module: str, units: set[str]) -> str | None:
    """The map row a module belongs to: the longest listed package that contains it."""
    best = None
    for u in units:
        inside = module == u or ("." in u and module.startswith(u + "."))  # the root: itself only
        if inside and (best is None or len(u) > len(best)):
            best = u
    return best


def read_map(text: str) -> dict[str, set[str]]:
    """package -> the packages it may import, from the table's rows."""
    rows: dict[str, set[str]] = {}
    in_table = False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[-1] == "may import":
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        if not in_table or len(cells) != 3 or not cells[0].startswith("`sensor"):
            continue
        allowed = {"sensor." + a for a in re.findall(r"`([\w.]+)`", cells[2])}
        for pkg in re.findall(r"`(sensor[\w.]*)`", cells[0]):
            rows[pkg] = allowed
    return rows


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def problems(pkg_dir: Path, table: dict[str, set[str]]) -> list[str]:
    """Everything in the package that breaks the map's rules."""
    mods = modules(pkg_dir)
    root = pkg_dir.name
    out = []
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = imports(name, path, mods)
        # a package's __init__ re-exporting its children and a module naming its own package
        # (for ``__version__``) are not design cycles
        graph[name] = {d for d in deps
                       if not (path.name == "__init__.py" and d.startswith(name + "."))
                       and not (name.startswith(d + ".") and mods[d].name == "__init__.py")}
        u = unit(name, set(table))
        if u is None:
            out.append(f"{name}: in no row of the package map")
            continue
        for d in sorted(deps):
            du = unit(d, set(table))
            if du in (u, root) or du in table[u]:
                continue
            out.append(f"{name} imports {d}: {u} may not import {du}")
        if u in STAGES and not name.endswith("_windows"):
            for d in deps:
                if d.endswith("_windows"):
                    out.append(f"{name} imports {d}: the daemon chooses the platform, not a stage")
        sibling = name + "_windows"
        if sibling in deps:
            out.append(f"{name} imports its Windows sibling {sibling}")
    out += [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    loose = sorted(n for n, p in mods.items() if n.count(".") == 1 and p.name != "__init__.py")
    if len(loose) > MAX_LOOSE:
        out.append(f"{len(loose)} modules loose at the top of {root}/ (at most {MAX_LOOSE}): {loose}")
    return out


def test_the_package_map_holds():
    table = read_map(MAP.read_text(encoding="utf-8"))
    assert {"sensor", "sensor.events", "sensor.sources", "sensor.enrich", "sensor.detect",
            "sensor.deliver", "sensor.daemon", "sensor.commands"} <= set(table)
    assert problems(ROOT / "sensor", table) == []


def test_every_mapped_package_exists():
    table = read_map(MAP.read_text(encoding="utf-8"))
    mods = modules(ROOT / "sensor")
    assert [p for p in table if p not in mods] == []


@pytest.fixture
def toy(tmp_path):
    """A small package shaped like the sensor, to show the checker catches each kind of break."""
    pkg = tmp_path / "sensor"
    files = {
        "__init__.py": "", "events.py": "", "cli.py": "from .commands import run\n",
        "commands/__init__.py": "", "commands/run.py": "from ..daemon import pipeline\n",
        "daemon/__init__.py": "", "daemon/pipeline.py": "from ..detect import ir\n",
        "detect/__init__.py": "", "detect/ir.py": "from ..events import x\n",
        "sources/__init__.py": "", "sources/etw.py": "",
        "sources/etw_windows.py": "from .etw import y\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    table = {"sensor": set(), "sensor.events": set(), "sensor.cli": {"sensor.commands"},
             "sensor.commands": {"sensor.daemon", "sensor.detect", "sensor.events"},
             "sensor.daemon": {"sensor.detect", "sensor.events", "sensor.sources"},
             "sensor.detect": {"sensor.events"}, "sensor.sources": {"sensor.events"}}
    return pkg, table


def test_checker_accepts_a_clean_toy(toy):
    pkg, table = toy
    assert problems(pkg, table) == []


@pytest.mark.parametrize("rel,text,expect", [
    ("detect/ir.py", "def f():\n    from ..daemon import pipeline\n", "sensor.detect may not import sensor.daemon"),
    ("detect/ir.py", "def f():\n    from ..daemon import pipeline\n", "import cycle"),
    ("sources/etw.py", "def f():\n    from . import etw_windows\n", "imports its Windows sibling"),
    ("detect/helpers.py", "from ..sources import etw_windows\n", "the daemon chooses the platform"),
    ("x.py", "", "in no row of the package map"),
])
def test_checker_catches(toy, rel, text, expect):
    pkg, table = toy
    (pkg / rel).write_text(text)
    if rel == "detect/helpers.py":
        table["sensor.detect"].add("sensor.sources")
    assert any(expect in p for p in problems(pkg, table)), problems(pkg, table)


def test_checker_counts_loose_modules(toy):
    pkg, table = toy
    for i in range(MAX_LOOSE):
        (pkg / f"loose{i}.py").write_text("")
        table[f"sensor.loose{i}"] = set()
    assert any("modules loose at the top" in p for p in problems(pkg, table))
