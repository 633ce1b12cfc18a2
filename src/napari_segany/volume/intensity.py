"""Intensity scaling: microscopy values to the 0-255 range the SAM encoders expect.

The limits are decided once (for a whole volume) and then applied to every slice, so
that the same intensity means the same thing in every slice; never min-max per slice.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MIN_RANGE",
    "percentile_limits",
    "scale_to_model",
]

MIN_RANGE = 1e-30
"""Narrower intensity ranges count as flat (their scale factor would overflow)."""


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
    lo, hi = (float(v) for v in np.percentile(values.astype(np.float64, copy=False), [low, high]))
    if not hi - lo > MIN_RANGE:  # flat: keep a range (1, or more where 1 is below precision)
        step = max(1.0, abs(lo) * 1e-6)
        hi = lo + step
        if not np.isfinite(hi):
            lo, hi = lo - step, lo
    return float(lo), float(hi)


_FLOAT32_SAFE = 1e30
"""Values and scale factors below this stay finite through the float32 arithmetic."""


def scale_to_model(image: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """Map ``limits`` linearly to 0-255 and clip; returns float32 of the same shape.

    Works in float32, or in float64 where values or limits are beyond float32's safe range.
    """
    lo, hi = float(limits[0]), float(limits[1])
    scale = 127.5 / (hi / 2 - lo / 2)  # halves: hi - lo may be beyond float64
    image = np.asarray(image)
    wide = max(abs(lo), abs(hi), scale) > _FLOAT32_SAFE or (
        image.dtype.kind == "f" and image.size > 0 and float(np.abs(image).max()) > _FLOAT32_SAFE
    )
    if wide:
        out64 = image.astype(np.float64) * scale - lo * scale  # no difference to overflow
        return np.clip(out64, 0.0, 255.0).astype(np.float32)
    out = (image.astype(np.float32, copy=True) - np.float32(lo)) * np.float32(scale)
    return np.clip(out, 0.0, 255.0, out=out)
