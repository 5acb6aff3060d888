"""No private names across modules (issue 25): a name that starts with one underscore is its module's own.

A module that needs another's helper gets it public (documented, tested), or the helper moves to a module both
may import. The check reads the source (``from m import _x``, and ``m._x`` where ``m`` is an imported module of
the package), so it needs no import of the package.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_module_graph import module_files  # noqa: E402


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(module: str, path: Path, modules: set[str]) -> set[tuple[str, str]]:
    """``(owner module, name)`` of every private name of another module of the package that ``path`` uses."""
    tree = ast.parse(path.read_text(), filename=str(path))
    alias, found = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ultrabones"):
            for a in node.names:
                if f"{node.module}.{a.name}" in modules:  # from ultrabones.core import atomic
                    alias[a.asname or a.name] = f"{node.module}.{a.name}"
                elif _private(a.name) and node.module != module:
                    found.add((node.module, a.name))
        elif isinstance(node, ast.Import):
            alias.update({a.asname: a.name for a in node.names if a.name in modules and a.asname})
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in alias
                and _private(node.attr) and alias[node.value.id] != module):
            found.add((alias[node.value.id], node.attr))
    return found


def test_no_private_name_crosses_a_module():
    files = module_files()
    uses = {f"{m}: {owner}.{name}" for m, f in files.items() for owner, name in private_uses(m, f, set(files))}
    assert not uses, "private names used from another module (make them public or move them):\n" + \
        "\n".join(sorted(uses))


def test_the_check_finds_both_forms(tmp_path):
    f = tmp_path / "b.py"
    f.write_text("from ultrabones.core import atomic\nfrom ultrabones.core.atomic import _x, y\n"
                 "import ultrabones.core.params as P\natomic._to_jsonable(1)\nP._profile_path\natomic.__name__\n")
    mods = {"ultrabones.core.atomic", "ultrabones.core.params", "ultrabones.labels.b"}
    assert private_uses("ultrabones.labels.b", f, mods) == {
        ("ultrabones.core.atomic", "_x"), ("ultrabones.core.atomic", "_to_jsonable"),
        ("ultrabones.core.params", "_profile_path")}
