"""The smoke run's headline metrics against the committed golden file, within stated tolerances.

A change that moves a number must update ``tests/golden/smoke_metrics.json`` on purpose
(``python tools/update_golden.py <build>/smoke``), so every moved number shows in review.
"""

import json
from pathlib import Path

import pytest

GOLDEN = json.loads((Path(__file__).parent / "golden" / "smoke_metrics.json").read_text())


def _lookup(metrics: dict, key: str):
    v = metrics
    for part in key.split("."):
        assert isinstance(v, dict) and part in v, f"metrics key {key!r} missing"
        v = v[part]
    return v


@pytest.mark.notebook
@pytest.mark.parametrize("stem", sorted(GOLDEN))
def test_headline_metrics_match_the_golden_file(smoke_metrics, stem):
    m = smoke_metrics(stem)
    for key, g in GOLDEN[stem].items():
        assert _lookup(m, key) == pytest.approx(g["value"], abs=g["abs"]), f"{stem}: {key} ({g['why']})"
