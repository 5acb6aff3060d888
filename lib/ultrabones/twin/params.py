"""The ``twin`` section typed: the parameters that only the digital twin's code reads (:class:`TwinParams`).

The method's sections never hold them. A notebook with twin-only cells receives the keys it reads
(``schema.TWIN_KEYS[stem]``) as one dict parameter, ``twin``, and builds :class:`TwinParams` from it
(``TwinParams.from_section(twin)``); the keys it was not given stay None, and :meth:`TwinParams.need` stops with
a message naming a missing one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ultrabones.core.errors import ParamsError
from ultrabones.core.params import SectionParams, validate_section


@dataclass(frozen=True)
class TwinParams(SectionParams):
    """The ``twin`` section, or the part of it one notebook receives (units: ``schema.SCHEMA["twin"]``).

    Attributes
    ----------
    surface_samples : notebook 01's surface distances (``twin.measure.calibration``).
    precision_tolerance_mm, compare_objectives_frames : notebook 02's label measurement and objective comparison.
    rubric_*, rater_* : notebook 03's rater model (``twin.rater``).
    annotator_* : notebook 05's simulated annotator and its sweep (``twin.annotator``).

    A key not given is None (no ``twin`` key is nullable, so None always means "not given").
    """

    SECTION: ClassVar[str] = "twin"

    surface_samples: int | None = None
    precision_tolerance_mm: float | None = None
    compare_objectives_frames: int | None = None
    rubric_large_share: float | None = None
    rubric_some_share: float | None = None
    rubric_visible_mm: float | None = None
    rubric_minor_share: float | None = None
    rater_gain_sd: float | None = None
    rater_lapse: float | None = None
    annotator_visible_quantile: float | None = None
    annotator_visible_contrast: float | None = None
    annotator_visible_fraction: float | None = None
    annotator_smooth_mm: float | None = None
    annotator_search_mm: float | None = None
    annotator_gap_mm: float | None = None
    annotator_min_length_mm: float | None = None
    annotator_jitter_mm: float | None = None
    annotator_jitter_corr_mm: float | None = None
    annotator_brush_mm: float | None = None
    annotator_sweep_quantiles: tuple | None = None
    annotator_sweep_fractions: tuple | None = None
    annotator_sweep_contrasts: tuple | None = None

    def __post_init__(self):
        given = {k: v for k, v in SectionParams.as_dict(self).items() if v is not None}
        for name, value in validate_section(self.SECTION, given, type(self).__name__, partial=True).items():
            object.__setattr__(self, name, tuple(value) if isinstance(value, list) else value)

    @classmethod
    def from_section(cls, section: Mapping[str, Any], where: str | None = None) -> "TwinParams":
        """From the ``twin`` section or any part of it (a notebook's ``twin`` parameter).

        Raises
        ------
        ParamsError
            Naming the key (``twin.<key>``) of an unknown or invalid value.
        """
        return cls(**validate_section(cls.SECTION, section, where or "twin parameter", partial=True))

    def as_dict(self) -> dict[str, Any]:
        """The keys given (tuples as lists), in the fields' order: what provenance hashes."""
        return {k: v for k, v in super().as_dict().items() if v is not None}

    def need(self, *names: str) -> "TwinParams":
        """These parameters, checked to hold ``names``.

        Raises
        ------
        ParamsError
            Naming the first key not given (add it to ``schema.TWIN_KEYS`` of the notebook that reads it).
        """
        known = [f.name for f in dataclasses.fields(self)]
        for name in names:
            if name not in known:
                raise ParamsError(f"twin.{name}: no such key (known: {', '.join(known)})")
            if getattr(self, name) is None:
                raise ParamsError(f"twin.{name} was not given: the notebook's 'twin' parameter lacks it "
                                  "(schema.TWIN_KEYS names the twin keys each notebook receives)")
        return self
