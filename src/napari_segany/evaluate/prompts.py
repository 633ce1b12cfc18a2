"""Where the interactive evaluation puts its prompts: the simulated user.

The first prompt is one positive point at an object's deepest interior point or the
object's tight box; each correction is one click at the deepest point of the larger error
region, positive where the object was missed, negative where too much was taken. All
positions are deterministic, so two runs (or two models) get the same first prompts.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "bounding_box",
    "corrective_click",
    "deepest_point",
    "error_regions",
    "tight_box",
]


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, x0, y1, x1)`` of a boolean mask's pixels, ends exclusive; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def tight_box(mask: np.ndarray) -> np.ndarray:
    """The box prompt of an object: ``(y0, x0, y1, x1)`` in slice pixels.

    The box runs along the pixels' outer edges (``y1``, ``x1`` one past the last pixel), as
    micro-sam's prompts do (``regionprops`` bounding boxes) and as :class:`Segmenter` boxes a
    drawn mask. This is the one place that decides the box convention.

    Raises
    ------
    ValueError
        The mask is empty.
    """
    box = bounding_box(mask)
    if box is None:
        raise ValueError("an empty mask has no box")
    return np.array(box, dtype=np.float64)


def deepest_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of a boolean mask farthest from everything outside it, ``(y, x)``.

    The argmax of the Euclidean distance transform, with the image border counting as
    outside; ties go to the first pixel in row-major order.

    Raises
    ------
    ValueError
        The mask is empty.
    """
    box = bounding_box(mask)
    if box is None:
        raise ValueError("an empty mask has no interior point")
    y0, x0, y1, x1 = box
    # Cropping to the pixels' box and padding by one is exact: outside the box the mask is
    # empty, and the padding makes the image border count as outside.
    distance = ndimage.distance_transform_edt(np.pad(mask[y0:y1, x0:x1], 1))[1:-1, 1:-1]
    dy, dx = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return y0 + int(dy), x0 + int(dx)


def error_regions(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The missed pixels (``truth & ~pred``) and the extra ones (``pred & ~truth``)."""
    return truth & ~pred, pred & ~truth


def corrective_click(truth: np.ndarray, pred: np.ndarray) -> tuple[tuple[int, int], int] | None:
    """The next click of a user correcting ``pred`` towards ``truth``.

    Parameters
    ----------
    truth, pred
        Boolean masks of the same shape: the object and the current prediction.

    Returns
    -------
    tuple or None
        ``((y, x), label)``: at the deepest point of the larger error region (more pixels;
        missed pixels win a tie), label 1 (positive) for missed pixels, 0 (negative) for
        extra ones. None when the prediction is already perfect.
    """
    missed, extra = error_regions(truth, pred)
    n_missed, n_extra = int(np.count_nonzero(missed)), int(np.count_nonzero(extra))
    if n_missed == 0 and n_extra == 0:
        return None
    if n_missed >= n_extra:
        return deepest_point(missed), 1
    return deepest_point(extra), 0
