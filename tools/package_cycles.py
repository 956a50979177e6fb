"""Package-level imports of a checkout: which top-level package imports which, the cycles among them, and
how many first-party imports hide inside functions.

    python tools/package_cycles.py [CHECKOUT]        # default: this checkout

Every import counts, at module top or inside a function, so a cycle that a deferred import hides is still
found. To compare with an older revision: `git worktree add /tmp/before REV && python tools/package_cycles.py
/tmp/before`. The layer contract itself (`lint-imports`, in `make test`) is stricter: it also fixes the order.
"""

import ast
import sys
from itertools import combinations
from pathlib import Path

PACKAGES = ("cli", "flows", "tasks", "gates", "data_contracts", "demo_world", "continual_opd")


def package_edges(root: Path) -> dict[tuple[str, str], int]:
    """(importer package, imported package) -> number of import statements, over every .py file of the packages."""
    edges: dict[tuple[str, str], int] = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py") if (root / package).is_dir() else ():
            for node in ast.walk(ast.parse(path.read_text())):
                for name in _imported(node):
                    target = name.split(".")[0]
                    if target in PACKAGES and target != package:
                        edges[(package, target)] = edges.get((package, target), 0) + 1
    return edges


def deferred_first_party(root: Path) -> int:
    """First-party imports written inside a function body."""
    count = 0
    for package in PACKAGES:
        for path in (root / package).rglob("*.py") if (root / package).is_dir() else ():
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    count += sum(any(n.split(".")[0] in PACKAGES for n in _imported(sub)) for sub in ast.walk(node))
    return count


def _imported(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


def cycles(edges) -> list[tuple[str, str]]:
    """Pairs of packages that reach each other (directly or through others)."""
    reach = {p: {b for (a, b) in edges if a == p} for p in PACKAGES}
    changed = True
    while changed:
        changed = False
        for p in PACKAGES:
            more = set().union(*(reach[q] for q in reach[p])) - reach[p]
            if more:
                reach[p] |= more
                changed = True
    return [(a, b) for a, b in combinations(PACKAGES, 2) if b in reach[a] and a in reach[b]]


def main(argv=None) -> int:
    root = Path((argv or sys.argv[1:] or ["."])[0]).resolve()
    edges = package_edges(root)
    print(f"package imports in {root} (importer -> imported: statements)")
    for (a, b), n in sorted(edges.items()):
        print(f"  {a:15s} -> {b:15s} {n}")
    found = cycles(edges)
    print(f"package pairs in an import cycle: {len(found)}")
    for a, b in found:
        print(f"  {a} <-> {b}")
    print(f"first-party imports inside functions: {deferred_first_party(root)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
