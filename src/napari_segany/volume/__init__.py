"""Volumes: images and stacks opened lazily, slice by slice (TIFF, zarr, OME-Zarr, arrays),
their axes, and their intensities scaled for the model.
"""

from __future__ import annotations

from .options import VolumeOptions
from .volume import FINGERPRINT_PIXELS, Volume, open_volume

__all__ = [
    "FINGERPRINT_PIXELS",
    "Volume",
    "VolumeOptions",
    "open_volume",
]
