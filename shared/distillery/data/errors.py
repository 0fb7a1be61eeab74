"""The one error a bad data set raises."""

from __future__ import annotations


class DatasetError(ValueError):
    """A data set that cannot be read as it is: the message names the file or the split folder.

    Raised for a corrupt image, a mask whose size differs from its image, an unknown label value,
    an image without a mask (or a mask without an image), and an empty or missing split. Nothing
    is ever skipped silently.
    """
