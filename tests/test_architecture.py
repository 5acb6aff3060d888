"""The package's layering, checked on its source: the method never imports the twin.

Layers, bottom up (a module may import its own layer and the ones below it):

    core                              geometry, dataset I/O, params, paths, atomic writes, cache, errors
    calibration                       the method, one package per stage of the paper, in the order the
    labels                            stages run: a stage's package may use an earlier stage's (the rating
    rating                            draws labels as notebook 02 does; the evaluation runs the model),
    segmentation                      never a later one's
    evaluation
    reconstruction
    twin                              the simulator, the simulated people, the only reader of truth/
    pipeline                          runner, stage bookkeeping, CLI, summary

The rule that matters most: no method package (nor core) imports ``ultrabones.twin``, so no decision of the
method can read the twin's truth. The twin may import the method (it measures what the method wrote).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lib" / "ultrabones"
METHOD = ("calibration", "labels", "rating", "segmentation", "evaluation", "reconstruction")
LAYER = {"core": 0, **{m: 1 + i for i, m in enumerate(METHOD)}, "twin": 1 + len(METHOD), "pipeline": 2 + len(METHOD)}


def imported_modules(path: Path, pkg: Path = PKG) -> list[tuple[int, str]]:
    """``(line, dotted module)`` of every import in a source file of ``pkg``, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parts = path.relative_to(pkg.parent).with_suffix("").parts  # ("ultrabones", "labels", "batch")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[:-1])[: len(parts) - node.level]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]  # from ultrabones import twin
    return out


def violations(pkg: Path = PKG) -> list[str]:
    """Every import that breaks the layering, as ``file:line imports module``."""
    bad = []
    for f in sorted(pkg.rglob("*.py")):
        rel = f.relative_to(pkg).parts
        if len(rel) < 2 or rel[0] not in LAYER:
            continue  # ultrabones/__init__.py, __main__.py
        mine = LAYER[rel[0]]
        for line, mod in imported_modules(f, pkg):
            bits = mod.split(".")
            if bits[0] != "ultrabones" or len(bits) < 2 or bits[1] not in LAYER:
                continue
            theirs = LAYER[bits[1]]
            if bits[1] == "twin" and rel[0] != "twin":
                bad.append(f"{f.relative_to(pkg.parent)}:{line} imports {mod} (the method never imports the twin)")
            elif theirs > mine:
                bad.append(f"{f.relative_to(pkg.parent)}:{line} imports {mod} (an upper layer)")
    return sorted(set(bad))


def planted_package(root: Path, files: dict[str, str]) -> Path:
    """A throw-away ``ultrabones`` package under ``root`` holding ``files`` (path in the package -> source),
    for the tests that plant a violation; its folders are made as needed. Returns the package folder."""
    pkg = root / "ultrabones"
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


def test_no_method_module_imports_the_twin_or_an_upper_layer():
    assert violations() == []


@pytest.mark.parametrize("source", [
    "from ultrabones.twin import measure\n",
    "import ultrabones.twin.simulate\n",
    "from ultrabones import twin\n",
    "from ..twin.measure import truth_root\n",
    "def f():\n    from ultrabones.twin.measure import calibration\n",
])
def test_the_rule_catches_a_method_module_importing_the_twin(tmp_path, source):
    pkg = planted_package(tmp_path, {"labels/__init__.py": "", "twin/__init__.py": "", "twin/measure.py": "",
                                     "labels/bad.py": "import numpy as np\n" + source})
    found = violations(pkg)
    assert len(found) >= 1 and all(v.startswith("ultrabones/labels/bad.py:") and "imports ultrabones.twin" in v for v in found), found


def test_the_rule_allows_the_twin_to_import_the_method(tmp_path):
    pkg = planted_package(tmp_path, {"twin/measure.py": "from ultrabones.labels import frame\n"})
    (pkg / "labels").mkdir()
    assert violations(pkg) == []


def test_the_method_packages_keep_the_order_of_the_stages(tmp_path):
    """An earlier stage's package never imports a later one's (segmentation -> evaluation was such an import)."""
    assert [m for m in METHOD] == sorted(METHOD, key=LAYER.get)
    pkg = planted_package(tmp_path, {"evaluation/benchmark.py": "from ultrabones.segmentation import inference\n"})
    (pkg / "segmentation").mkdir()
    assert violations(pkg) == []  # downward: allowed
    (pkg / "segmentation" / "transfer.py").write_text("def f():\n    from ultrabones.evaluation import metrics\n")
    assert violations(pkg) == ["ultrabones/segmentation/transfer.py:2 imports ultrabones.evaluation (an upper layer)",
                               "ultrabones/segmentation/transfer.py:2 imports ultrabones.evaluation.metrics "
                               "(an upper layer)"]


def test_the_method_does_not_read_the_truth_folder():
    """No method or core module names the twin's ``truth`` folder or a ``truth_root``/``truth_dir``."""
    bad = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG).parts
        if len(rel) < 2 or rel[0] not in METHOD + ("core",):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("truth", "truth_root", "truth_dir"):
                bad.append(f"{f.relative_to(PKG.parent)}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Constant) and node.value == "truth":
                bad.append(f"{f.relative_to(PKG.parent)}:{node.lineno} '{node.value}'")
    assert bad == []


def test_docs_architecture_lists_exactly_the_package_modules():
    """The layout drawn in docs/architecture.md names every module of the package and no other file."""
    import re

    doc = (PKG.parents[1] / "docs" / "architecture.md").read_text()
    block = doc.split("## Layout", 1)[1].split("```", 2)[1]
    drawn, package = set(), None
    for line in block.splitlines():
        m = re.match(r"^  (\w+)/(\s|$)", line)
        if m:
            package = m.group(1)
            continue
        m = re.match(r"^    (\w+\.py)\s", line)
        if m and package:
            drawn.add(f"{package}/{m.group(1)}")
    actual = {str(f.relative_to(PKG)) for f in PKG.rglob("*.py")
              if f.parent != PKG and f.name != "__init__.py"}
    assert drawn == actual, {"not drawn": sorted(actual - drawn), "drawn but absent": sorted(drawn - actual)}
