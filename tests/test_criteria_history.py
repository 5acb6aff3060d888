"""The criteria history: every entry names today's row, a valid first form and git references that hold."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

from ultrabones.core import paper
from ultrabones.core.criteria_history import CHANGED_SINCE_VERSION_1, HISTORY, CriterionChange

ROOT = Path(__file__).resolve().parents[1]
#: ``path@commit`` or a backtick quotation, in the order they appear in a text.
TOKEN = re.compile(r"(?P<ref>[\w./-]+\.(?:py|md|csv|ipynb))@(?P<commit>[0-9a-f]{7,40})|`(?P<quote>[^`]+)`")
#: The summary table's row in a quotation: quantity | paper | this run | twin truth | criterion | reproduced |.
TABLE_ROW = re.compile(r"^\| (?P<q>[^|]+) \| (?P<paper>[^|]+) \| (?P<value>[^|]+) \| [^|]+ \| (?P<crit>[^|]+) \| "
                       r"(?P<met>yes|no) \|$")


def _criterion(c: CriterionChange) -> paper.Criterion:
    basis = "none" if c.original_rule in ("reported", "setting") else "paper"
    return paper.Criterion(c.original_rule, c.original_bound, c.original_row, basis=basis)


def test_entries_are_frozen_and_name_todays_rows():
    assert len(HISTORY) == 21
    with pytest.raises(dataclasses.FrozenInstanceError):
        HISTORY[0].original_bound = 9.0  # type: ignore[misc]
    for c in HISTORY:
        assert c.row in paper.CRITERIA, c.row
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", c.changed_date), c.changed_date
        assert re.fullmatch(r"[0-9a-f]{7}", c.first_commit) and re.fullmatch(r"[0-9a-f]{7}", c.changed_commit)
        assert c.first_commit != c.changed_commit
        assert c.seen.count(". ") == 0 and c.seen.endswith("."), f"{c.row}: seen is not one sentence"


def test_original_forms_are_criteria_of_todays_rules():
    for c in HISTORY:
        _criterion(c)  # raises on an unknown rule or a bound/row that does not fit the rule


def test_summary_changes_end_at_todays_criterion():
    """The change of a summary criterion (9d56252) names today's criterion in its words and code."""
    changed = [c for c in HISTORY if c.changed_commit == "9d56252"]
    assert len(changed) == 17
    for c in changed:
        today = paper.CRITERIA[c.row]
        if c.row in CHANGED_SINCE_VERSION_1:  # changed again later, with a dated CHANGELOG line naming the row
            version = CHANGED_SINCE_VERSION_1[c.row]
            line = next(x for x in (ROOT / "CHANGELOG.md").read_text().split("\n- ")
                        if x.startswith(f"criteria version {version} ("))
            assert f"`{c.row}`" in line, (c.row, version)
            continue
        assert c.new_text.startswith(today.text()), (c.row, today.text())
        first = (c.original_rule, c.original_bound, c.original_row)
        assert first != (today.rule, today.bound, today.row), f"{c.row}: first form is today's"


def test_the_original_verdict_on_the_seen_value_is_the_committed_one():
    """Known answer: the original criterion, applied to the quoted table row, prints the row's criterion text
    and gives its verdict (within: against the paper's number in the row)."""
    checked = 0
    for c in HISTORY:
        for m in TOKEN.finditer(c.seen):
            row = TABLE_ROW.match(m.group("quote") or "")
            if not row:
                continue
            crit = _criterion(c)
            assert crit.text() == row["crit"], (c.row, crit.text(), row["crit"])
            published = None if row["paper"] == "-" else float(row["paper"])
            assert crit.judge(float(row["value"]), published) == row["met"], c.row
            word = "failed" if row["met"] == "no" else "passed"
            assert f"had {word}" in c.seen, f"{c.row}: the seen sentence does not say the criterion {word}"
            checked += 1
    assert checked == len(HISTORY)


def _git(*args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


@lru_cache(maxsize=None)
def _file_at(commit: str, path: str) -> str | None:
    text = _git("show", f"{commit}:{path}")
    if text is not None and path.endswith(".ipynb"):
        text = "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
    return text


def test_every_reference_and_quotation_holds_in_git():
    """Each ``path@commit`` exists, and each quotation is verbatim in the file of the reference before it, after
    the quotation before it."""
    if _git("cat-file", "-e", "9d56252^{commit}") is None:
        pytest.skip("no git history here (an archive or a shallow clone)")
    for c in HISTORY:
        date = _git("log", "-1", "--format=%ad", "--date=short", c.changed_commit)
        assert date is not None and date.strip() == c.changed_date, (c.row, c.changed_commit, date)
        assert _git("merge-base", "--is-ancestor", c.first_commit, c.changed_commit) is not None, c.row
        for field in ("original_text", "new_text", "seen"):
            text, ref, quotes = getattr(c, field), None, 0
            for m in TOKEN.finditer(text):
                if m.group("ref"):
                    ref, start = (m.group("commit"), m.group("ref")), 0
                    assert _file_at(*ref) is not None, f"{c.row}.{field}: no {ref[1]} at {ref[0]}"
                    continue
                assert ref is not None, f"{c.row}.{field}: a quotation before any path@commit"
                # quotations of one reference follow each other in the file (a row's continuation line)
                found = _file_at(*ref).find(m.group("quote"), start)
                assert found >= 0, f"{c.row}.{field}: not in {ref[1]}@{ref[0]} after the last quotation: {m.group()}"
                start = found + len(m.group("quote"))
                quotes += 1
            assert quotes >= 1, f"{c.row}.{field} quotes nothing"
        assert f"@{c.first_commit}" in c.original_text and f"@{c.changed_commit}" in c.new_text, c.row
