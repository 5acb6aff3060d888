"""Stage 04's parameters: the ``training`` section of a profile, typed (:class:`TrainingParams`).

Its own module so that the stage (:mod:`ultrabones.segmentation.training`) and the modes it runs
(:mod:`~ultrabones.segmentation.transfer`, :mod:`~ultrabones.segmentation.finetune`) can all import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ultrabones.core.params import SectionParams
from ultrabones.segmentation import segdata


@dataclass(frozen=True)
class TrainingParams(SectionParams):
    """The ``training`` section's keys, typed (units and ranges: ``schema.SCHEMA["training"]``).

    Build it with :meth:`~ultrabones.core.params.SectionParams.from_section`; construction, and so
    ``dataclasses.replace``, validates every value against the schema and checks that ``memory_budget_mb``
    holds a frame at ``input_size``; lists become tuples. :meth:`as_dict` gives the section back as plain data,
    which is what the Lightning module's hyperparameters, the checkpoint's metadata and the resume key of
    :mod:`ultrabones.segmentation.fit` hold.
    """

    SECTION: ClassVar[str] = "training"

    arch: str
    encoder: str
    encoder_weights: str | None
    input_size: tuple[int, int]
    label_band_px: int
    norm_mean: float | None
    norm_std: float | None
    train_specimens: tuple[str, ...] | None
    val_specimens: tuple[str, ...] | None
    test_specimens: tuple[str, ...] | None
    n_folds: int
    memory_budget_mb: float
    max_val_frames_per_specimen: int | None
    augment: bool
    epochs: int
    samples_per_epoch: int | None
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    lr_step_epochs: int
    lr_gamma: float
    dice_weight: float
    bce_weight: float
    tv_weight: float
    skeleton_weight: float
    threshold: float
    f1_sigma_mm: float
    accelerator: str
    devices: int | None
    precision: str
    deterministic: bool
    num_workers: int
    threads: int | None
    resume: bool
    expect_learning: bool
    mode: str
    init_checkpoint: str | None
    finetune_test_fraction: float
    finetune_gap_frames: int
    finetune_epochs: int
    finetune_lr: float

    def __post_init__(self):
        """Validate against the schema, then that ``memory_budget_mb`` holds one frame at ``input_size``.

        Raises
        ------
        ParamsError
            Naming the key (see ``params.validate_section`` and ``segdata.frames_in_budget``).
        """
        super().__post_init__()
        segdata.frames_in_budget(self.input_size, self.memory_budget_mb)
