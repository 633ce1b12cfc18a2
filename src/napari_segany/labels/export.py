"""Labels out of OME-Zarr: TIFF files for Fiji, ImageJ and other tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from .layout import read_labels

__all__ = [
    "UINT16_MAX",
    "write_tiff",
]

UINT16_MAX = int(np.iinfo(np.uint16).max)


def write_tiff(array: zarr.Array, path: Path, *, imagej: bool, top: int) -> Path:
    """Write the (Z, Y, X) labels ``array`` to ``path``, one page per slice, never all in memory.

    ``imagej=False`` keeps uint32 with tifffile's shape metadata; ImageJ hyperstacks have no
    32-bit integer type, so ``imagej=True`` writes uint16 and refuses a largest id ``top``
    above 65535.
    """
    import tifffile  # only exports pay for the import

    if imagej and top > UINT16_MAX:
        raise ValueError(f"ids up to {top} do not fit an ImageJ TIFF (uint16); use imagej=False")
    dtype = np.dtype(np.uint16 if imagej else np.uint32)
    pages = (read_labels(array, z).astype(dtype) for z in range(array.shape[0]))
    tifffile.imwrite(
        path,
        pages,
        shape=tuple(array.shape),
        dtype=dtype,
        imagej=imagej,
        photometric="minisblack",
        metadata={"axes": "ZYX"},
    )
    return path
