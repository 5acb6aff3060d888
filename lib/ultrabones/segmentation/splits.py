"""Splits by specimen: specimen names resolved from a profile's entries (folder names or bare numbers), the
train / validation / test split (no specimen contributes frames to two sets) and cross-validation folds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ultrabones.core.errors import ParamsError


def _first_number(name: str) -> int | None:
    m = re.search(r"\d+", name)
    return int(m.group()) if m else None


def resolve_specimens(entries: Sequence[str], available: Sequence[str], key: str) -> list[str]:
    """Match a params list of specimens to folder names.

    An entry matches a folder by its exact name, or, when it is a bare number
    (``"7"``, ``"07"``), the folder whose first number is that value: the
    released split's ``1, 3, 4, ...`` find ``cadaver01_F231091`` or ``specimen01``.

    Raises
    ------
    ParamsError
        If an entry matches no folder, or several.
    """
    out = []
    for e in entries:
        e = str(e)
        if e in available:
            out.append(e)
            continue
        hits = [a for a in available if e.isdigit() and _first_number(a) == int(e)]
        if len(hits) != 1:
            raise ParamsError(
                f"training.{key}: specimen {e!r} matches {'no' if not hits else 'several'} folder(s)"
                f" (have: {', '.join(available)})"
            )
        out.append(hits[0])
    return out


@dataclass(frozen=True)
class Split:
    """Specimen folder names of the training, validation and test sets."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def split_specimens(
    available: Sequence[str],
    train: Sequence[str] | None = None,
    val: Sequence[str] | None = None,
    test: Sequence[str] | None = None,
) -> Split:
    """Split specimens into training, validation and test sets.

    Lists given as None are filled automatically from the sorted names: the
    last ``round(3/14 n)`` specimens (at least one) are the test set (the
    paper's 3 of 14), the one before them the validation set, the rest
    training: 7 specimens give 4/1/2, 3 give 1/1/1, 14 give 10/1/3. A list
    that is given is resolved with :func:`resolve_specimens`; the automatic
    ones then take only from the specimens not yet used.

    Raises
    ------
    ParamsError
        If a specimen is in two sets, or a set ends up empty.
    """
    avail = sorted(available)
    given = {}
    for key, lst in (("train_specimens", train), ("val_specimens", val), ("test_specimens", test)):
        given[key] = None if lst is None else resolve_specimens(lst, avail, key)
    used = [s for v in given.values() if v for s in v]
    dup = sorted({s for s in used if used.count(s) > 1})
    if dup:
        raise ParamsError(f"training: specimen(s) {', '.join(dup)} are in more than one of train/val/test")
    free = [s for s in avail if s not in used]
    if given["test_specimens"] is None:
        n_test = max(1, round(3 * len(avail) / 14))
        given["test_specimens"], free = free[len(free) - n_test:], free[: len(free) - n_test]
    if given["val_specimens"] is None:
        given["val_specimens"], free = free[-1:], free[:-1]
    if given["train_specimens"] is None:
        given["train_specimens"] = free
    for key, v in given.items():
        if not v:
            raise ParamsError(
                f"training.{key}: empty split (specimens available: {', '.join(avail)}; need at least 3)"
            )
    return Split(tuple(given["train_specimens"]), tuple(given["val_specimens"]), tuple(given["test_specimens"]))


def cross_validation_folds(split: Split, n_folds: int) -> list[Split]:
    """The k folds of cross-validation over the training and validation specimens.

    With ``n_folds == 1`` the split itself. Otherwise the training and
    validation specimens are pooled, sorted and dealt into ``n_folds`` groups
    (round robin); fold *i* validates on group *i* and trains on the others.
    The test set never changes.

    Raises
    ------
    ParamsError
        If there are fewer pooled specimens than folds.
    """
    if n_folds == 1:
        return [split]
    pool = sorted(split.train + split.val)
    if n_folds > len(pool):
        raise ParamsError(f"training.n_folds: {n_folds} folds need at least as many train+val specimens, have {len(pool)}")
    groups = [pool[i::n_folds] for i in range(n_folds)]
    return [
        Split(tuple(s for s in pool if s not in groups[i]), tuple(groups[i]), split.test) for i in range(n_folds)
    ]
