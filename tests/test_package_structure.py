"""The shape of the package: a light ``import metareid`` and no import circle anywhere."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "metareid"
HEAVY = ("metareid.engine", "metareid.distributed", "metareid.inference", "metareid.viz")
# The synthetic benchmark's renderer and cache, and its dataset reader.
SYNTHETIC = ("metareid.data.synthetic", "metareid.data.datasets.synthetic_benchmark")


def test_import_metareid_loads_the_building_blocks_only():
    # One interpreter (importing torch twice costs seconds): the modules after
    # ``import metareid``, a separator, then whether a heavier name resolves on first use.
    code = (
        "import sys, metareid\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('metareid')))\n"
        "print('--')\n"
        "metareid.FeatureExtractor\n"
        "print('metareid.inference' in sys.modules)\n"
    )
    printed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    separator = printed.index("--")
    out, lazy = printed[:separator], printed[separator + 1 :]
    heavy = [m for m in out if m.startswith(HEAVY + SYNTHETIC)]
    assert not heavy, f"import metareid loads {heavy}"
    for block in ("metareid.layers.metabn", "metareid.memory.bank", "metareid.meta.learner"):
        assert block in out
    assert lazy == ["True"]  # the heavier names still resolve, on first use


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every metareid module ``name`` imports, anywhere in the file (functions and
    ``TYPE_CHECKING`` blocks included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` imports the module; ``from mod import name`` the module
            subs = [f"{base}.{a.name}" for a in node.names]
            targets = [t for t in subs if t in modules] or [base]
            if len(targets) < len(subs):  # names that are not modules come from ``base``
                targets.append(base)
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_in_the_package():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["metareid.engine.trainer"] >= {"metareid.engine.callbacks"}  # sees imports
    assert _cycles(graph) == []


def test_the_circle_detector_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def private_imports(package: Path) -> list[str]:
    """Private names imported from another module, private modules from another package.

    ``from metareid.a.x import _name`` is allowed in ``metareid.a.x`` only;
    ``metareid.a._mod`` (a private module) anywhere in ``metareid.a``.
    """
    found = []
    for path in sorted(package.rglob("*.py")):
        importer = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
                "metareid"
            ):
                continue
            for alias in node.names:
                parts = f"{node.module}.{alias.name}".split(".")
                for i, part in enumerate(parts):
                    if part.startswith("_") and not part.startswith("__"):
                        owner = ".".join(parts[:i])
                        owner_dir = package.parent.joinpath(*parts[:i])
                        if i == len(parts) - 1 and not owner_dir.is_dir():
                            allowed = importer == owner  # a private name of module `owner`
                        else:
                            allowed = owner == "metareid" or importer.startswith(owner + ".")
                        if not allowed:
                            found.append(f"{importer}:{node.lineno} {'.'.join(parts)}")
                        break
    return found


def test_no_private_name_is_imported_across_modules():
    assert private_imports(PACKAGE) == []


def test_the_private_import_detector_sees_one(tmp_path):
    pkg = tmp_path / "metareid"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    (pkg / "a" / "x.py").write_text("def _hidden():\n    pass\n")
    (pkg / "b" / "y.py").write_text("from metareid.a.x import _hidden\n")
    (pkg / "a" / "z.py").write_text("from metareid.a.x import _hidden\n")
    (pkg / "a" / "_private.py").write_text("def shared():\n    pass\n")
    (pkg / "a" / "w.py").write_text("from metareid.a._private import shared\n")
    (pkg / "b" / "v.py").write_text("from metareid.a._private import shared\n")
    assert private_imports(pkg) == [
        "metareid.a.z:1 metareid.a.x._hidden",
        "metareid.b.v:1 metareid.a._private.shared",
        "metareid.b.y:1 metareid.a.x._hidden",
    ]
