"""Where every file of a run lives. Nobody else builds these paths by hand.

A run of profile ``P`` uses:

- ``build/P/notebooks/``   executed notebooks
- ``build/P/metrics/``     one JSON per notebook (the metrics contract)
- ``build/P/stamps/``      success stamps for ``make``
- ``build/P/cache/``       resumable per-specimen results
- ``build/P/models/``      checkpoints and predictions
- ``build/P/dataset/``      the derived dataset: what the stages write (optimised poses, labels,
  reports, predictions), mirroring the input's layout; ``derived_root`` may point elsewhere
- ``data/twin/P/``         the digital twin: ``raw/``, ``truth/`` and ``dataset/``
- ``figures/``             figures and tables of the default profile
  (other profiles write to ``build/P/figures/``)

``data_root`` points at a real dataset instead of the twin's ``dataset/``. The input
dataset (the real one, or the twin's ``dataset/`` written by notebooks 00-01) is
read-only to the method stages: they write into :attr:`Paths.derived`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from ultrabones.core.dataset import discover
from ultrabones.core.errors import DatasetError

#: The repository root (``lib/ultrabones/paths.py`` -> three levels up).
PROJECT_ROOT = Path(__file__).resolve().parents[3]
PARAMS_DIR = PROJECT_ROOT / "params"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
FIGURES_DIR = PROJECT_ROOT / "figures"


def build_root() -> Path:
    """``build/`` or ``$ULTRABONES_BUILD_ROOT`` (tests point this at a temporary folder), absolute.

    A relative ``$ULTRABONES_BUILD_ROOT`` is read from the directory the command ran in (not from
    ``notebooks/``, where papermill runs the kernels).
    """
    return Path(os.environ.get("ULTRABONES_BUILD_ROOT", PROJECT_ROOT / "build")).expanduser().absolute()


def twin_root() -> Path:
    """``data/twin/`` or ``$ULTRABONES_TWIN_ROOT``, absolute (a relative one is read from the command's directory)."""
    return Path(os.environ.get("ULTRABONES_TWIN_ROOT", PROJECT_ROOT / "data" / "twin")).expanduser().absolute()


def figures_root(profile: str) -> Path:
    """``figures/`` for the default profile, ``build/<profile>/figures`` otherwise."""
    if profile == "default" and "ULTRABONES_BUILD_ROOT" not in os.environ:
        return FIGURES_DIR
    return build_root() / profile / "figures"


@dataclass(frozen=True)
class Paths:
    """The folders of one run, as handed to a notebook.

    The method stages (01-07) hold :meth:`for_method`'s copy, which has no twin folder: the twin's
    recordings (``raw``) and its input dataset (``dataset``) are kept as folders of their own, and the
    twin's code (``ultrabones.twin.layout.twin_paths``) gets the folder back in the measurement cells.

    Parameters
    ----------
    build_dir : ``build/<profile>``.
    twin_dir : the digital twin's folder (``raw/``, ``truth/``, ``dataset/``); None in a method stage's copy.
    figures_dir : where figures and tables go.
    data_root : a real dataset root, or None for the twin.
    derived_root : where the stages write their products (a dataset mirroring
        the input's layout); None: ``build/<profile>/dataset``.
    raw_dir, twin_dataset : the twin's ``raw/`` and ``dataset/`` in a copy without ``twin_dir``
        (:meth:`for_method`); None otherwise.
    """

    build_dir: Path
    twin_dir: Path | None
    figures_dir: Path
    data_root: Path | None = None
    derived_root: Path | None = None
    raw_dir: Path | None = None
    twin_dataset: Path | None = None

    @classmethod
    def for_profile(cls, profile: str, data_root: str | None = None, derived_root: str | None = None) -> "Paths":
        return cls(
            build_dir=build_root() / profile,
            twin_dir=twin_root() / profile,
            figures_dir=figures_root(profile),
            data_root=Path(data_root) if data_root else None,
            derived_root=Path(derived_root) if derived_root else None,
        )

    @classmethod
    def from_notebook(cls, build_dir, twin_dir, figures_dir, data_root=None, derived_root=None) -> "Paths":
        return cls(Path(build_dir), Path(twin_dir), Path(figures_dir), Path(data_root) if data_root else None,
                   Path(derived_root) if derived_root else None)

    def for_method(self) -> "Paths":
        """These paths without the twin's folder, as a method stage gets them: ``raw`` and ``dataset`` stay
        (the recordings and the input dataset), ``twin_dir`` is None, so no method code is handed the folder
        that holds the truth (the run-time wall, :mod:`ultrabones.twin.wall`, stops any read of it)."""
        if self.twin_dir is None:
            return self
        return replace(self, twin_dir=None, raw_dir=self.raw if self.is_twin else None,
                       twin_dataset=self.dataset if self.is_twin else None)

    @property
    def is_twin(self) -> bool:
        """True when running on the digital twin (no real ``data_root``)."""
        return self.data_root is None

    @property
    def raw(self) -> Path:
        """Raw twin acquisitions (tracker streams, images, CT, phantom)."""
        if self.twin_dir is None:
            if self.raw_dir is None:
                raise DatasetError("no raw recordings: these paths are a real dataset's (data_root)")
            return self.raw_dir
        return self.twin_dir / "raw"

    @property
    def dataset(self) -> Path:
        """The dataset in the released layout: the real one, or the twin's."""
        if self.data_root is not None:
            return self.data_root
        return self.twin_dataset if self.twin_dir is None else self.twin_dir / "dataset"

    @property
    def derived(self) -> Path:
        """The derived dataset: the stages' products, in the input's layout (never inside the input).

        ``derived_root`` when set, else ``build/<profile>/dataset``. A record
        ``<input>/<specimen>/<record>`` has its derived folder at
        ``<derived>/<specimen>/<record>`` (see :func:`ultrabones.core.dataset.scan`).
        """
        return self.derived_root if self.derived_root is not None else self.build_dir / "dataset"

    @property
    def metrics_dir(self) -> Path:
        return self.build_dir / "metrics"

    def metrics(self, stem: str) -> Path:
        """``build/<profile>/metrics/<stem>.json``."""
        return self.metrics_dir / f"{stem}.json"

    @property
    def notebooks_dir(self) -> Path:
        return self.build_dir / "notebooks"

    @property
    def stamps_dir(self) -> Path:
        return self.build_dir / "stamps"

    def cache(self, stem: str) -> Path:
        """Per-stage folder of resumable intermediate results."""
        return self.build_dir / "cache" / stem

    @property
    def rating_dir(self) -> Path:
        """``build/<profile>/rating/``: the blinded rating set (page, key) and its ratings."""
        return self.build_dir / "rating"

    @property
    def models_dir(self) -> Path:
        return self.build_dir / "models"

    def figure(self, name: str) -> Path:
        """A figure or table file under the figures folder (created on demand)."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        return self.figures_dir / name


def twin_specimen_name(index: int) -> str:
    """Folder name of the twin's ``index``-th specimen (0-based): ``specimen01``, ..."""
    return f"specimen{index + 1:02d}"


def specimen_names(values: dict) -> list[str]:
    """The specimens a validated profile runs on: its list, the real dataset's, or the twin's."""
    if values.get("specimens") is not None:
        return list(values["specimens"])
    if values.get("data_root"):
        return [s.name for s in discover(values["data_root"])]
    return [twin_specimen_name(i) for i in range(values["simulate"]["n_specimens"])]
