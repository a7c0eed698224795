"""The package's shape, checked from its source alone (nothing is imported): neon/ holds layers in folders, not a
heap of modules; no module imports itself back through others (an import cycle, whether its imports sit at the
top of a module or inside a function); and no module name is used at two depths of the tree, so a name says
which module it is."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "neon"
MAX_TOP_LEVEL_MODULES = 6  # .py files directly under neon/ (__init__.py and __main__.py among them)


def modules_of(package: Path) -> dict[str, Path]:
    """Every module and package under `package` by dotted name (a package by its __init__.py)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that module `name` imports, anywhere in its source (at the top, inside functions,
    under `if TYPE_CHECKING`). A relative import is resolved against the module's package; `from pkg import x`
    is an import of the module `pkg.x` where there is one, else of `pkg`; an import of a name that is no
    module counts for the longest module it names."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]

    def known(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    edges: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            edges.update(known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                full = f"{source}.{alias.name}"
                edges.add(full if full in modules else known(source))
    edges.discard(None)
    edges.discard(name)
    return edges  # type: ignore[return-value]


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports."""
    modules = modules_of(package)
    return {name: imported(name, path, modules) for name, path in modules.items()}


def knots(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan's strongly connected
    components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(root: str) -> None:  # iterative: no recursion limit for deep chains
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, successors = work[-1]
            for w in successors:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    group = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        group.add(w)
                        if w == v:
                            break
                    if len(group) > 1:
                        groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import cycle (a → … → a, as a list of modules) per knot: the shortest way round from its first
    module."""
    found = []
    for group in knots(graph):
        start = min(group)
        paths = {start: [start]}
        frontier = [start]
        while frontier:  # breadth first inside the group: the shortest way back to `start`
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & group):
                    if w == start:
                        found.append(paths[v] + [start])
                        nxt = []
                        break
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                else:
                    continue
                break
            frontier = nxt
    return found


def names_at_two_depths(package: Path) -> dict[str, list[str]]:
    """Module and package names used at more than one depth of the tree (neon/report.py and
    neon/tasks/report.py; neon/stages/ and neon/tasks/stages.py), or as both a module and a package in one
    folder, each with where; names at one depth in different packages (families/edm/module.py and
    families/var/module.py) are fine."""
    where: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for path in sorted(package.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(package)
        if path.is_dir() and (path / "__init__.py").is_file():
            where[path.name].append((len(rel.parts), f"neon/{rel.as_posix()}/"))
        elif path.suffix == ".py" and path.stem not in ("__init__", "__main__"):
            where[path.stem].append((len(rel.parts), f"neon/{rel.as_posix()}"))
    clashes = {}
    for name, places in where.items():
        depths = {depth for depth, _ in places}
        folders = [str(Path(p.rstrip("/")).parent) for _, p in places]
        if len(depths) > 1 or len(set(folders)) < len(folders):
            clashes[name] = sorted(p for _, p in places)
    return clashes


def test_no_import_cycle():
    graph = import_graph(PACKAGE)
    found = [(" → ".join(cycle), ", ".join(sorted(knot))) for cycle, knot in zip(cycles(graph), knots(graph), strict=True)]
    assert not found, "import cycles in neon/ (each module imports the next, the last the first):\n" + "\n".join(
        f"{cycle}\n  (all the modules that import each other there: {knot})" for cycle, knot in found)


def test_few_modules_directly_under_neon():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} .py files directly under neon/ (at most " \
        f"{MAX_TOP_LEVEL_MODULES}): put them into the layer they belong to: {', '.join(top)}"


def test_no_module_name_at_two_depths():
    clashes = names_at_two_depths(PACKAGE)
    assert not clashes, "module names used at two depths of neon/ (rename one of each):\n" + "\n".join(
        f"{name}: {', '.join(places)}" for name, places in sorted(clashes.items()))


def test_the_checks_catch_what_they_are_for(tmp_path: Path):
    """The graph sees imports inside functions, relative imports and `from package import module`, and the
    checks fail on a cycle through them and on a name at two depths."""
    pkg = tmp_path / "neon"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("VALUE = 1\n")
    (pkg / "top.py").write_text("from neon.low import VALUE, mid\n")  # a name of a package, and a module
    (pkg / "low" / "mid.py").write_text("import neon.low.base\nfrom .base import f\n")
    (pkg / "low" / "base.py").write_text("def f():\n    return 1\n")
    (pkg / "low" / "other.py").write_text("")
    graph = import_graph(pkg)
    assert graph["neon.top"] == {"neon.low", "neon.low.mid"}
    assert graph["neon.low.mid"] == {"neon.low.base"}
    assert cycles(graph) == [] and names_at_two_depths(pkg) == {}

    # relative, from a package, inside a function: neon.low.base → neon.top → neon.low.mid → neon.low.base
    (pkg / "low" / "base.py").write_text("def f():\n    from .. import top\n    return top\n")
    assert cycles(import_graph(pkg)) == [["neon.low.base", "neon.top", "neon.low.mid", "neon.low.base"]]
    (pkg / "low" / "top.py").write_text("")  # `top` at depths 1 and 2
    (pkg / "other").mkdir()
    (pkg / "other" / "__init__.py").write_text("")  # a package `other` at depth 1, a module other.py at 2
    assert names_at_two_depths(pkg) == {"top": ["neon/low/top.py", "neon/top.py"],
                                        "other": ["neon/low/other.py", "neon/other/"]}
