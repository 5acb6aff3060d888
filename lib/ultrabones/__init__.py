"""ultrabones: a reproducible UltraBones100k.

CT-derived bone labels for tracked ultrasound, the bone-segmentation benchmark
built on them, and a digital twin that stands in for the real dataset.

Packages, bottom up (``docs/architecture.md``; ``tests/test_architecture.py``
checks that a package imports only its own layer and those below):

- :mod:`ultrabones.core`            geometry (Eq. 1), dataset I/O, parameters, paths, cache keys, atomic writes
- :mod:`ultrabones.calibration`     paper 3.1: Z-phantom, CT bone model, CT-to-marker, probe calibration
- :mod:`ultrabones.labels`          paper 3.1: Eq. 2 per frame, global registration, labelling a dataset
- :mod:`ultrabones.rating`          paper 3.1: blinded rating set and page, Wilcoxon + Bonferroni
- :mod:`ultrabones.segmentation`    paper 3.2: training data, U-Net/FPN under Lightning, inference
- :mod:`ultrabones.evaluation`      paper 3.2/4: Eqs. 3-6, the Otsu split, the classical detector baseline
- :mod:`ultrabones.reconstruction`  3D bone surface from labelled sweeps
- :mod:`ultrabones.twin`            the digital twin, its simulated people, and the only reader of its truth
- :mod:`ultrabones.pipeline`        runner, stage bookkeeping, CLI, summary

The method packages never import :mod:`ultrabones.twin`: truth only measures.
"""

__version__ = "0.1.0"

import os as _os

#: The environment variable naming the twin folders whose ``truth/`` is walled off (``os.pathsep``-separated):
#: the runner sets it for the kernels of the method stages (01-07); a process that imports ``ultrabones`` with
#: it set installs the truth wall (:mod:`ultrabones.twin.wall`).
TRUTH_WALL_ENV = "ULTRABONES_TRUTH_WALL"

from ultrabones.core.errors import DatasetError, NotebookError, ParamsError, TruthWallError, UltrabonesError  # noqa: F401

if _os.environ.get(TRUTH_WALL_ENV):  # a method stage's kernel or one of its workers: wall off the truth
    from ultrabones.twin import wall as _wall

    _wall.install_from_env()
