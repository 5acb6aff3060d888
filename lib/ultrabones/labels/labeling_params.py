"""The ``labeling`` section of a profile, typed: notebook 02's :class:`LabelingParams`.

Its own module so that the stage's helpers (:mod:`ultrabones.labels.figures`, ...) can name the parameters
without importing the stage (:mod:`ultrabones.labels.batch`, which imports them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ultrabones.core.params import SectionParams
from ultrabones.labels.tasks import torch_device

#: The profile section of notebook 02.
SECTION = "labeling"


@dataclass(frozen=True)
class LabelingParams(SectionParams):
    """The ``labeling`` section of a profile, typed and validated (units and ranges: ``schema.SCHEMA["labeling"]``).

    Build it with :meth:`from_section`; a specimen's overrides give :meth:`for_specimen`. Construction, and so
    ``dataclasses.replace``, validates every value; lists become tuples. :meth:`as_dict` gives the section back
    as plain data: what the cache keys hash and the metrics' provenance records (all from
    :class:`~ultrabones.core.params.SectionParams`).
    """

    SECTION: ClassVar[str] = SECTION

    objective: str
    released_ct_samples: int
    density_per_mm2: float
    label_density_per_mm2: float
    objective_region: str
    gamma_mm: float
    bound_deg: float
    bound_mm: float
    popsize: int
    maxiter: int
    tol: float
    lambdas: tuple[float, ...]
    lambda_frames: int
    selection_rule: str
    selection_eval_region: str
    selection_offset_frames: int
    fallback_region: str
    lambda_value: float | None
    selection_inseparable: str
    max_correction_mm: float
    min_label_fraction: float
    halves_check: str | None
    incidence_max_deg: float
    frame_stride: int
    max_frames_per_record: int | None
    chunk_size: int
    optimizer: str
    warm_step_deg: float
    warm_step_mm: float
    warm_min_step_deg: float
    warm_min_step_mm: float
    warm_max_calls: int
    warm_max_gap: int
    warm_cold_every: int
    registration_frames: int
    registration_bound_deg: float
    registration_bound_mm: float
    registration_maxiter: int
    executor: str
    device: str | None
    min_echo_level: float

    def __post_init__(self):
        super().__post_init__()
        if self.device == "cuda":  # stop before any work where the asked-for GPU is missing
            torch_device("cuda")
