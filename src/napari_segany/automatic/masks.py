"""Candidate masks of one tile window from point prompts.

The points come from the window's plan (:mod:`napari_segany.automatic.plan`: grids coarse
to fine, perhaps seeds, each batch leaving out what the masks kept so far explain). Every
point is a one-click prompt; the decoder answers each with three candidate masks (whole,
part, sub-part) and their predicted IoU. Candidates are kept when the
decoder rates them well (predicted IoU) and when they are *stable*: thresholding their
logits a little higher or lower barely changes them (SAM's stability score). A kept
candidate is cut to its bounding box and carried as that crop, so that hundreds of
candidates of a large window cost little memory.

Logits are upscaled from the decoder's 256 x 256 grid to window pixels only over the
region the candidate can reach (the axis maps of :mod:`napari_segany.upscale`), shifted
by the stability offset so that the region also holds the looser of the two thresholds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage

from ..upscale import axis_map
from .plan import Plan

if TYPE_CHECKING:
    from ..model import ImageEmbedding, SamModel
    from ..tiling import Window
    from .params import AutomaticParams

#: How far the stability on the decoder's 256 x 256 grid may fall below the threshold for
#: a mask still to be upscaled and scored exactly; on the test nuclei the grid's score
#: differed from the exact one by at most 0.04 (256 x 256 slices) and 0.09 (512 x 512).
ROUGH_STABILITY_MARGIN = 0.15
#: The same for the area, as a fraction of the window: the grid's cells differ from pixels
#: only along the mask's edge, so a mask this far above the limit on the grid is not
#: within it in pixels.
ROUGH_AREA_MARGIN = 0.05

__all__ = [
    "Candidate",
    "SegmentationCancelled",
    "clean_mask",
    "stability_score",
    "window_candidates",
]


class SegmentationCancelled(Exception):
    """Automatic segmentation was asked to stop (its ``cancel`` poll returned True)."""


@dataclass(frozen=True)
class Candidate:
    """One candidate object on a slice.

    Attributes
    ----------
    box
        ``(y0, x0, y1, x1)`` tight box in slice pixels, stops exclusive.
    mask
        Boolean crop of the object, of the box's shape.
    score
        The decoder's predicted IoU.
    stability
        The stability score of its logits.
    """

    box: tuple[int, int, int, int]
    mask: np.ndarray
    score: float
    stability: float

    @property
    def area(self) -> int:
        """Pixels in the mask."""
        return int(np.count_nonzero(self.mask))


def stability_score(logits: np.ndarray, offset: float, threshold: float = 0.0) -> np.ndarray:
    """SAM's stability score of mask logits ``(..., H, W)``: ``(...)`` in 0..1.

    The IoU of the mask thresholded at ``threshold + offset`` with the mask thresholded at
    ``threshold - offset`` (the first lies inside the second). An empty loose mask
    scores 0.
    """
    logits = np.asarray(logits)
    tight = np.count_nonzero(logits > threshold + offset, axis=(-2, -1))
    loose = np.count_nonzero(logits > threshold - offset, axis=(-2, -1))
    return np.divide(tight, loose, out=np.zeros(np.shape(loose)), where=loose > 0)


def clean_mask(mask: np.ndarray, min_area: int, max_hole_area: int) -> np.ndarray:
    """Drop islands smaller than ``min_area`` and fill holes up to ``max_hole_area`` pixels.

    Holes are background regions that do not reach the crop's border (the crop is a tight
    box, so anything reaching its border is outside the object).
    """
    out = mask
    if min_area > 1:
        islands, n = ndimage.label(out)
        if n > 1 or (n == 1 and out.sum() < min_area):
            sizes = np.bincount(islands.ravel(), minlength=n + 1)
            small = sizes < min_area
            small[0] = False
            if small.any():
                out = out & ~small[islands]
    if max_hole_area > 0:
        padded = np.pad(~out, 1, constant_values=True)
        holes, n = ndimage.label(padded)
        if n > 1:
            sizes = np.bincount(holes.ravel(), minlength=n + 1)
            fill = sizes <= max_hole_area
            fill[0] = False
            fill[holes[0, 0]] = False  # the outside, which the padding joined into one
            if fill.any():
                out = out | fill[holes][1:-1, 1:-1]
    return out


def _tight(mask: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (y0, x0, y1, x1), mask[y0:y1, x0:x1]


def _touches_inner_edge(
    box: tuple[int, int, int, int], window: Window, slice_shape: tuple[int, int], margin: int
) -> bool:
    """Whether a box in slice pixels comes within ``margin`` of an edge of ``window``
    that is not the slice's border (the object may go on in the next window)."""
    y0, x0, y1, x1 = window
    h, w = slice_shape
    return bool(
        (y0 > 0 and box[0] < y0 + margin)
        or (x0 > 0 and box[1] < x0 + margin)
        or (y1 < h and box[2] > y1 - margin)
        or (x1 < w and box[3] > x1 - margin)
    )


def window_candidates(
    model: SamModel,
    embedding: ImageEmbedding,
    window: Window,
    slice_shape: tuple[int, int],
    params: AutomaticParams,
    cancel: Callable[[], bool] | None = None,
    image: np.ndarray | None = None,
) -> list[Candidate]:
    """The candidates that pass the quality filters on one window, in slice pixels.

    Parameters
    ----------
    model
        Decodes the prompts.
    embedding
        The window's embedding.
    window
        ``(y0, x0, y1, x1)`` of the window in the slice.
    slice_shape
        ``(Y, X)`` of the slice.
    params
        Grid, batch size, thresholds, area limits and edge margin; ``params.mode`` says
        which points are decoded (:mod:`napari_segany.automatic.plan`).
    cancel
        Polled before each batch of points.
    image
        The window's pixels (``(h, w)`` or ``(h, w, 3)``), for the seeds and the
        background hint; None: neither (``"seeded"`` runs as ``"sparse"``).

    Raises
    ------
    SegmentationCancelled
        ``cancel`` returned True.
    """
    height, width = embedding.original_size
    max_area = params.max_area_fraction * height * width
    offset = params.stability_offset
    plan = Plan.for_window(params, (height, width), image)
    rows, cols = (-(-n // 4) for n in embedding.resized_size)  # the image on the 256 grid
    size = params.points_per_batch or batch_size(embedding, params.decoder_memory_mb)
    found: list[Candidate] = []
    for batch in plan.batches(size):
        if cancel is not None and cancel():
            raise SegmentationCancelled("automatic segmentation was cancelled")
        decoded = model.decode(
            embedding,
            points=batch[:, None, :],
            labels=np.ones((len(batch), 1), dtype=np.int64),
            multimask=params.multimask,
        )
        per_point = decoded.iou.shape[-1]
        scores = decoded.iou.float().reshape(-1).cpu().numpy()
        good = np.flatnonzero(scores >= params.pred_iou_threshold)
        if good.size == 0:
            continue
        low_res = decoded.low_res_logits.reshape(-1, *decoded.low_res_logits.shape[-2:])
        logits = low_res[torch.from_numpy(good)].float().cpu().numpy()
        # a cheap first look on the decoder's grid (inside the image, not the padding)
        # spares upscaling the clearly unstable and the far too large (most candidates
        # of a sparse image: a point in the background is answered with the background);
        # the stability and area that count are measured on window pixels
        inside = logits[:, :rows, :cols]
        rough_stability = stability_score(inside, offset)
        rough_fraction = np.count_nonzero(inside > 0, axis=(1, 2)) / (rows * cols)
        plausible = (rough_stability >= params.stability_threshold - ROUGH_STABILITY_MARGIN) & (
            rough_fraction <= params.max_area_fraction + ROUGH_AREA_MARGIN
        )
        smallest: dict[int, Candidate] = {}  # per point, its smallest kept mask
        for k, logit in zip(good[plausible], logits[plausible], strict=True):
            candidate = _candidate(
                logit + offset, float(scores[k]), model.image_size, embedding, offset
            )
            if candidate is None or candidate.stability < params.stability_threshold:
                continue
            area = candidate.area
            if area < params.min_area or area > max_area:
                continue
            (y0, x0, _, _), (by0, bx0, by1, bx1) = window, candidate.box
            box = (by0 + y0, bx0 + x0, by1 + y0, bx1 + x0)
            if _touches_inner_edge(box, window, slice_shape, params.edge_margin):
                continue
            point = int(k) // per_point
            if point not in smallest or area < smallest[point].area:
                smallest[point] = candidate
            found.append(Candidate(box, candidate.mask, candidate.score, candidate.stability))
        for candidate in smallest.values():
            plan.found(candidate.box, candidate.mask)
    return found


#: Bytes of working memory per point prompt in one decoder call, per image token (a
#: 64 x 64 embedding has 4096): measured with MobileSAM's decoder on the CPU.
BYTES_PER_PROMPT_TOKEN = 9000


def batch_size(embedding: ImageEmbedding, memory_mb: float) -> int:
    """Points per decoder call whose working memory stays within ``memory_mb`` MiB."""
    per_point = BYTES_PER_PROMPT_TOKEN * int(np.prod(embedding.features.shape[-2:]))
    return max(1, int(memory_mb * 2**20 // per_point))


def _candidate(
    shifted: np.ndarray, score: float, frame: int, embedding: ImageEmbedding, offset: float
) -> Candidate | None:
    """Upscale one candidate's logits (shifted up by ``offset``) where they can be positive;
    its stability and its mask, as a crop of its tight box in window pixels.

    The same two matrix products as :func:`napari_segany.upscale.upscale_region`, in NumPy:
    on a busy CPU each small torch operation can wait milliseconds for its thread pool,
    and there are thousands of candidates per slice.
    """
    positive = shifted > 0
    rows, cols = np.flatnonzero(positive.any(axis=1)), np.flatnonzero(positive.any(axis=0))
    if rows.size == 0:
        return None
    (h, w), (rh, rw) = embedding.original_size, embedding.resized_size
    h_map = axis_map(shifted.shape[0], frame, rh, h)
    w_map = axis_map(shifted.shape[1], frame, rw, w)
    y0, y1 = h_map.outputs_reading(int(rows[0]), int(rows[-1]) + 1)
    x0, x1 = w_map.outputs_reading(int(cols[0]), int(cols[-1]) + 1)
    a, b = h_map.cells_read_by(y0, y1)
    c, d = w_map.cells_read_by(x0, x1)
    region = (
        h_map.weights.numpy()[y0:y1, a:b] @ shifted[a:b, c:d] @ w_map.weights.numpy()[x0:x1, c:d].T
    )
    # region holds logits + offset: > 0 is the loose mask, > offset the mask, > 2 offset
    # the tight one (bilinear weights sum to one, so the shift passes through unchanged)
    loose = int(np.count_nonzero(region > 0))
    tight = int(np.count_nonzero(region > 2 * offset))
    cut = _tight(region > offset)
    if cut is None or loose == 0:
        return None
    (by0, bx0, by1, bx1), crop = cut
    box = (by0 + y0, bx0 + x0, by1 + y0, bx1 + x0)
    return Candidate(box, crop, score, tight / loose)
