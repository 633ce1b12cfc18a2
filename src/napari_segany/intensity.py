"""Intensity scaling: microscopy values to the 0-255 range the SAM encoders expect.

The limits are decided once (for a whole volume) and then applied to every slice, so
that the same intensity means the same thing in every slice; never min-max per slice.
"""

from __future__ import annotations

import numpy as np


def percentile_limits(
    sample: np.ndarray, low: float = 0.5, high: float = 99.5
) -> tuple[float, float]:
    """Robust intensity limits of a sample of the data (finite values only).

    Raises
    ------
    ValueError
        If the sample holds no finite value.
    """
    values = np.asarray(sample)
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("cannot choose intensity limits: the data hold no finite value")
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:  # a flat image: keep a unit range so it maps to a constant
        hi = lo + 1.0
    return float(lo), float(hi)


def scale_to_model(image: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """Map ``limits`` linearly to 0-255 and clip; returns float32 of the same shape."""
    lo, hi = limits
    out = (np.asarray(image, dtype=np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(out, 0.0, 255.0, out=out)
