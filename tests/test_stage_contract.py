"""One stage contract over the eight stages (docs/architecture.md, "The stage contract").

Every stage module (``schema.STAGE_MODULES``) exposes the same names:

- ``Params``: its section's typed parameters, a :class:`~ultrabones.core.params.SectionParams` of that section;
- ``Result``: what ``run`` returns;
- ``run(paths, params, *, specimens=None, ...) -> Result``: the stage's work, skip and mode decisions included
  (every further argument keyword-only with a default);
- ``metrics(result) -> dict``, ``check(result)`` (raises with a message, returns None), and
  ``figures(result) -> dict[name, Figure]``.

Every notebook follows the same skeleton over its stage module: parameters, open (``Params.from_section``),
``run``, the twin's measurement, ``figures``, ``check``, ``metrics`` and the write.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
from pathlib import Path

import pytest

from ultrabones.core import schema
from ultrabones.core.params import SectionParams

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(schema.STAGE_MODULES)


def test_every_notebook_has_a_stage_module():
    assert sorted(schema.NOTEBOOKS) == STAGES
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) == STAGES


def _rest_have_defaults(sig: inspect.Signature, skip: int) -> list[str]:
    return [n for n, p in list(sig.parameters.items())[skip:]
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


@pytest.mark.parametrize("stem", STAGES)
def test_stage_module_exposes_the_contract(stem):
    mod = importlib.import_module(schema.STAGE_MODULES[stem])
    missing = [n for n in ("Params", "Result", "run", "metrics", "check", "figures") if not hasattr(mod, n)]
    assert not missing, f"{mod.__name__} lacks {missing}"

    assert dataclasses.is_dataclass(mod.Params) and issubclass(mod.Params, SectionParams), \
        f"{mod.__name__}.Params is not a SectionParams"
    assert mod.Params.SECTION == schema.NOTEBOOKS[stem]
    assert inspect.isclass(mod.Result)

    run = inspect.signature(mod.run)
    names = list(run.parameters)
    assert names[:2] == ["paths", "params"], f"{mod.__name__}.run{run}: starts with (paths, params)"
    spec = run.parameters.get("specimens")
    assert spec is not None and spec.kind is spec.KEYWORD_ONLY and spec.default is None, \
        f"{mod.__name__}.run{run}: keyword-only specimens=None"
    assert all(p.kind is p.KEYWORD_ONLY for p in list(run.parameters.values())[2:]), \
        f"{mod.__name__}.run{run}: every argument after (paths, params) is keyword-only"
    assert not _rest_have_defaults(run, 2), f"{mod.__name__}.run{run}: options need defaults"

    for fn in ("metrics", "check", "figures"):
        sig = inspect.signature(getattr(mod, fn))
        assert list(sig.parameters)[:1] == ["result"], f"{mod.__name__}.{fn}{sig}: takes the result first"
        assert not _rest_have_defaults(sig, 1), f"{mod.__name__}.{fn}{sig}: options need defaults"


def _notebook_code(stem: str) -> str:
    nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def _stage_alias(tree: ast.Module, module: str) -> str | None:
    pkg, name = module.rsplit(".", 1)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == pkg:
            for a in node.names:
                if a.name == name:
                    return a.asname or a.name
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == module and a.asname:
                    return a.asname
    return None


def skeleton_order(code: str, module: str) -> list[str]:
    """The contract's calls on the stage module, in the order a notebook's code first makes them."""
    tree = ast.parse(code)
    alias = _stage_alias(tree, module)
    assert alias, f"the notebook does not import {module}"
    first: dict[str, tuple[int, int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(f := node.func, ast.Attribute):
            v = f.value
            if isinstance(v, ast.Name) and v.id == alias and f.attr in ("run", "figures", "check", "metrics"):
                key = f.attr
            elif (isinstance(v, ast.Attribute) and v.attr == "Params" and isinstance(v.value, ast.Name)
                  and v.value.id == alias and f.attr == "from_section"):
                key = "open"
            elif isinstance(v, ast.Name) and f.attr == "write_metrics":
                key = "write"
            else:
                continue
            pos = (node.lineno, node.col_offset)
            first[key] = min(first.get(key, pos), pos)
    return sorted(first, key=first.get)


SKELETON = ["open", "run", "figures", "check", "metrics", "write"]


@pytest.mark.parametrize("stem", STAGES)
def test_notebook_follows_the_skeleton(stem):
    order = skeleton_order(_notebook_code(stem), schema.STAGE_MODULES[stem])
    assert order == SKELETON, f"notebooks/{stem}.ipynb calls {order}, the skeleton is {SKELETON}"


def test_skeleton_check_can_fail():
    code = ("from ultrabones.labels import batch as S\nP = S.Params.from_section({})\nr = S.run(paths, P)\n"
            "S.check(r)\nS.figures(r)\nm = S.metrics(r)\nstage.write_metrics(paths, 'x', m)\n")
    assert skeleton_order(code, "ultrabones.labels.batch") == ["open", "run", "check", "figures", "metrics", "write"]
