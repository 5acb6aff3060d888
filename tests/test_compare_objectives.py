"""The objective comparison (labels.compare: truth-free fits; twin.objectives: measured against the truth)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ultrabones.core.errors import ParamsError
from ultrabones.labels import batch, compare
from ultrabones.twin import objectives

from test_labeling import labeling_params, make_twin


def test_objectives_fitted_on_the_same_frames_and_measured_against_the_truth(tmp_path):
    paths = make_twin(tmp_path, n_frames=4)
    P = labeling_params(popsize=4, maxiter=6, released_ct_samples=100_000, frame_stride=1, halves_check=None,
                        min_label_fraction=0.0)
    fits = compare.fit_objectives(paths, P, lam=0.1, n_frames=3, seed=0, upstream_de=False)
    assert len(fits) == 3 * len(compare.CANDIDATES)
    assert (fits.groupby("candidate")["timestamp"].apply(tuple).nunique()) == 1  # the same frames for each
    assert set(fits["status"]) <= {"kept", "discarded", "no_bone"}
    errs = objectives.errors(paths, fits, batch.label_settings(P, 0))
    assert len(errs) == len(fits) and np.isfinite(errs["contour_initial_mm"]).all()
    # a discarded fit delivers its initial label: same error
    d = errs[errs["status"] != "kept"]
    np.testing.assert_allclose(d["contour_delivered_mm"], d["contour_initial_mm"])
    # the recorded poses are off by up to 0.4 deg / 0.5 mm: the initial labels are measurably wrong
    assert errs["contour_initial_mm"].mean() > 0.05
    tab = objectives.table(errs)
    assert list(tab["objective"]) == [c[0] for c in compare.CANDIDATES]
    assert ((tab["discard_rate"] >= 0) & (tab["discard_rate"] <= 1)).all() and (tab["n_frames"] == 3).all()
    fig = objectives.plot(errs)
    assert len(fig.axes[0].get_xticklabels()) == 1 + len(compare.CANDIDATES)


def test_pick_frames_spreads_a_bounded_number_and_refuses_zero(tmp_path):
    paths = make_twin(tmp_path, n_frames=5)
    P = labeling_params(frame_stride=1)
    picked = compare.pick_frames(paths, P, 3)
    assert [ts for _, ts, _ in picked] == [1000, 1100, 1200]  # rows 0, 2, 4 of 5
    assert all(p.shape == (6,) for *_, p in picked)
    with pytest.raises(ValueError, match="n_frames"):
        compare.pick_frames(paths, P, 0)


def test_compare_gives_the_metrics_table_and_saves_the_figure(tmp_path):
    from types import SimpleNamespace

    paths = make_twin(tmp_path, n_frames=3)
    P = labeling_params(popsize=4, maxiter=4, released_ct_samples=100_000, frame_stride=1, halves_check=None)
    result = SimpleNamespace(lam=0.1, settings=batch.label_settings(P, 0))
    saved = []
    out = objectives.compare(paths, P, result, 1, 0, lambda fig, p, name, stem: saved.append((name, stem)), "02")
    assert out["objective"] == [c[0] for c in compare.CANDIDATES] and out["n_frames"] == [1, 1, 1]
    assert saved == [("objective_comparison", "02")]


def test_compared_runs_only_on_the_twin_when_asked(tmp_path):
    from ultrabones.twin.params import TwinParams

    paths = make_twin(tmp_path, n_frames=3)
    P = labeling_params(frame_stride=1)
    off = TwinParams(compare_objectives_frames=0)
    assert objectives.compared(paths, P, None, off, 0) == {}  # 0: off, nothing fitted
    real = dataclasses.replace(paths, data_root=tmp_path / "real")
    assert objectives.compared(real, P, None, TwinParams(compare_objectives_frames=5), 0) == {}  # real data: none
    with pytest.raises(ParamsError, match="twin.compare_objectives_frames was not given"):
        objectives.compared(paths, P, None, TwinParams(), 0)
