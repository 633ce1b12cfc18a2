"""Better masks than SAM's IoU head from the same decoder outputs: the refined click.

SAM answers a lone click with three candidates, nested as sub-part, part and whole, and
picks one by its predicted IoU. On microscopy that head prefers the larger candidates: the
clump of touching nuclei, or the whole field, over the nucleus clicked. The object a
microscopist clicks is nearly always the smallest whole thing under the click, so the
refined path takes the smallest candidate that is more than a speck.

A box has one answer in SAM (its single-mask output), but the three candidates come from
the same decoder pass; the refined path takes whichever of the four fills the box best:
the one whose own bounding box agrees most with the box drawn.

Measured with the field's protocol on real nuclei and EM (``benchmarks/bench_accuracy.py``);
the figures are in ``docs/benchmarks.md``. Neither costs an extra decoder call, only sums
over the low-resolution logits.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MIN_AREA", "choose_candidates", "choose_for_box"]

MIN_AREA = 10.0
"""Candidates covering fewer image pixels than this are specks, never chosen."""


def choose_candidates(
    low_res_logits: torch.Tensor,
    scores: np.ndarray,
    *,
    resized: tuple[int, int],
    original: tuple[int, int],
    min_area: float = MIN_AREA,
) -> np.ndarray:
    """For each object, the smallest candidate mask that covers at least ``min_area`` pixels.

    Parameters
    ----------
    low_res_logits
        ``(B, K, 256, 256)`` decoder logits of B objects' K candidates.
    scores
        ``(B, K)`` predicted IoU; where no candidate is large enough, the best scored one
        is taken, as SAM does.
    resized, original
        The image's size in the model frame and in pixels: the logits' grid covers
        ``resized / 4`` cells, each of ``(4 * original / resized)`` squared image pixels.
    min_area
        Image pixels below which a candidate is a speck.

    Returns
    -------
    numpy.ndarray
        ``(B,)`` the chosen candidate of each object.
    """
    cells = (low_res_logits > 0).sum(dim=(-1, -2)).cpu().numpy()  # (B, K)
    pixels_per_cell = (4.0 * original[0] / resized[0]) * (4.0 * original[1] / resized[1])
    area = cells * pixels_per_cell
    large_enough = area >= min_area
    smallest = np.where(large_enough, area, np.inf).argmin(axis=1)
    return np.where(large_enough.any(axis=1), smallest, np.asarray(scores).argmax(axis=1))


def choose_for_box(
    low_res_logits: torch.Tensor,
    scores: np.ndarray,
    boxes: np.ndarray,
    *,
    resized: tuple[int, int],
    original: tuple[int, int],
) -> np.ndarray:
    """For each object, the candidate whose bounding box agrees best with the box prompt.

    Parameters
    ----------
    low_res_logits
        ``(B, K, 256, 256)`` logits of the candidates (the single mask first).
    scores
        ``(B, K)`` predicted IoU, a tie-breaker.
    boxes
        ``(B, 4)`` the box prompts ``(y0, x0, y1, x1)`` in image pixels.
    resized, original
        The image's size in the model frame and in pixels (see :func:`choose_candidates`).

    Returns
    -------
    numpy.ndarray
        ``(B,)`` the chosen candidate of each object.
    """
    positive = (low_res_logits > 0).cpu().numpy()  # (B, K, 256, 256)
    rows, cols = positive.any(axis=3), positive.any(axis=2)  # (B, K, 256)
    cells = np.arange(positive.shape[-1])
    agreement = np.zeros(positive.shape[:2])
    # image pixels to grid cells: resized / original model pixels each, 4 pixels a cell
    scale = np.array([resized[0] / original[0], resized[1] / original[1]] * 2) / 4.0
    grid = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
    for b, k in np.ndindex(*agreement.shape):
        r, c = cells[rows[b, k]], cells[cols[b, k]]
        if r.size:
            found = (r[0], c[0], r[-1] + 1.0, c[-1] + 1.0)
            agreement[b, k] = _box_iou(found, grid[b])
    return (agreement + 1e-3 * np.asarray(scores)).argmax(axis=1)


def _box_iou(a: tuple[float, ...], b: np.ndarray) -> float:
    dy = min(a[2], b[2]) - max(a[0], b[0])
    dx = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(dy, 0.0) * max(dx, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
