"""The package's shape a maintainer can carry on: modules of one idea (a size limit), an import graph
without circles, and imports at the module's top (where the graph shows them) but for the heavy packages.

Both rules hold for new code at once. Modules written before the rules are listed below with their size (when
the rule came in on 2026-12-06, lowered as they shrank): they may shrink, never grow, and leave the list once they
are under the limit.
The same for the import circles that existed then.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_architecture import PKG, imported_modules, planted_package  # noqa: E402

#: A module holds one idea: at most this many lines.
MAX_LINES = 550
#: Modules over the limit when the rule came in, with their line counts then: they may not grow.
OVERSIZE: dict[str, int] = {
}
#: Strongly connected groups of modules (import circles) that existed when the rule came in.
KNOWN_CIRCLES: list[frozenset[str]] = []
#: The only packages a module may import inside a function, so that importing the module does not pay for them:
#: slow to import or starting a native runtime, or needed only to draw, to show progress or to run notebooks.
#: An ``ultrabones`` module counts as heavy when its own top imports reach one of these (``segmentation.finetune``
#: imports torch). Every other import sits at the top of its module, where the import graph shows it.
HEAVY = frozenset({
    "matplotlib", "mpl_toolkits", "seaborn",  # figures
    "torch", "torchvision", "pytorch_lightning", "lightning", "segmentation_models_pytorch",  # the network: seconds
    "open3d", "trimesh", "embreex",  # meshes, rendering, ray casting
    "dask", "distributed",  # the cluster
    "SimpleITK", "nrrd",  # sequence-file formats (convert, Slicer export)
    "papermill", "nbformat", "nbclient",  # running notebooks
    "skimage", "statsmodels",  # about 0.7 s and 1.5 s to import, for one function each
    "tqdm",  # progress bars
})


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


def _imports(path: Path, pkg: Path) -> tuple[list[tuple[int, list[str]]], list[tuple[int, list[str]]]]:
    """``(top, in_functions)`` imports of a source file: ``(line, [module or module.name it binds, ...])``, relative
    imports resolved; ``top`` runs when the module is imported (module and class bodies)."""
    parts = path.relative_to(pkg.parent).with_suffix("").parts
    top, inner = [], []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                else:
                    base = ".".join(list(parts[:-1])[: len(parts) - child.level]
                                    + ([child.module] if child.module else [])) if child.level else child.module
                    names = [f"{base}.{a.name}" for a in child.names]
                (inner if in_function else top).append((child.lineno, names))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return top, inner


def _module_of(name: str, mods) -> str:
    """The package module ``name`` (a module or a name in one) lies in; '' outside the package."""
    while name and name not in mods:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name


def heavy_modules(pkg: Path = PKG) -> set[str]:
    """The package's modules whose import (their top imports, followed through the package) loads a HEAVY package."""
    mods = module_files(pkg)
    reach = {}
    for name, f in mods.items():
        targets = [t for _, names in _imports(f, pkg)[0] for t in names]
        reach[name] = ({_module_of(t, mods) for t in targets} - {"", name},
                       any(t.split(".")[0] in HEAVY for t in targets))
    heavy = {n for n, (_, direct) in reach.items() if direct}
    grew = True
    while grew:
        new = {n for n, (deps, _) in reach.items() if n not in heavy and deps & heavy}
        heavy |= new
        grew = bool(new)
    return heavy


#: Modules that import inside functions on purpose: the command line, which imports a command's modules only when
#: that command runs, so that ``python -m ultrabones`` starts in 0.04 s rather than 1.3 s (make calls it for the
#: profile's files, the inputs' digest and every stage's stamp).
LAZY_ENTRY_POINTS = {"ultrabones.pipeline.cli", "ultrabones.__main__"}


def imports_in_functions(pkg: Path = PKG) -> list[str]:
    """Every import inside a function of something not heavy, as ``file:line imports module``."""
    mods, heavy = module_files(pkg), heavy_modules(pkg)
    bad = []
    for name, f in mods.items():
        if name in LAZY_ENTRY_POINTS:
            continue
        for line, names in _imports(f, pkg)[1]:
            light = [t for t in names if t.split(".")[0] not in HEAVY and _module_of(t, mods) not in heavy]
            if light:
                bad.append(f"{f.relative_to(pkg.parent)}:{line} imports {', '.join(light)}")
    return bad


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
    pkg = planted_package(tmp_path, {"__init__.py": "", "core/__init__.py": "",
                                     "core/a.py": "from ultrabones.core import b\n",
                                     "core/b.py": "def f():\n    from ultrabones.core.a import x\n",
                                     "core/c.py": "from ultrabones.core import a\n"})
    assert circles(pkg) == [frozenset({"ultrabones.core.a", "ultrabones.core.b"})]


def test_imports_sit_at_the_top_but_the_heavy_ones():
    found = imports_in_functions()
    assert not found, ("imports inside functions: move them to the module's top (or, for a package slow to import, "
                       "add it to HEAVY saying why)\n" + "\n".join(found))


def test_the_import_rule_finds_a_planted_import_in_a_function(tmp_path):
    pkg = planted_package(tmp_path, {
        "__init__.py": "", "core/__init__.py": "", "core/net.py": "import torch\n",
        "core/model.py": "from ultrabones.core import net\n",
        "core/a.py": "import json\n\n\ndef f():\n    import matplotlib.pyplot as plt\n    from tqdm import tqdm\n"
                     "    from ultrabones.core import model\n    from ultrabones.core.net import build\n\n\n"
                     "class C:\n    def g(self):\n        import os\n        from . import b\n        from .b import h, x\n",
        "core/b.py": "def h():\n    import yaml\n    from ultrabones.core.a import f, C\n"})
    assert heavy_modules(pkg) == {"ultrabones.core.net", "ultrabones.core.model"}
    assert imports_in_functions(pkg) == [
        "ultrabones/core/a.py:13 imports os",
        "ultrabones/core/a.py:14 imports ultrabones.core.b",
        "ultrabones/core/a.py:15 imports ultrabones.core.b.h, ultrabones.core.b.x",
        "ultrabones/core/b.py:2 imports yaml",
        "ultrabones/core/b.py:3 imports ultrabones.core.a.f, ultrabones.core.a.C",
    ]
