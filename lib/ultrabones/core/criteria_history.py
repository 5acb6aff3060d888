"""Every acceptance criterion of the summary that was changed after a result had been seen, with its first form.

This module is data, not computation: :data:`HISTORY` holds one :class:`CriterionChange` per change, in the order
of the summary rows. It answers issue 24: ``core/paper.py`` says its criteria were "written down before any run",
but it was created on 2026-12-02, ten days after the first default run had been committed with the criteria that
lived before it in ``lib/ultrabones/summary.py`` (and, for four rows, as assertions in notebooks 01 and 02).

How it was established (every reference is ``path@commit``, checkable with ``git show <commit>:<path>``)::

    git log --follow -p -- lib/ultrabones/core/paper.py          # 9d56252 creates it, 3403384 adds one row
    git log --follow -p -- lib/ultrabones/pipeline/summary.py    # cec89d4, 9b6d199, 3d903ae (rename), a6c2915
    git log -p -- figures/summary_table.md figures/summary_table.csv figures/summary_criteria.md
    git log -S'optimized_better_share\\"] >= 0.9' -- notebooks  # 02d4d26 adds the gate, 1f208de removes it
    git log -S'calibration_translation_error_mm\\"] < 1.0' -- notebooks   # 7dc077e adds, 01d57f4 removes
    git show 79f27e0:figures/summary_table.md                    # the only result committed before 9d56252
    git show 9d56252:lib/ultrabones/core/paper.py                # the new criteria

What was found:

- The first criteria were written in ``lib/ultrabones/summary.py@cec89d4`` (2026-11-22 19:04 UTC, before any stage
  was committed) and ``@9b6d199`` (20:03, two rows added), and as assertions that stop the run in
  ``notebooks/01_calibration.ipynb@7dc077e`` (on the twin) and ``notebooks/02_labeling.ipynb@02d4d26`` (default
  profile), both at 19:59.
- The first default run was committed in ``figures/summary_table.md@79f27e0`` (2026-11-22 20:56; the README of
  that commit repeats the table). It is the only summary committed before the change: the file did not change
  again until f9c2170 (2026-12-02 07:11). Its 26 rows have 10 criteria that failed ("no"), not 12 as issue 24
  says; 9 of those 10 were changed, all to a pass on the seen value or to no judgement; the tenth,
  ``mean_rating_registration`` (1.49 against 0.87, "within 0.5"), kept its criterion and still fails.
- All 17 summary changes are one commit, ``9d56252`` (2026-12-02 03:07:10 UTC), which created ``core/paper.py``;
  its child ``a6c2915`` (same time) removed the old rules from ``pipeline/summary.py`` and made the summary read
  ``paper.CRITERIA``; both reached main with the merge ``0b073d9`` (03:18:25). Eight of the 17 had passed on the
  seen run; they are listed too, because they were changed after it.
- Four notebook gates (hard assertions on the twin) were removed after the same run: ``1f208de`` (notebook 02,
  2026-12-02 02:53) and ``01d57f4`` (notebook 01, 03:47), by the rule that no notebook gates on the truth. They
  are listed as changes of their own (entries whose ``original_text`` names a notebook).
- Not listed, because no criterion changed: ``temporal_offset_error`` (``< 1``; only its notebook gate is
  listed), the three mean ratings (``within 0.5``) and the two Wilcoxon p-values (``< 0.001``) kept their
  summary criterion; three rows that
  were "reported only" were dropped (the band label error after global registration and the two one-sided
  reconstruction distances, a6c2915); rows new in a6c2915/3403384 (contour errors, lambda selection, detector,
  against-the-truth F1, Chamfer distances) had no earlier form. Notebook gates moved into the package unchanged
  are not changes (00's ``0.5 < mis < 2.0`` to twin.simulate in 529a3ed, 03's rater checks to twin.rater in
  b4306df, 04's learning margin to segmentation.training in 4f7a40c, 06's "optimised poses lower" to
  reconstruction.batch in 0854217).

Conventions of the entries: quoted text is between backticks and appears verbatim in the file named by the
nearest ``path@commit`` before it (for a notebook, in its cells' source); ``original_rule`` uses today's rule
names (``"abs"`` of the old summary is today's ``"within"``, ``|value - paper| <= bound``); the commit of a
change's new form is the commit that first wrote it. ``tests/test_criteria_history.py`` checks all of this
against git and checks that each original criterion, applied to the seen value, gives the verdict the
committed table printed.
"""

from __future__ import annotations

from dataclasses import dataclass


#: Rows whose criterion changed again from criteria version 1 on: row -> the version that changed it. Those changes
#: are dated in CHANGELOG.md ("criteria version N (YYYY-MM-DD): ..."), not listed in :data:`HISTORY`.
CHANGED_SINCE_VERSION_1: dict[str, int] = {"model_low_accuracy": 2, "model_low_completeness": 2, "model_low_f1": 2}


@dataclass(frozen=True)
class CriterionChange:
    """One change of an acceptance criterion after a result had been seen.

    Attributes
    ----------
    row : today's summary row id (a key of ``ultrabones.core.paper.CRITERIA``).
    original_rule : the first form's rule in today's names (``"within"``, ``"below"``, ``"above"``,
        ``"below_row"``, ``"above_row"``, ``"reported"``, ``"setting"``); where the first form is not one of
        them, the nearest, with a note in ``original_text``.
    original_bound : the first form's tolerance (``within``) or bound (``below``, ``above``), in the row's unit.
    original_row : the compared row of a ``*_row`` rule (none of the first forms had one).
    original_text : the first form in the words it was written in, with ``path@commit`` and a quotation.
    first_commit : short hash of the commit that first wrote the original form.
    changed_commit : short hash of the commit that changed it.
    changed_date : date of ``changed_commit`` (YYYY-MM-DD, UTC).
    new_text : the form after the change, with ``path@commit`` and a quotation.
    seen : one sentence: what had been seen before the change (value and source ``path@commit``) and whether the
        original criterion had failed on it.
    """

    row: str
    original_rule: str
    original_bound: float | None
    original_row: str | None
    original_text: str
    first_commit: str
    changed_commit: str
    changed_date: str
    new_text: str
    seen: str


#: Every criterion changed after a result had been seen, in the order of the summary rows.
HISTORY: tuple[CriterionChange, ...] = (
    CriterionChange(
        row="calibration_localisation_error",
        original_rule="within", original_bound=0.5, original_row=None,
        original_text=(
            "within 0.5 of the paper's 1.07 mm: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"3D localisation error of the calibration (mm)\", 1.07, \"01_calibration:localization_error_mm\",` "
            "`\"01_calibration:calibration_translation_error_mm\", \"abs\", 0.5),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "< 1.5 (the previously reported approx. 1.5 mm; basis paper): lib/ultrabones/core/paper.py@9d56252 "
            "`\"below\", _p(\"previous_localisation_error_mm\"), basis=\"paper\",`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.364 mm against the paper's 1.07 mm "
            "(`| 3D localisation error of the calibration (mm) | 1.07 | 0.364 | n/a | within 0.5 of "
            "the paper | no |`), "
            "so the original criterion had failed (|0.364 - 1.07| = 0.706 > 0.5) and the new one passes it."),
    ),
    CriterionChange(
        row="calibration_translation_error",
        original_rule="below", original_bound=1.0, original_row=None,
        original_text=(
            "< 1 mm, as a summary row: lib/ultrabones/summary.py@9b6d199 "
            "`Row(\"calibration translation error against the truth (mm)\", None,` "
            "`\"01_calibration:calibration_translation_error_mm\", None, \"below\", 1.0),` "
            "(a notebook gate with the same bound came first, see the entry of 01d57f4)"),
        first_commit="9b6d199", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "< 1.07 (the paper's own 3D localisation error; basis paper): lib/ultrabones/core/paper.py@9d56252 "
            "`\"below\", _p(\"calibration_localisation_error_mm\"), basis=\"paper\",`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.0123 mm "
            "(`| calibration translation error against the truth (mm) | - | 0.0123 | n/a | < 1 | yes |`), "
            "so the original criterion had passed; the bound was loosened from 1 to 1.07 mm."),
    ),
    CriterionChange(
        row="calibration_translation_error",
        original_rule="below", original_bound=1.0, original_row=None,
        original_text=(
            "a notebook gate on the twin, stopping the run: notebooks/01_calibration.ipynb@7dc077e "
            "`assert M[\"calibration_translation_error_mm\"] < 1.0, M[\"calibration_translation_error_mm\"]`"),
        first_commit="7dc077e", changed_commit="01d57f4", changed_date="2026-12-02",
        new_text=(
            "gate removed (commit message: 'no truth-based gate in the notebook'); the number is judged only by the "
            "summary row, < 1.07 since 9d56252: notebooks/01_calibration.ipynb@01d57f4 keeps only "
            "`assert M[\"phantom_frames_used\"] >= 3, M[\"phantom_frames_used\"]`"),
        seen=(
            "figures/summary_table.md@79f27e0, still the committed summary at 01d57f4, gave 0.0123 mm "
            "(`| calibration translation error against the truth (mm) | - | 0.0123 | n/a | < 1 | yes |`), "
            "so the gate had passed."),
    ),
    CriterionChange(
        row="temporal_offset_error",
        original_rule="below", original_bound=1.0, original_row=None,
        original_text=(
            "<= 1 ms, a notebook gate on the twin, stopping the run (today's nearest rule is the strict 'below'; "
            "the summary row's own criterion, < 1, never changed): notebooks/01_calibration.ipynb@7dc077e "
            "`assert M[\"temporal_offset_error_ms\"] <= 1.0, M[\"temporal_offset_error_ms\"]`"),
        first_commit="7dc077e", changed_commit="01d57f4", changed_date="2026-12-02",
        new_text=(
            "gate removed (commit message: 'no truth-based gate in the notebook'): "
            "notebooks/01_calibration.ipynb@01d57f4 keeps only "
            "`assert M[\"phantom_frames_used\"] >= 3, M[\"phantom_frames_used\"]`; the summary row keeps < 1, "
            "lib/ultrabones/core/paper.py@9d56252 `\"below\", 1.0, basis=\"physical\",`"),
        seen=(
            "figures/summary_table.md@79f27e0, still the committed summary at 01d57f4, gave 0.3 ms "
            "(`| temporal offset error against the truth (ms) | - | 0.3 | n/a | < 1 | yes |`), "
            "so the gate had passed."),
    ),
    CriterionChange(
        row="initial_misalignment_mean",
        original_rule="within", original_bound=0.4, original_row=None,
        original_text=(
            "within 0.4 of the paper's 1.13 mm: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"initial misalignment, mean (mm)\", 1.13, \"00_simulate:initial_misalignment_mm.mean\",` "
            "`\"02_labeling:label_error_mm.initial.mean\", \"abs\", 0.4),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "simulator setting (not a result), never judged: lib/ultrabones/core/paper.py@9d56252 "
            "`\"initial_misalignment_mean\": SETTING,`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 1.02 mm, twin truth 0.86 mm "
            "(`| initial misalignment, mean (mm) | 1.13 | 1.02 | 0.86 | within 0.4 of the paper | yes |`), "
            "so the original criterion had passed."),
    ),
    CriterionChange(
        row="initial_misalignment_sd",
        original_rule="within", original_bound=0.3, original_row=None,
        original_text=(
            "within 0.3 of the paper's 0.606 mm: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"initial misalignment, std (mm)\", 0.606, \"00_simulate:initial_misalignment_mm.std\", None, "
            "\"abs\", 0.3),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "simulator setting (not a result), never judged: lib/ultrabones/core/paper.py@9d56252 "
            "`\"initial_misalignment_sd\": SETTING,`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 1.14 mm against the paper's 0.606 mm "
            "(`| initial misalignment, std (mm) | 0.606 | 1.14 | n/a | within 0.3 of the paper | no |`), "
            "so the original criterion had failed (|1.14 - 0.606| = 0.534 > 0.3)."),
    ),
    CriterionChange(
        row="discard_rate",
        original_rule="within", original_bound=0.1, original_row=None,
        original_text=(
            "within 0.1 of the paper's 0.187: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"frames discarded by validation (fraction)\", 0.187, \"02_labeling:discard_rate\", None, "
            "\"abs\", 0.1),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "reported only (basis none: 'on the twin it follows from the tracking-error model'): "
            "lib/ultrabones/core/paper.py@9d56252 `\"discard_rate\": Criterion(\"reported\", why=_TWIN_LAB),`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.0305 against the paper's 0.187 "
            "(`| frames discarded by validation (fraction) | 0.187 | 0.0305 | n/a | within 0.1 of the paper | no |`), "
            "so the original criterion had failed (|0.0305 - 0.187| = 0.157 > 0.1)."),
    ),
    CriterionChange(
        row="kept_mean_fiducial_correction",
        original_rule="within", original_bound=0.2, original_row=None,
        original_text=(
            "within 0.2 of the paper's 0.481 mm: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"mean fiducial correction of kept frames (mm)\", 0.481, "
            "\"02_labeling:kept_mean_fiducial_correction_mm\",` `None, \"abs\", 0.2),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "reported only (basis none: 'on the twin it follows from the tracking-error model'): "
            "lib/ultrabones/core/paper.py@9d56252 "
            "`\"kept_mean_fiducial_correction\": Criterion(\"reported\", why=_TWIN_LAB),`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.346 mm against the paper's 0.481 mm "
            "(`| mean fiducial correction of kept frames (mm) | 0.481 | 0.346 | n/a | within 0.2 of "
            "the paper | yes |`), "
            "so the original criterion had passed."),
    ),
    CriterionChange(
        row="band_label_error_optimized_mean",
        original_rule="below", original_bound=0.3, original_row=None,
        original_text=(
            "< 0.3 mm, the row then named 'label error after optimisation, mean (mm)' (same key, "
            "label_error_mm.optimized.mean): lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"label error after optimisation, mean (mm)\", None, \"02_labeling:label_error_mm.optimized.mean\",` "
            "`None, \"below\", 0.3),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "reported only, renamed 'band label error after optimisation, mean (mm; secondary)' (a6c2915): "
            "lib/ultrabones/core/paper.py@9d56252 "
            "`\"band_label_error_optimized_mean\": Criterion(\"reported\", why=\"secondary metric: band overlap, "
            "compresses errors\"),`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.241 mm "
            "(`| label error after optimisation, mean (mm) | - | 0.241 | n/a | < 0.3 | yes |`), "
            "so the original criterion had passed."),
    ),
    CriterionChange(
        row="band_label_error_optimized_mean",
        original_rule="below", original_bound=0.3, original_row=None,
        original_text=(
            "<= 0.3 mm, a notebook gate of the default profile, stopping the run (today's nearest rule is the "
            "strict 'below'): notebooks/02_labeling.ipynb@02d4d26 `assert E[\"optimized\"][\"mean\"] <= 0.3, E`"),
        first_commit="02d4d26", changed_commit="1f208de", changed_date="2026-12-02",
        new_text=(
            "gate removed when the truth measurement moved to twin.measure (contour error the headline, the band "
            "metric secondary; the gate 'optimised mean below initial mean' went too); the summary row kept < 0.3 "
            "until 9d56252: the check cell of notebooks/02_labeling.ipynb@1f208de now ends with "
            "`assert M[\"kept_mean_fiducial_correction_mm\"] <= P[\"max_correction_mm\"] + 1e-9`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.241 mm "
            "(`| label error after optimisation, mean (mm) | - | 0.241 | n/a | < 0.3 | yes |`), "
            "so the gate had passed."),
    ),
    CriterionChange(
        row="optimized_better_share",
        original_rule="above", original_bound=0.9, original_row=None,
        original_text=(
            "> 0.9 of kept frames, as a summary row: lib/ultrabones/summary.py@9b6d199 "
            "`Row(\"kept frames whose optimised label beats the initial (fraction)\", None,` "
            "`\"02_labeling:optimized_better_share\", None, \"above\", 0.9),` "
            "(a notebook gate, >= 0.9, came first, see the entry of 1f208de)"),
        first_commit="9b6d199", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "> 0.5 (basis statistical: a sign test's no-effect level), on a share redefined in 1f208de from the "
            "band label error to the contour error: lib/ultrabones/core/paper.py@9d56252 "
            "`\"above\", 0.5, basis=\"statistical\",`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.922 "
            "(`| kept frames whose optimised label beats the initial (fraction) | - | 0.922 | n/a | > 0.9 | yes |`), "
            "so the original criterion had passed, by 0.022; the bound was lowered from 0.9 to 0.5."),
    ),
    CriterionChange(
        row="optimized_better_share",
        original_rule="above", original_bound=0.9, original_row=None,
        original_text=(
            ">= 0.9, a notebook gate of the default profile, stopping the run (today's nearest rule is the strict "
            "'above'): notebooks/02_labeling.ipynb@02d4d26 "
            "`assert M[\"optimized_better_share\"] >= 0.9, M[\"optimized_better_share\"]`"),
        first_commit="02d4d26", changed_commit="1f208de", changed_date="2026-12-02",
        new_text=(
            "gate removed and the share redefined on the contour error by twin.measure; the summary row kept > 0.9 "
            "until 9d56252: lib/ultrabones/twin/measure.py@1f208de "
            "`\"optimized_better_share\": float((both[\"contour_optimized_mm\"] < "
            "both[\"contour_initial_mm\"]).mean())`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.922 "
            "(`| kept frames whose optimised label beats the initial (fraction) | - | 0.922 | n/a | > 0.9 | yes |`), "
            "so the gate had passed."),
    ),
    CriterionChange(
        row="model_all_accuracy",
        original_rule="within", original_bound=0.1, original_row=None,
        original_text=(
            "within 0.1 of the paper's 0.900: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"model accuracy at 0.5 mm, all\", 0.900, \"05_evaluation:at_0p5mm.released.model.all.accuracy\", "
            "None, \"abs\", 0.1),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "reported only (basis none: 'a model trained minutes on CPU on the twin'): "
            "lib/ultrabones/core/paper.py@9d56252 "
            "`\"model_all_accuracy\": Criterion(\"reported\", why=_NOT_THE_PAPERS_MODEL),`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.751 against the paper's 0.9 "
            "(`| model accuracy at 0.5 mm, all | 0.9 | 0.751 | n/a | within 0.1 of the paper | no |`), "
            "so the original criterion had failed (|0.751 - 0.900| = 0.149 > 0.1)."),
    ),
    CriterionChange(
        row="model_all_completeness",
        original_rule="within", original_bound=0.1, original_row=None,
        original_text=(
            "within 0.1 of the paper's 0.895: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"model completeness at 0.5 mm, all\", 0.895, "
            "\"05_evaluation:at_0p5mm.released.model.all.completeness\", None,`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "reported only (basis none: 'a model trained minutes on CPU on the twin'): "
            "lib/ultrabones/core/paper.py@9d56252 "
            "`\"model_all_completeness\": Criterion(\"reported\", why=_NOT_THE_PAPERS_MODEL),`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.86 against the paper's 0.895 "
            "(`| model completeness at 0.5 mm, all | 0.895 | 0.86 | n/a | within 0.1 of the paper | yes |`), "
            "so the original criterion had passed."),
    ),
    CriterionChange(
        row="model_all_f1",
        original_rule="within", original_bound=0.1, original_row=None,
        original_text=(
            "within 0.1 of the paper's 0.893: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"model F1 at 0.5 mm, all\", 0.893, \"05_evaluation:at_0p5mm.released.model.all.f1\", None, "
            "\"abs\", 0.1),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "reported only (basis none: 'a model trained minutes on CPU on the twin'): "
            "lib/ultrabones/core/paper.py@9d56252 "
            "`\"model_all_f1\": Criterion(\"reported\", why=_NOT_THE_PAPERS_MODEL),`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.799 against the paper's 0.893 "
            "(`| model F1 at 0.5 mm, all | 0.893 | 0.799 | n/a | within 0.1 of the paper | yes |`), "
            "so the original criterion had passed, by 0.006."),
    ),
    CriterionChange(
        row="model_low_accuracy",
        original_rule="within", original_bound=0.15, original_row=None,
        original_text=(
            "within 0.15 of the paper's 0.789: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"model accuracy at 0.5 mm, low intensity\", 0.789, "
            "\"05_evaluation:at_0p5mm.released.model.low.accuracy\",` `None, \"abs\", 0.15),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "above the row 'manual_low_accuracy' (basis paper: the model beats manual labelling on low-intensity "
            "bone): lib/ultrabones/core/paper.py@9d56252 "
            "`\"model_low_accuracy\": Criterion(\"above_row\", row=\"manual_low_accuracy\", basis=\"paper\", "
            "why=_MODEL_BEATS_MANUAL),`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.519 against the paper's 0.789 and a manual (simulated "
            "annotator) 0.282 "
            "(`| model accuracy at 0.5 mm, low intensity | 0.789 | 0.519 | n/a | within 0.15 of the paper | no |`), "
            "so the original criterion had failed (|0.519 - 0.789| = 0.270 > 0.15) and the new one passes it."),
    ),
    CriterionChange(
        row="model_low_completeness",
        original_rule="within", original_bound=0.15, original_row=None,
        original_text=(
            "within 0.15 of the paper's 0.801: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"model completeness at 0.5 mm, low intensity\", 0.801,` "
            "`\"05_evaluation:at_0p5mm.released.model.low.completeness\", None, \"abs\", 0.15),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "above the row 'manual_low_completeness' (basis paper: the model beats manual labelling on "
            "low-intensity bone): lib/ultrabones/core/paper.py@9d56252 "
            "`\"model_low_completeness\": Criterion(\"above_row\", row=\"manual_low_completeness\", basis=\"paper\",`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.746 against the paper's 0.801 and a manual 0.023 "
            "(`| model completeness at 0.5 mm, low intensity | 0.801 | 0.746 | n/a | within 0.15 of "
            "the paper | yes |`), "
            "so the original criterion had passed."),
    ),
    CriterionChange(
        row="model_low_f1",
        original_rule="within", original_bound=0.15, original_row=None,
        original_text=(
            "within 0.15 of the paper's 0.778: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"model F1 at 0.5 mm, low intensity\", 0.778, \"05_evaluation:at_0p5mm.released.model.low.f1\", "
            "None, \"abs\", 0.15),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "above the row 'manual_low_f1' (basis paper: the model beats manual labelling on low-intensity bone): "
            "lib/ultrabones/core/paper.py@9d56252 "
            "`\"model_low_f1\": Criterion(\"above_row\", row=\"manual_low_f1\", basis=\"paper\", "
            "why=_MODEL_BEATS_MANUAL),`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.603 against the paper's 0.778 and a manual 0.0389 "
            "(`| model F1 at 0.5 mm, low intensity | 0.778 | 0.603 | n/a | within 0.15 of the paper | no |`), "
            "so the original criterion had failed (|0.603 - 0.778| = 0.175 > 0.15) and the new one passes it."),
    ),
    CriterionChange(
        row="manual_low_accuracy",
        original_rule="within", original_bound=0.15, original_row=None,
        original_text=(
            "within 0.15 of the paper's 0.619: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"manual accuracy at 0.5 mm, low intensity\", 0.619, "
            "\"05_evaluation:at_0p5mm.released.manual.low.accuracy\",` `None, \"abs\", 0.15),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "reported only (basis none): lib/ultrabones/core/paper.py@9d56252 `\"manual_low_accuracy\": REPORTED,`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.282 against the paper's 0.619 "
            "(`| manual accuracy at 0.5 mm, low intensity | 0.619 | 0.282 | n/a | within 0.15 of the paper | no |`), "
            "so the original criterion had failed (|0.282 - 0.619| = 0.337 > 0.15)."),
    ),
    CriterionChange(
        row="manual_low_completeness",
        original_rule="within", original_bound=0.15, original_row=None,
        original_text=(
            "within 0.15 of the paper's 0.190: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"manual completeness at 0.5 mm, low intensity\", 0.190,` "
            "`\"05_evaluation:at_0p5mm.released.manual.low.completeness\", None, \"abs\", 0.15),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text=(
            "reported only (basis none): lib/ultrabones/core/paper.py@9d56252 "
            "`\"manual_low_completeness\": REPORTED,`"),
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.023 against the paper's 0.19 "
            "(`| manual completeness at 0.5 mm, low intensity | 0.19 | 0.023 | n/a | within 0.15 of "
            "the paper | no |`), "
            "so the original criterion had failed (|0.023 - 0.190| = 0.167 > 0.15)."),
    ),
    CriterionChange(
        row="manual_low_f1",
        original_rule="within", original_bound=0.15, original_row=None,
        original_text=(
            "within 0.15 of the paper's 0.261: lib/ultrabones/summary.py@cec89d4 "
            "`Row(\"manual F1 at 0.5 mm, low intensity\", 0.261, \"05_evaluation:at_0p5mm.released.manual.low.f1\", "
            "None,` `\"abs\", 0.15),`"),
        first_commit="cec89d4", changed_commit="9d56252", changed_date="2026-12-02",
        new_text="reported only (basis none): lib/ultrabones/core/paper.py@9d56252 `\"manual_low_f1\": REPORTED,`",
        seen=(
            "figures/summary_table.md@79f27e0 gave 0.0389 against the paper's 0.261 "
            "(`| manual F1 at 0.5 mm, low intensity | 0.261 | 0.0389 | n/a | within 0.15 of the paper | no |`), "
            "so the original criterion had failed (|0.0389 - 0.261| = 0.222 > 0.15)."),
    ),
)
