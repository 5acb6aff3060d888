"""The package's shape a maintainer can carry on: modules of one idea (a size limit), and an import graph
without circles.

Both rules hold for new code at once. Modules written before the rules are listed below with their size (when
the rule came in on 2026-12-06, lowered as they shrank): they may shrink, never grow, and leave the list once they
are under the limit.
The same for the import circles that existed then.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_architecture import PKG, imported_modules  # noqa: E402

#: A module holds one idea: at most this many lines.
MAX_LINES = 550
#: Modules over the limit when the rule came in, with their line counts then: they may not grow.
OVERSIZE: dict[str, int] = {
}
#: Strongly connected groups of modules (import circles) that existed when the rule came in.
KNOWN_CIRCLES: list[frozenset[str]] = []


def module_files(pkg: Path = PKG) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    return {".".join(f.relative_to(pkg.parent).with_suffix("").parts).removesuffix(".__init__"): f
            for f in sorted(pkg.rglob("*.py"))}


def module_edges(pkg: Path = PKG) -> set[tuple[str, str]]:
    """``(importer, imported)`` between modules of the package (imports inside functions count too)."""
    mods = module_files(pkg)
    edges = set()
    for name, f in mods.items():
        for _, mod in imported_modules(f, pkg):
            target = mod
            while target and target not in mods:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name and target != pkg.name and not name.startswith(target + "."):
                edges.add((name, target))
    return edges


def circles(pkg: Path = PKG) -> list[frozenset[str]]:
    """The groups of modules that import each other, directly or around a circle."""
    names = sorted(module_files(pkg))
    idx = {n: i for i, n in enumerate(names)}
    edges = module_edges(pkg)
    rows = [idx[a] for a, _ in edges]
    cols = [idx[b] for _, b in edges]
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    _, labels = connected_components(graph, directed=True, connection="strong")
    groups = [frozenset(names[i] for i in np.flatnonzero(labels == k)) for k in np.unique(labels)]
    return [g for g in groups if len(g) > 1]


def test_no_module_grows_past_the_limit():
    sizes = {name: len(f.read_text().splitlines()) for name, f in module_files().items()}
    grown = [f"{n}: {sizes[n]} lines (limit {MAX_LINES}; at most {OVERSIZE.get(n)} while it is listed)"
             for n in sizes if sizes[n] > max(MAX_LINES, OVERSIZE.get(n, 0))]
    assert not grown, "modules past the size limit: split them along their section banners\n" + "\n".join(grown)
    done = [n for n in OVERSIZE if n in sizes and sizes[n] <= MAX_LINES]
    assert not done, f"now under {MAX_LINES} lines: remove them from OVERSIZE: {done}"


def test_no_new_import_circle():
    found = circles()
    new = [sorted(g) for g in found if g not in KNOWN_CIRCLES]
    assert not new, f"import circles: {new} (move what both need into a module below them)"
    gone = [sorted(g) for g in KNOWN_CIRCLES if g not in found]
    assert not gone, f"circles that no longer exist: remove them from KNOWN_CIRCLES: {gone}"


def test_the_circle_finder_finds_a_planted_circle(tmp_path):
    pkg = tmp_path / "ultrabones"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from ultrabones.core import b\n")
    (pkg / "core" / "b.py").write_text("def f():\n    from ultrabones.core.a import x\n")
    (pkg / "core" / "c.py").write_text("from ultrabones.core import a\n")
    assert circles(pkg) == [frozenset({"ultrabones.core.a", "ultrabones.core.b"})]
