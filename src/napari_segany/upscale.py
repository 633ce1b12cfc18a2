"""Mask logits from the decoder's 256 x 256 grid to slice pixels, only where the object is.

SAM upscales logits bilinearly to the padded 1024 x 1024 model frame, crops the padding
and resizes bilinearly to the image. Both steps are separable and linear, so the whole
map is ``rows @ logits @ cols.T`` with two small matrices per image size. A positive
output pixel needs a positive logit among the few it is interpolated from, so the
mask's pixels all lie where the rows and columns touch the positive part of the grid:
only that region is computed, with the bands of the matrices that it uses.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "AxisMap",
    "axis_map",
    "upscale_mask",
    "upscale_region",
]


def _bilinear(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of 1-D bilinear resizing with half-pixel centres.

    The same rule as ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``: source = (i + 0.5) * n_in / n_out - 0.5, clamped at 0.
    """
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights


class AxisMap:
    """One axis of the upscaling: the weights and, per output pixel, the grid span it reads."""

    def __init__(self, n_low: int, n_frame: int, n_resized: int, n_out: int) -> None:
        to_frame = _bilinear(n_low, n_frame)[:n_resized]
        weights = _bilinear(n_resized, n_out) @ to_frame
        nonzero = weights != 0
        # monotonic in the output index: output pixel i reads grid cells first[i]..last[i]
        self.first = np.argmax(nonzero, axis=1)
        self.last = n_low - 1 - np.argmax(nonzero[:, ::-1], axis=1)
        self.weights = torch.from_numpy(weights.astype(np.float32))

    def outputs_reading(self, lo: int, hi: int) -> tuple[int, int]:
        """The output pixels whose value depends on grid cells ``lo..hi-1``."""
        start = int(np.searchsorted(self.last, lo, side="left"))
        stop = int(np.searchsorted(self.first, hi, side="left"))
        return start, stop

    def cells_read_by(self, start: int, stop: int) -> tuple[int, int]:
        """The grid cells that output pixels ``start..stop-1`` read."""
        return int(self.first[start]), int(self.last[stop - 1]) + 1


@lru_cache(maxsize=32)
def axis_map(n_low: int, n_frame: int, n_resized: int, n_out: int) -> AxisMap:
    """Grid to frame, crop the padding, frame to image, along one axis (cached per size)."""
    return AxisMap(n_low, n_frame, n_resized, n_out)


def upscale_region(
    low_res: torch.Tensor,
    frame: int,
    resized: tuple[int, int],
    original: tuple[int, int],
) -> tuple[torch.Tensor | None, tuple[int, int, int, int]]:
    """Upscaled logits of the region that can hold the mask, and that region.

    Parameters
    ----------
    low_res
        ``(h, w)`` logits on the decoder's grid (256 x 256).
    frame
        Side of the padded model input (1024).
    resized
        The image's size inside the model input.
    original
        The image's size.

    Returns
    -------
    logits, (y0, x0, y1, x1)
        Logits of ``original[y0:y1, x0:x1]``; None and an empty region when no logit is
        positive (the mask is empty).
    """
    positive = low_res > 0
    rows, cols = torch.nonzero(positive.any(dim=1)), torch.nonzero(positive.any(dim=0))
    if rows.numel() == 0:
        return None, (0, 0, 0, 0)
    h_map = axis_map(low_res.shape[0], frame, resized[0], original[0])
    w_map = axis_map(low_res.shape[1], frame, resized[1], original[1])
    y0, y1 = h_map.outputs_reading(int(rows[0]), int(rows[-1]) + 1)
    x0, x1 = w_map.outputs_reading(int(cols[0]), int(cols[-1]) + 1)
    a, b = h_map.cells_read_by(y0, y1)
    c, d = w_map.cells_read_by(x0, x1)
    hw = h_map.weights[y0:y1, a:b].to(low_res.device)
    ww = w_map.weights[x0:x1, c:d].to(low_res.device)
    return hw @ low_res[a:b, c:d].float() @ ww.T, (y0, x0, y1, x1)


def upscale_mask(
    low_res: torch.Tensor, frame: int, resized: tuple[int, int], original: tuple[int, int]
) -> np.ndarray:
    """The boolean ``original``-shaped mask of ``low_res`` logits, computed where it can be."""
    mask = np.zeros(original, dtype=bool)
    logits, (y0, x0, y1, x1) = upscale_region(low_res, frame, resized, original)
    if logits is not None:
        mask[y0:y1, x0:x1] = (logits > 0).cpu().numpy()
    return mask
