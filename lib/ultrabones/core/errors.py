"""Exception types raised where input enters the package.

Every message names the file, row, key or pixel value at fault, so that a
person can act on it without reading a traceback.
"""


class UltrabonesError(Exception):
    """Base class of the package's own errors."""


class DatasetError(UltrabonesError):
    """A dataset file is missing, unreadable or violates the released format."""


class ParamsError(UltrabonesError):
    """A parameter file or override has an unknown key, wrong type or bad value."""


class NotebookError(UltrabonesError):
    """A notebook failed while being executed by the runner."""


class TruthWallError(UltrabonesError):
    """Code outside ``ultrabones.twin`` opened a file under the twin's truth folder (``ultrabones.twin.wall``)."""
