"""ultrabones: a reproducible UltraBones100k.

CT-derived bone labels for tracked ultrasound, the bone-segmentation benchmark
built on them, and a digital twin that stands in for the real dataset.

One module per concept:

- :mod:`ultrabones.core.geometry`  poses, the Eq. 1 pixel-to-CT chain, interpolation
- :mod:`ultrabones.core.dataset`   the released dataset layouts, validated I/O
- :mod:`ultrabones.core.params`    parameter profiles and their validation
- :mod:`ultrabones.core.paths`     where every file of a run lives
- :mod:`ultrabones.pipeline.runner`    executing notebooks with papermill
"""

__version__ = "0.1.0"

from ultrabones.core.errors import DatasetError, NotebookError, ParamsError, UltrabonesError  # noqa: F401
