"""The paper module: published numbers and the versioned criteria, defined once; seeds and their roles."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from ultrabones.core import paper
from ultrabones.pipeline import headlines

ROOT = Path(__file__).resolve().parents[1]
PAPER_PY = ROOT / "lib" / "ultrabones" / "core" / "paper.py"
#: The paper's text, beside the repository (``../shared/seeds``) or where ULTRABONES_SHARED points.
PAPER_TXT = Path(os.environ.get("ULTRABONES_SHARED", ROOT.parent / "shared")) / "seeds" / "ultrabones100k_paper.txt"


def test_tables_are_frozen():
    with pytest.raises(TypeError):
        paper.PUBLISHED["discard_rate"] = paper.Published(0.1, "fraction", "x")  # type: ignore[index]
    with pytest.raises(TypeError):
        paper.CRITERIA["discard_rate"] = paper.REPORTED  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        paper.CRITERIA["temporal_offset_error"].bound = 2.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        paper.PUBLISHED["discard_rate"].value = 0.0  # type: ignore[misc]
    # the shaped copies are fresh: changing one changes nothing in the module
    paper.rating_study()["mean_rating"]["initial"] = 0.0
    assert paper.rating_study()["mean_rating"]["initial"] == 1.45


def test_paper_module_reads_nothing():
    """paper.py is data: it imports only typing helpers, opens no file and names no metrics or truth."""
    tree = ast.parse(PAPER_PY.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "dataclasses", "types", "typing"}, imported
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not calls & {"open", "eval", "exec", "__import__"}
    assert "metrics" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def test_criteria_are_defined_in_paper_and_nowhere_else():
    """Every summary row's criterion is the object in paper.CRITERIA; the summary builds no criterion itself."""
    assert {r.id for r in headlines.ROWS} == set(paper.CRITERIA)
    assert len({r.id for r in headlines.ROWS}) == len(headlines.ROWS)
    for row in headlines.ROWS:
        assert row.criterion is paper.CRITERIA[row.id]
        assert row.published is None or row.published in paper.PUBLISHED
    for module in ("headlines.py", "summary.py"):
        src = (ROOT / "lib" / "ultrabones" / "pipeline" / module).read_text()
        assert "Criterion(" not in src, module
        for name in ("rule=", "tol=", "bound="):
            assert name not in src, f"{module} sets a criterion's {name}"


def test_every_criterion_has_a_basis_and_a_reason():
    ids = set(paper.CRITERIA)
    for rid, c in paper.CRITERIA.items():
        assert c.rule in paper.RULES and c.basis in paper.BASES, rid
        assert c.why, f"{rid}: no reasoning"
        if c.rule in ("reported", "setting"):
            assert c.basis == "none", rid
        else:
            assert c.basis in ("paper", "physical", "statistical"), rid
            assert c.why.startswith(c.basis + ":"), f"{rid}: the reasoning must say its basis first: {c.why}"
        if c.row is not None:
            assert c.row in ids and c.row != rid, rid
    published = {p.value for p in paper.PUBLISHED.values()}
    for rid, c in paper.CRITERIA.items():
        if c.basis == "paper" and c.bound is not None:
            assert c.bound in published, f"{rid}: a paper-based bound must be a published number"


def test_criteria_raise_on_malformed_rules():
    with pytest.raises(ValueError, match="needs bound"):
        paper.Criterion("below", basis="paper")
    with pytest.raises(ValueError, match="needs row"):
        paper.Criterion("above_row", basis="paper")
    with pytest.raises(ValueError, match="only 'reported' and 'setting'"):
        paper.Criterion("reported", basis="paper")
    with pytest.raises(ValueError, match="unknown rule"):
        paper.Criterion("abs", 0.1, basis="paper")


def test_how_obtained_is_one_of_three_and_settings_are_never_judged():
    assert headlines.HOW == ("truth-free", "measured against truth", "simulator setting")
    for row in headlines.ROWS:
        assert row.how in headlines.HOW + (headlines.RATINGS,), row.id
        is_setting = row.how == headlines.SIMULATOR_SETTING
        assert is_setting == (row.criterion.rule == "setting"), row.id  # a setting is never "reproduced"
    runs = [{}, {"03_rating_statistics": {"ratings_source": "ratings.csv"}}]
    for metrics in runs:
        table = headlines.summary_table(metrics)
        assert set(table["how obtained"]) <= set(headlines.HOW)
        assert (table.loc[table["how obtained"] == headlines.SIMULATOR_SETTING, "criterion met"] == "-").all()


def test_published_numbers_are_printed_in_the_paper():
    if not PAPER_TXT.is_file():
        pytest.skip("the paper's text is not beside the repository")
    text = PAPER_TXT.read_text()
    for name, pub in paper.PUBLISHED.items():
        if pub.source != paper.PAPER or name in ("pixel_spacing_mm", "gamma_mm", "max_correction_mm",
                                                  "alignment_error_bound_mm", "previous_localisation_error_mm"):
            continue  # another publication, the released code, or a parameter printed in words
        printed = {f"{pub.value:g}", f"{pub.value:.3f}", f"{pub.value:.2f}", f"{pub.value * 100:g}%"}
        assert any(p in text for p in printed), f"{name} = {pub.value} is not in the paper's text"


def _observed(table: pd.DataFrame) -> dict[str, list[float]]:
    """Source key -> observed values of a committed summary table (old or new column names): each seed's number
    where the table has several seeds (criteria are judged per seed), else the one value."""
    col = "value" if "value" in table.columns else "this run"
    per_seed = table["per seed"] if "per seed" in table.columns else [""] * len(table)
    out = {}
    for src, v, seeds in zip(table["source"], table[col], per_seed):
        vals = [float(x) for x in re.findall(r"[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?", str(seeds))] \
            if isinstance(seeds, str) and seeds.strip() else []
        m = re.match(r"\s*([-+0-9.eE]+)", str(v))
        if vals or m:
            out[src.replace(".json: ", ":")] = vals or [float(m.group(1))]
    return out


def hugs(c: paper.Criterion, observed: float, margin: float = 0.25) -> bool:
    """A bound that sits just past an observed value on its passing side (within ``margin`` of the bound)."""
    if c.rule == "below":
        return observed < c.bound and (c.bound - observed) <= margin * abs(c.bound)
    if c.rule == "above":
        return observed > c.bound and (observed - c.bound) <= margin * abs(c.bound)
    return False


def test_the_hug_check_catches_the_old_criteria():
    # the criteria this module replaced: `< 0.3` against an observed 0.241, `> 0.9` against 0.922
    assert hugs(paper.Criterion("below", 0.3, basis="physical", why="physical: x"), 0.241)
    assert hugs(paper.Criterion("above", 0.9, basis="statistical", why="statistical: x"), 0.922)
    assert not hugs(paper.Criterion("below", 1.0, basis="physical", why="physical: x"), 0.3)


@pytest.mark.parametrize("table_file", ["figures/summary_table.csv", "build/smoke/figures/summary_table.csv"])
def test_no_criterion_sits_just_past_an_observed_value(table_file):
    """No bound equals an observed value rounded up: none lies within 25% past a committed or smoke observation."""
    f = ROOT / table_file
    if not f.is_file():
        pytest.skip(f"{table_file} not produced yet")
    observed = _observed(pd.read_csv(f))
    for row in headlines.ROWS:
        c = row.criterion
        if row.source in observed and c.bound is not None:
            for value in observed[row.source]:
                assert not hugs(c, value), (row.id, c.bound, value)


# ----------------------------------------------------------------------------- criteria versions and seeds

#: The digest of every criterion (rule, bound, compared row, basis) of each criteria version. A change of any
#: criterion needs a new ``paper.CRITERIA_VERSION``, its digest here and a dated line in CHANGELOG.md saying
#: what had been seen before the change.
CRITERIA_DIGESTS = {
    1: "9949ca64016e061d0521a0e9b3d103ba6357f755ea56cd0250dd7af428411ee4",
    2: "5dbffef92ebe03dd0f240347362b2d8f9e8a45f9a5fe63cda1187530ab80d65d",
}


def criteria_digest(criteria=None) -> str:
    """SHA-256 of the criteria's rules, bounds, rows and bases, sorted by row id (the reasons are not hashed)."""
    import hashlib
    import json

    items = sorted((k, c.rule, c.bound, c.row, c.basis) for k, c in (criteria or paper.CRITERIA).items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def test_criteria_are_pinned_to_their_version():
    assert paper.CRITERIA_VERSION in CRITERIA_DIGESTS, (
        f"criteria version {paper.CRITERIA_VERSION} has no pinned digest: add it to CRITERIA_DIGESTS")
    assert criteria_digest() == CRITERIA_DIGESTS[paper.CRITERIA_VERSION], (
        "a criterion changed without a new paper.CRITERIA_VERSION: bump the version, pin its digest here and add a "
        "dated line 'criteria version N (YYYY-MM-DD): ...' to CHANGELOG.md saying what had been seen before")


def test_changing_one_criterion_changes_the_digest():
    """The digest test can fail: moving one bound gives another digest."""
    moved = dict(paper.CRITERIA)
    moved["temporal_offset_error"] = paper.Criterion("below", 2.0, basis="physical", why="physical: moved")
    assert criteria_digest(moved) != criteria_digest()


def test_every_criteria_version_has_a_dated_changelog_line():
    import re

    text = (ROOT / "CHANGELOG.md").read_text()
    for version in CRITERIA_DIGESTS:
        assert re.search(rf"criteria version {version} \(\d{{4}}-\d{{2}}-\d{{2}}\)", text), (
            f"CHANGELOG.md has no dated line 'criteria version {version} (YYYY-MM-DD): ...'")


def test_seed_roles_are_disjoint():
    design, val, sealed = map(set, (paper.DESIGN_SEEDS, paper.VALIDATION_SEEDS, paper.SEALED_SEEDS))
    assert not design & val and not design & sealed and not val & sealed
    assert 0 in design  # the profiles' own runs are design runs


def test_a_sealed_seed_is_refused_until_unsealed(monkeypatch):
    from ultrabones.core.errors import ParamsError
    from ultrabones.pipeline import runner

    sealed = paper.SEALED_SEEDS[0]
    monkeypatch.delenv(runner.UNSEAL_ENV, raising=False)
    with pytest.raises(ParamsError, match=rf"seed {sealed} is sealed .*make unseal"):
        runner.seeded_profile("smoke", seed=sealed)
    with pytest.raises(ParamsError, match="is sealed"):
        runner.seeded_profile("smoke", [f"seed={sealed}"])
    monkeypatch.setenv(runner.UNSEAL_ENV, "1")
    assert runner.seeded_profile("smoke", seed=sealed).values["seed"] == sealed
