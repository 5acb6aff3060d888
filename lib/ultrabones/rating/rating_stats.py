"""A rater's ratings and what they show (Sections 3.1 and 4): a ratings table read and validated against the rating
set's key, per alignment the number, mean, median and distribution of the ratings (0-3), and for each pair of
alignments the two-sided Wilcoxon signed-rank test, Bonferroni-adjusted over the pairs, with the effect size
``r = Z / sqrt(n)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ultrabones.core.errors import DatasetError, ParamsError
from ultrabones.rating.rating_set import METHODS, RATINGS, RATINGS_COLUMNS

#: How metrics JSON keys name the three alignments (the project's metric vocabulary, read by ``summary``).
METRIC_NAMES = {"initial": "initial", "registered": "registration", "optimized": "optimized"}
#: The compared pairs ``(a, b)``: differences are ``a - b``, the pair is called ``"<a>_vs_<b>"`` (metric names).
PAIRS = (("optimized", "initial"), ("optimized", "registered"), ("initial", "registered"))


# ----------------------------------------------------------------------------- statistics


def read_ratings(path: Path | str, key: pd.DataFrame, set_id: str | None = None) -> pd.DataFrame:
    """Read a ratings table and validate it against the key.

    Checks, each failure naming the file and row (the CSV's line number):
    the columns ``item_id, rating, rater`` are present; every ``item_id`` is in
    the key; every rating is an integer 0-3; every rater is named; no item is
    rated twice by the same rater; every rater rated every item of the key (an item
    left out is named); and, when the table has ``set_id`` and
    ``set_id`` is given, the ratings belong to that set.

    Parameters
    ----------
    path : a CSV exported by the rating page (or written by :func:`~ultrabones.rating.rating_set.ratings_table`).
    key : the key of the set that was rated (:func:`~ultrabones.rating.rating_set.read_key`).
    set_id : that set's fingerprint, to catch ratings of another set.

    Returns
    -------
    DataFrame ``item_id, rating (int), rater`` joined with the key
    (``specimen, record, timestamp, method``).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: ratings file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("item_id", "rating", "rater") if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(RATINGS_COLUMNS)})")
    if df.empty:
        raise DatasetError(f"{path}: no ratings")
    line = lambda i: i + 2  # noqa: E731 - CSV line of data row i (header is line 1)
    if set_id is not None and "set_id" in df.columns:
        other = df["set_id"] != set_id
        if other.any():
            i = int(np.flatnonzero(other.to_numpy())[0])
            raise DatasetError(
                f"{path} row {line(i)}: set_id {df['set_id'].iloc[i]!r} is not this rating set's ({set_id!r}); "
                "the ratings were made on another set (pass the key of that set)"
            )
    known = set(key["item_id"])
    unknown = ~df["item_id"].isin(known)
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DatasetError(f"{path} row {line(i)}: unknown item_id {df['item_id'].iloc[i]!r} (not in the key)")
    txt = df["rating"].str.strip()
    ok = txt.isin([str(r) for r in RATINGS])
    if not ok.all():
        i = int(np.flatnonzero(~ok.to_numpy())[0])
        raise DatasetError(
            f"{path} row {line(i)}: rating {df['rating'].iloc[i]!r} for {df['item_id'].iloc[i]} is not an integer 0-3"
        )
    unnamed = df["rater"].str.strip() == ""
    if unnamed.any():
        i = int(np.flatnonzero(unnamed.to_numpy())[0])
        raise DatasetError(f"{path} row {line(i)}: rater is empty (every rating needs the rater's name)")
    dup = df.duplicated(subset=["item_id", "rater"], keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        first = int(np.flatnonzero(((df["item_id"] == df["item_id"].iloc[i])
                                    & (df["rater"] == df["rater"].iloc[i])).to_numpy())[0])
        raise DatasetError(
            f"{path} row {line(i)}: item {df['item_id'].iloc[i]} rated again by {df['rater'].iloc[i]!r}"
            f" (first at row {line(first)}); one rating per item and rater"
        )
    out = pd.DataFrame({"item_id": df["item_id"], "rating": txt.astype(np.int64), "rater": df["rater"].str.strip()})
    for rater, got in out.groupby("rater", sort=True):  # an item left out would silently drop a frame's pair
        unrated = [i for i in key["item_id"] if i not in set(got["item_id"])]
        if unrated:
            shown = ", ".join(unrated[:5]) + (f" and {len(unrated) - 5} more" if len(unrated) > 5 else "")
            raise DatasetError(
                f"{path}: rater {rater!r} left {len(unrated)} of {len(key)} items unrated ({shown}); rate every "
                "item (the page's Next unrated button finds them) and export again")
    return out.merge(key, on="item_id", how="left", validate="many_to_one")


def method_summary(ratings: pd.DataFrame) -> pd.DataFrame:
    """Per method: n, mean, median, standard deviation and the distribution of ratings.

    Parameters
    ----------
    ratings : :func:`read_ratings`'s table.

    Returns
    -------
    DataFrame indexed by method (in :data:`~ultrabones.rating.rating_set.METHODS` order) with ``n, mean,
    median, sd`` and ``n_0 .. n_3`` (counts) and ``share_0 .. share_3``.
    """
    rows = []
    for m in METHODS:
        r = ratings.loc[ratings["method"] == m, "rating"].to_numpy()
        row = {"method": m, "n": int(r.size), "mean": float(r.mean()) if r.size else np.nan,
               "median": float(np.median(r)) if r.size else np.nan,
               "sd": float(r.std(ddof=1)) if r.size > 1 else np.nan}
        for k in RATINGS:
            row[f"n_{k}"] = int(np.sum(r == k))
        for k in RATINGS:
            row[f"share_{k}"] = row[f"n_{k}"] / r.size if r.size else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def paired(ratings: pd.DataFrame) -> pd.DataFrame:
    """Ratings side by side: one row per (rater, frame), one column per method.

    Frames missing a method's rating keep NaN there; each test uses the frames
    rated under both of its methods.
    """
    wide = ratings.pivot_table(index=["rater", "specimen", "record", "timestamp"], columns="method",
                               values="rating", aggfunc="first")
    return wide.reindex(columns=list(METHODS))


def bonferroni(p_values: Sequence[float]) -> np.ndarray:
    """Bonferroni-adjusted p-values (``min(1, m p)``), via statsmodels' ``multipletests``."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    return multipletests(p, method="bonferroni")[1]


def resolve_wilcoxon_method(d: np.ndarray, zero_method: str, method: str) -> str:
    """The p-value method for differences ``d`` (the rule of ``scipy.stats.wilcoxon``'s ``"auto"``).

    ``"auto"`` gives ``"exact"`` (the exact null distribution) when there are
    no zeros and no ties and at most 50 differences; with zeros or ties,
    ``"permutation"`` (all sign flips of the observed ranks, exact given the
    ties) up to 13 differences; ``"asymptotic"`` (normal approximation with
    the tie correction of the variance, no continuity correction) otherwise.
    With ``zero_method="wilcox"`` the zeros are dropped first and not counted.
    """
    if method != "auto":
        return method
    d = _tested_differences(d, zero_method)
    ties = np.unique(np.abs(d)).size < d.size
    zeros = bool(np.any(d == 0))
    if not ties and not zeros:
        return "exact" if d.size <= 50 else "asymptotic"
    return "permutation" if d.size <= 13 else "asymptotic"


def _tested_differences(d: np.ndarray, zero_method: str) -> np.ndarray:
    """The differences the test ranks: ``"wilcox"`` drops the zeros (scipy does the same), others keep them."""
    d = np.asarray(d, dtype=float)
    return d[d != 0] if zero_method == "wilcox" else d


def wilcoxon_pairs(
    wide: pd.DataFrame, zero_method: str = "wilcox", method: str = "auto", pairs=PAIRS
) -> pd.DataFrame:
    """Two-sided Wilcoxon signed-rank test for each pair of methods, Bonferroni-adjusted.

    Parameters
    ----------
    wide : :func:`paired`'s table (one row per rater and frame).
    zero_method : scipy's treatment of zero differences: ``"wilcox"`` drops
        them (the classic test), ``"pratt"`` ranks them and drops their ranks,
        ``"zsplit"`` splits their ranks between the signs.
    method : ``"auto"``, ``"exact"`` or ``"asymptotic"`` (see
        :func:`resolve_wilcoxon_method`).
    pairs : ``(a, b)`` methods; the difference is ``a - b``.

    Returns
    -------
    DataFrame, one row per pair: ``pair`` (``"<a>_vs_<b>"`` in :data:`METRIC_NAMES`),
    ``first`` (a), ``second`` (b), ``n`` (frames rated under both),
    ``n_nonzero``, ``mean_difference``, ``statistic`` (scipy's: the smaller
    signed-rank sum), ``z`` (normal-approximation Z with tie correction,
    positive when ``a`` is rated higher), ``p_value_raw``, ``p_method``,
    ``p_value_bonferroni`` (over the pairs) and ``effect_size_r = z / sqrt(n)``.
    """
    if zero_method not in ("wilcox", "pratt", "zsplit"):
        raise ParamsError(f"rating.zero_method: {zero_method!r} is not one of ['wilcox', 'pratt', 'zsplit']")
    if method not in ("auto", "exact", "asymptotic"):
        raise ParamsError(f"rating.wilcoxon_method: {method!r} is not one of ['auto', 'exact', 'asymptotic']")
    rows = []
    for a, b in pairs:
        both = wide[[a, b]].dropna()
        d = (both[a] - both[b]).to_numpy(dtype=float)
        n = d.size
        row = {"pair": f"{METRIC_NAMES[a]}_vs_{METRIC_NAMES[b]}", "first": a, "second": b, "n": n,
               "n_nonzero": int(np.sum(d != 0)),
               "mean_difference": float(d.mean()) if n else np.nan}
        if row["n_nonzero"] == 0:
            # Every pair agrees (or none): the test is undefined; no evidence of a difference.
            row.update(statistic=np.nan, z=0.0, p_value_raw=1.0, p_method="no non-zero difference")
        else:
            used = resolve_wilcoxon_method(d, zero_method, method)
            # Dropping the zeros here for "wilcox" is what scipy does itself; it also keeps an exhaustive
            # permutation test at 2^(non-zero differences), never 2^(all frames).
            dt = _tested_differences(d, zero_method)
            scipy_method = stats.PermutationMethod(n_resamples=np.inf) if used == "permutation" else used
            res = stats.wilcoxon(dt, zero_method=zero_method, correction=False, alternative="two-sided",
                                 method=scipy_method)
            asym = stats.wilcoxon(dt, zero_method=zero_method, correction=False, alternative="two-sided",
                                  method="asymptotic")
            # scipy's z is (min rank sum - mean) / se <= 0; sign it by the direction of the differences.
            direction = np.sign(np.sum(stats.rankdata(np.abs(d[d != 0])) * np.sign(d[d != 0])))
            row.update(statistic=float(res.statistic), z=float(abs(asym.zstatistic) * (direction or 1.0)),
                       p_value_raw=float(res.pvalue), p_method=used)
        row["effect_size_r"] = row["z"] / math.sqrt(n) if n else np.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    out["p_value_bonferroni"] = bonferroni(out["p_value_raw"].to_numpy())
    return out[["pair", "first", "second", "n", "n_nonzero", "mean_difference", "statistic", "z",
                "p_value_raw", "p_method", "p_value_bonferroni", "effect_size_r"]]
