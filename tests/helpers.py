"""Small helpers the tests share."""

from __future__ import annotations

import numpy as np

__all__ = ["iou"]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    return float((a & b).sum() / max((a | b).sum(), 1))
