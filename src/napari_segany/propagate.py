"""Carry objects through z: each slice is prompted from the object's mask on its neighbour.

From every annotated slice the object is followed outwards, and between two annotated
slices from both ends towards the middle. On each new slice the previous mask is
projected into prompts (by default its box drawn in a little, with the decoder's own
logits of the mask), the decoder predicts the object there, and the run stops where the
object ends: when the new mask overlaps the previous one too little, its predicted
quality drops, its area collapses or leaks, or its signal against the surroundings falls
below half of what it was where the object was drawn. All objects advance together, one
batched decoder call per slice, and where two of them claim the same pixels the one the
decoder is surer of keeps them.

Measured on real 3D nuclei with the 3D protocol (``benchmarks/bench_propagation.py``);
the figures are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage

from .object_ends import MIN_CONTRAST, MIN_SIGNAL_RATIO, standout
from .segmenter import Prompt, _shown, real_array
from .upscale import upscale_region

if TYPE_CHECKING:
    from .segmenter import Prediction, Segmenter

__all__ = [
    "DRAW_IN",
    "PROJECTIONS",
    "TAPER",
    "PropagationCancelled",
    "StopRule",
    "project",
    "propagate_objects",
]

#: How the previous slice's mask becomes the next slice's prompt.
PROJECTIONS = ("box", "points", "box+points", "mask")

DRAW_IN = 0.05
"""How far the projected box is drawn in on each side, as a share of its height and
width, while an object tapers. Objects are mostly drawn where they are clearest and
largest, so away from that slice they taper; a box the size of the last mask holds the
decoder to that size, one drawn in a little lets it follow the object down (on real
nuclei, given each object's true extent: 3D IoU 0.682 against 0.631 with the box as
it is)."""

TAPER = 0.7
"""An object tapers while each slice keeps from this share to all of the area before. A
sharper drop is a split or a loss: the next box is then the whole box of the mask, so
that the decoder can find every branch."""


class PropagationCancelled(Exception):
    """A propagation was asked to stop (its ``cancel`` poll returned True)."""


@dataclass(frozen=True)
class StopRule:
    """When a propagated object is taken to have ended.

    Past its end, SAM still finds *something* where it is told to look (a patch of
    noise inside the projected box), so the rule checks both the decoder's view and the
    image: the new mask must overlap the previous one, keep a plausible area, be rated
    well by the decoder, and keep its signal: out of focus, an object's blurred light
    still looks like an object to SAM, so the run stops where the signal falls below
    about half of the annotated slice's (:mod:`napari_segany.object_ends`).

    Attributes
    ----------
    min_overlap
        Least overlap with the previous slice's mask, as intersection over the smaller
        of the two areas (an IoU would stop at every tip of a shrinking object).
    min_score
        Least predicted IoU (the decoder's own quality estimate).
    min_area_ratio
        Least area of the new mask relative to the previous one (a collapse).
    max_area_ratio
        Most area relative to the previous one (a leak into the background).
    min_area
        Least area in pixels.
    min_contrast_ratio
        Least contrast of the new mask against a ring around it, relative to the
        contrast on the object's strongest annotated slice (0, the default, turns the check off: the
        signal check replaced it). Contrast is the difference of mean intensity inside
        and in the ring over their pooled standard deviation; it needs the volume
        (stores opened without it skip the image checks).
    min_signal_ratio
        Least signal of the new mask, relative to the signal on the object's strongest
        annotated slice (0 turns the check off). Signal is the mean intensity inside
        less the mean in the ring around it; it needs the volume, and an annotated
        object that does not stand out by intensity (contrast below
        :data:`~napari_segany.object_ends.MIN_CONTRAST`) is not judged by it.
    """

    min_overlap: float = 0.5
    min_score: float = 0.3
    min_area_ratio: float = 0.1
    max_area_ratio: float = 2.5
    min_area: int = 16
    min_contrast_ratio: float = 0.0
    min_signal_ratio: float = MIN_SIGNAL_RATIO

    def ends(
        self,
        new: np.ndarray,
        previous: np.ndarray,
        score: float,
        contrast_ratio: float = 1.0,
        signal_ratio: float = 1.0,
    ) -> bool:
        """Whether the object has ended on the slice of ``new``."""
        area, before = int(new.sum()), int(previous.sum())
        if area < self.min_area:
            return True
        if not self.min_area_ratio * before <= area <= self.max_area_ratio * before:
            return True
        overlap = np.logical_and(new, previous).sum() / min(area, before)
        if overlap < self.min_overlap or score < self.min_score:
            return True
        return contrast_ratio < self.min_contrast_ratio or signal_ratio < self.min_signal_ratio

    @property
    def reads_image(self) -> bool:
        """Whether the rule looks at the image (contrast or signal)."""
        return self.min_contrast_ratio > 0 or self.min_signal_ratio > 0


def project(
    mask: np.ndarray,
    projection: str,
    logits: torch.Tensor | None = None,
    draw_in: float = 0.0,
) -> Prompt:
    """Prompts for the next slice from an object's mask on this one.

    ``logits``: the decoder's low-resolution logits of that mask, when it was predicted
    (on an untiled slice); the ``"mask"`` projection prefers them to the boolean mask,
    being the decoder's own language. ``draw_in``: the share of the box's size by which
    the ``"mask"`` projection draws its box in on each side (see :data:`DRAW_IN`).
    """
    ys, xs = np.nonzero(mask)
    box = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], dtype=np.float64)
    if projection == "box":
        return Prompt(box=box)
    if projection == "mask":
        return Prompt(box=_drawn_in(box, draw_in), mask=mask if logits is None else logits)
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    inner = np.array([np.unravel_index(int(np.argmax(depth)), mask.shape)], dtype=np.float64)
    if projection == "points":
        return Prompt(points=inner, labels=np.array([1]))
    if projection == "box+points":
        return Prompt(points=inner, labels=np.array([1]), box=box)
    raise ValueError(f"unknown projection {projection!r}; use one of {', '.join(PROJECTIONS)}")


def _drawn_in(box: np.ndarray, share: float = DRAW_IN) -> np.ndarray:
    """The box drawn in by ``share`` of its size on each side, never below 2 px."""
    size = box[2:] - box[:2]
    inset = np.minimum(size * share, np.maximum(size - 2.0, 0.0) / 2)
    return np.concatenate([box[:2] + inset, box[2:] - inset])


@dataclass
class _Run:
    """One object followed in one direction from a start slice up to a limit (inclusive)."""

    obj: int
    z: int
    step: int
    limit: int
    mask: np.ndarray
    contrast: float | None = None
    signal: float | None = None
    logits: torch.Tensor | None = None
    tapering: bool = False
    """Whether the last step kept a gentle share of the area (see :data:`TAPER`)."""


def _runs(
    obj: int, annotations: Mapping[int, np.ndarray], lo: int, hi: int, direction: str
) -> list[_Run]:
    marks = sorted(annotations)
    runs = []
    if direction in ("both", "backward") and marks[0] > lo:
        runs.append(_Run(obj, marks[0], -1, lo, annotations[marks[0]]))
    for a, b in itertools.pairwise(marks):
        middle = (a + b) // 2
        if middle > a:
            runs.append(_Run(obj, a, 1, middle, annotations[a]))
        if middle + 1 < b:
            runs.append(_Run(obj, b, -1, middle + 1, annotations[b]))
    if direction in ("both", "forward") and marks[-1] < hi:
        runs.append(_Run(obj, marks[-1], 1, hi, annotations[marks[-1]]))
    return runs


def propagate_objects(
    segmenter: Segmenter,
    objects: Sequence[Mapping[int, np.ndarray]],
    *,
    z_range: tuple[int, int] | None = None,
    direction: str = "both",
    projection: str = "mask",
    stop: StopRule | None = None,
    callback: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[np.ndarray]:
    """Carry several objects through the volume at once.

    Parameters
    ----------
    segmenter
        The volume's segmenter.
    objects
        Per object, its annotated slices: ``{z: boolean (Y, X) mask}``.
    z_range
        ``(first, last)`` slices to cover (inclusive); default the whole volume.
    direction
        ``"both"``, ``"forward"`` (increasing z) or ``"backward"`` beyond the outermost
        annotations; between two annotations both ends always meet in the middle.
    projection
        How a mask prompts the next slice: ``"mask"`` (its box and the mask itself, the
        default: it follows objects that split, where a box alone loses a branch),
        ``"box"``, ``"points"`` (the most interior point) or ``"box+points"``.
    stop
        When an object ends (default :class:`StopRule`).
    callback
        Called as ``callback(steps_done, steps_at_most)`` after each step (one slice
        further out for every object still running).
    cancel
        Polled before each step; when it returns True the run stops with
        :class:`PropagationCancelled` and nothing is returned.

    Returns
    -------
    list of numpy.ndarray
        Boolean ``(Z, Y, X)`` per object.

    Raises
    ------
    PropagationCancelled
        ``cancel`` returned True.
    """
    n = len(segmenter.store)
    lo, hi = (0, n - 1) if z_range is None else _z_range(z_range)
    if not 0 <= lo <= hi < n:
        raise ValueError(f"z_range {_shown(z_range)} does not lie within the volume's {n} slices")
    if not isinstance(direction, str) or direction not in ("both", "forward", "backward"):
        raise ValueError(f"direction must be both, forward or backward, not {_shown(direction)}")
    if not isinstance(projection, str) or projection not in PROJECTIONS:
        raise ValueError(
            f"unknown projection {_shown(projection)}; use one of {', '.join(PROJECTIONS)}"
        )
    if stop is not None and not isinstance(stop, StopRule):
        raise TypeError(f"stop must be a StopRule or None, got {type(stop).__name__}")
    rule = stop or StopRule()
    shape = (n, *segmenter.slice_shape)
    results = [np.zeros(shape, dtype=bool) for _ in objects]
    runs: list[_Run] = []
    for i, marked in enumerate(objects):
        if not isinstance(marked, Mapping):
            raise TypeError(
                f"object {i}: give its masks as {{z: mask}}, got {type(marked).__name__}"
            )
        if not marked:
            raise ValueError(f"object {i} has no annotated slice")
        for z, mask in marked.items():
            where = f"object {i}, slice {z!r}"
            if isinstance(z, bool) or not isinstance(z, int | np.integer):
                raise TypeError(f"{where}: a slice index must be an integer")
            if not 0 <= z < n:
                raise ValueError(f"{where}: outside the volume's {n} slices")
            mask = _boolean(mask, where)
            if mask.shape != segmenter.slice_shape:
                raise ValueError(f"{where}: mask {mask.shape}, slices are {shape[1:]}")
            if not mask.any():
                raise ValueError(f"{where}: the mask is empty")
            results[i][z] = mask
        runs += _runs(i, {z: results[i][z] for z in marked}, lo, hi, direction)
    volume = segmenter.store.volume if rule.reads_image else None
    if volume is not None:
        # an object's reference is its strongest annotated slice, wherever a run starts:
        # a run from an annotation at a faint tip must not take the tip for the middle
        strongest: dict[int, tuple[float, float]] = {}
        for i, marked in enumerate(objects):
            measures = [standout(volume.model_slice(z), results[i][z]) for z in marked]
            strongest[i] = max(measures, key=lambda m: abs(m[1]))
        for run in runs:
            run.contrast, run.signal = strongest[run.obj]
    total = max((abs(r.limit - r.z) for r in runs), default=0)
    for step in range(1, total + 1):
        if cancel is not None and cancel():
            raise PropagationCancelled("propagation was cancelled")
        by_slice: dict[int, list[_Run]] = {}
        for run in runs:
            if run.step * (run.limit - run.z) > 0:
                by_slice.setdefault(run.z + run.step, []).append(run)
        if not by_slice:
            break
        finished: list[_Run] = []
        for z, group in by_slice.items():
            prompts = [
                project(run.mask, projection, run.logits, DRAW_IN if run.tapering else 0.0)
                for run in group
            ]
            predictions = segmenter.predict_many(z, prompts, multimask=False)
            masks = _settle(predictions)
            image = volume.model_slice(z) if volume is not None else None
            for run, pred, mask in zip(group, predictions, masks, strict=True):
                contrast_ratio = signal_ratio = 1.0
                if image is not None and mask.any():
                    now_contrast, now_signal = standout(image, mask)
                    if run.contrast:
                        contrast_ratio = now_contrast / run.contrast
                    if run.signal and (run.contrast or 0.0) >= MIN_CONTRAST:
                        signal_ratio = now_signal / run.signal
                if rule.ends(mask, run.mask, pred.score, contrast_ratio, signal_ratio):
                    finished.append(run)
                    continue
                results[run.obj][z] |= mask
                before = int(run.mask.sum())
                run.tapering = TAPER * before <= int(mask.sum()) < before
                run.z, run.mask = z, mask
                # logits belong to one tile window: reuse them only on untiled slices
                run.logits = None if segmenter.store.grid.tiled else pred.logits
        runs = [r for r in runs if all(r is not f for f in finished)]
        if callback is not None:
            callback(step, total)
    return results


def _z_range(z_range: object) -> tuple[int, int]:
    """``(first, last)`` slices, or one line naming what is wrong."""
    lo: object
    hi: object
    try:
        lo, hi = z_range  # type: ignore[misc]  # any object: unpacking it is the check
    except (TypeError, ValueError):
        raise ValueError(f"z_range must be (first, last) slices, got {_shown(z_range)}") from None
    ends = [v for v in (lo, hi) if isinstance(v, int | np.integer) and not isinstance(v, bool)]
    if len(ends) != 2:
        raise TypeError(f"z_range must be two integer slices (first, last), got {_shown(z_range)}")
    return int(ends[0]), int(ends[1])


def _boolean(mask: object, where: str) -> np.ndarray:
    """An annotated mask as booleans: bool, or numbers where nonzero is inside (not NaN)."""
    array = real_array(mask, f"{where}: the mask must be a boolean (Y, X) array")
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise ValueError(f"{where}: the mask holds NaN")
    return array if array.dtype == bool else array != 0


def _settle(predictions: Sequence[Prediction]) -> list[np.ndarray]:
    """The predictions' masks, each pixel claimed by several kept by the surest of them
    (the highest logit there)."""
    masks = [pred.mask for pred in predictions]
    if len(masks) < 2:
        return masks
    claims = np.sum(masks, axis=0, dtype=np.int32)
    ys, xs = np.nonzero(claims > 1)
    if ys.size == 0:
        return masks
    logits = np.full((len(masks), ys.size), -np.inf, dtype=np.float32)
    for i, (pred, mask) in enumerate(zip(predictions, masks, strict=True)):
        mine = mask[ys, xs]
        if mine.any():
            logits[i, mine] = _logits_at(pred, ys[mine], xs[mine])
    winner = logits.argmax(axis=0)
    settled = []
    for i, mask in enumerate(masks):
        lost = mask[ys, xs] & (winner != i)
        if lost.any():
            mask = mask.copy()
            mask[ys[lost], xs[lost]] = False
        settled.append(mask)
    return settled


def _logits_at(pred: Prediction, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The chosen candidate's upscaled logits at pixels of its mask."""
    wy, wx, wy1, wx1 = pred.window
    logits, (y0, x0, _, _) = upscale_region(
        pred.logits, pred._frame, pred._resized, (wy1 - wy, wx1 - wx)
    )
    if logits is None:
        return np.full(ys.size, -np.inf, dtype=np.float32)
    return logits.cpu().numpy()[ys - wy - y0, xs - wx - x0]
