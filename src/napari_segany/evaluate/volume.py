"""The 3D protocol: one prompt on each object's largest slice, then carry it through z.

Every object of a volume's ground truth gets one prompt on the slice where it is largest
(its deepest interior point there, or its tight box), the Segmenter predicts the mask on
that slice and :meth:`~napari_segany.Segmenter.propagate` carries it through the volume.
The scores per object: the 3D IoU with the truth and the z-extent error (how many slices
the predicted first and last slices are off, added up); over objects: mean 3D IoU, mSA
and SA50 (each prediction paired with its own object) and the median z-extent error.

With corrections, a simulated user then fixes the worst slice (the one with the most
wrong pixels that was not annotated yet) and the object is carried again from every
annotated slice: up to three corrective clicks there (positive on missed pixels,
negative on extra ones, as in the 2D protocol), keeping the best mask, where the object
is; where it is not, the word that the object has ended before that slice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from ..propagate import propagate_objects
from ..scores import paired_accuracy
from ..segmenter import Prompt, Segmenter
from .prompts import corrective_click, deepest_point, tight_box

if TYPE_CHECKING:
    import torch

__all__ = ["PropagationReport", "evaluate_propagation", "objects_in_3d"]

CHUNK = 16
"""Objects carried through z together (one batched decoder call per slice)."""

CLICKS_PER_SLICE = 3
"""Corrective clicks at most in one correction of a slice."""

GOOD_ENOUGH = 0.9
"""A slice's IoU at which the simulated user stops clicking on it."""


@dataclass
class PropagationReport:
    """What :func:`evaluate_propagation` measured.

    Attributes
    ----------
    start
        ``"point"`` or ``"box"`` on each object's largest slice.
    labels
        ``(objects,)`` the label id of each object.
    ious
        ``(objects,)`` 3D IoU of each carried object with its truth.
    z_errors
        ``(objects,)`` slices the predicted first and last slices are off, added up.
    seconds
        Wall time of prompting and propagation (embedding not included).
    model, refine
        The model's name and the Segmenter's ``refine`` setting.
    corrected_ious
        ``(objects, corrections)`` 3D IoU after each correction on the worst slice.
    """

    start: str
    labels: np.ndarray
    ious: np.ndarray
    z_errors: np.ndarray
    seconds: float
    model: str
    refine: bool
    corrected_ious: np.ndarray | None = None

    @property
    def mean_iou_after_corrections(self) -> list[float]:
        """Mean 3D IoU after 1, 2, ... corrections (empty without corrections)."""
        if self.corrected_ious is None or self.corrected_ious.size == 0:
            return []
        return [float(v) for v in self.corrected_ious.mean(axis=0)]

    @property
    def n_objects(self) -> int:
        """Objects evaluated."""
        return int(self.labels.size)

    @property
    def mean_iou(self) -> float:
        """Mean 3D IoU over objects."""
        return float(self.ious.mean())

    @property
    def msa(self) -> float:
        """Mean segmentation accuracy over IoU 0.5:0.95, each prediction with its object."""
        return float(paired_accuracy(self.ious).mean())

    @property
    def sa50(self) -> float:
        """Segmentation accuracy at IoU 0.5."""
        return float(paired_accuracy(self.ious)[0])

    @property
    def median_z_error(self) -> float:
        """Median over objects of the z-extent error, in slices."""
        return float(np.median(self.z_errors))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary and per-object scores."""
        return {
            "start": self.start,
            "model": self.model,
            "refine": self.refine,
            "objects": self.n_objects,
            "mean_iou": self.mean_iou,
            "msa": self.msa,
            "sa50": self.sa50,
            "median_z_error": self.median_z_error,
            "seconds": self.seconds,
            "seconds_per_object": self.seconds / max(self.n_objects, 1),
            "mean_iou_after_corrections": self.mean_iou_after_corrections,
            "per_object": {
                "label": self.labels.tolist(),
                "iou": self.ious.tolist(),
                "z_error": self.z_errors.tolist(),
                "corrected_iou": []
                if self.corrected_ious is None
                else self.corrected_ious.tolist(),
            },
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`as_dict` as JSON; returns the path."""
        out = Path(path)
        out.write_text(json.dumps(self.as_dict(), indent=2))
        return out

    def table(self) -> str:
        """A few lines for the terminal."""
        after = self.mean_iou_after_corrections
        corrected = []
        if after:
            steps = ", ".join(f"{v:.3f}" for v in after)
            corrected = [f"after 1..{len(after)} corrections on the worst slice: {steps}"]
        return "\n".join(
            [
                f"3D evaluation: {self.model}, start={self.start} on each object's largest "
                f"slice, then propagated; refine={self.refine}, {self.n_objects} object(s)",
                f"mean 3D IoU     {self.mean_iou:.3f}",
                f"mSA / SA50      {self.msa:.3f} / {self.sa50:.3f}",
                f"z-extent error  median {self.median_z_error:.1f} slices, "
                f"mean {self.z_errors.mean():.2f}",
                f"time            {self.seconds:.1f} s, "
                f"{self.seconds / max(self.n_objects, 1):.2f} s per object",
                *corrected,
            ]
        )


def objects_in_3d(truth: np.ndarray) -> list[tuple[int, tuple[slice, ...]]]:
    """Each label id of a ``(Z, Y, X)`` truth and the box (slices) around its voxels."""
    ids = np.unique(truth)
    ids = ids[ids != 0]
    boxes = ndimage.find_objects(truth.astype(np.int64, copy=False))
    return [(int(i), boxes[int(i) - 1]) for i in ids if boxes[int(i) - 1] is not None]


def evaluate_propagation(
    segmenter: Segmenter,
    truth: np.ndarray,
    *,
    start: str = "box",
    corrections: int = 0,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
) -> PropagationReport:
    """Prompt each object on its largest slice, propagate it, and score it in 3D.

    Parameters
    ----------
    segmenter
        Over the volume's embeddings (computed on demand where missing).
    truth
        ``(Z, Y, X)`` integer instance labels of the same volume.
    start
        ``"box"`` (the object's tight box on its largest slice) or ``"point"`` (its
        deepest interior point there).
    corrections
        After propagation, this many corrections on the worst slice, each followed by
        propagation again from every annotated slice (see the module's description).
    progress, callback
        A progress bar and ``callback(done, total)`` over objects.

    Raises
    ------
    ValueError
        A ``start`` other than point or box; labels that do not match the volume's shape
        or hold no object.
    """
    if start not in ("point", "box"):
        raise ValueError(f"start must be 'point' or 'box', got {start!r}")
    if isinstance(corrections, bool) or not isinstance(corrections, int) or corrections < 0:
        raise ValueError(f"corrections must be a whole number, 0 or more, got {corrections!r}")
    shape = (len(segmenter.store), *segmenter.slice_shape)
    if truth.shape != shape:
        raise ValueError(f"labels of shape {truth.shape} do not match the volume's {shape}")
    found = objects_in_3d(truth)
    if not found:
        raise ValueError("labels hold no object: every voxel is 0 (background)")
    began = time.perf_counter()
    labels, ious, errors, corrected = [], [], [], []
    with tqdm(total=len(found), desc="propagating", unit="object", disable=not progress) as bar:
        for first in range(0, len(found), CHUNK):
            chunk = found[first : first + CHUNK]
            marks = [_first_mask(segmenter, truth, label, where, start) for label, where in chunk]
            # an object whose first mask came out empty has nothing to carry: it scores 0
            kept = [m for m in marks if next(iter(m.values())).any()]
            carried = iter(propagate_objects(segmenter, kept) if kept else [])
            for (label, _), mark in zip(chunk, marks, strict=True):
                empty = not next(iter(mark.values())).any()
                volume = np.zeros(truth.shape, dtype=bool) if empty else next(carried)
                obj = truth == label
                labels.append(label)
                ious.append(_iou(obj, volume))
                errors.append(_z_error(obj, volume))
                if corrections:
                    corrected.append(_correct(segmenter, obj, mark, volume, corrections))
            bar.update(len(chunk))
            if callback is not None:
                callback(first + len(chunk), len(found))
    return PropagationReport(
        start=start,
        labels=np.array(labels),
        ious=np.array(ious),
        z_errors=np.array(errors),
        seconds=time.perf_counter() - began,
        model=segmenter.model.name,
        refine=segmenter.refine,
        corrected_ious=np.array(corrected) if corrections else None,
    )


def _fix_slice(segmenter: Segmenter, z: int, truth: np.ndarray, found: np.ndarray) -> np.ndarray:
    """A user's fix of one slice: corrective clicks (as in 2D, the current mask as the
    decoder's mask input), up to :data:`CLICKS_PER_SLICE` or until the slice is right to
    :data:`GOOD_ENOUGH` IoU, keeping the best mask seen (the user undoes a worse one)."""
    best, best_iou = found, _iou(truth, found)
    points: list[tuple[int, int]] = []
    labels: list[int] = []
    current: np.ndarray = found
    feedback: np.ndarray | torch.Tensor | None = found if found.any() else None
    for _ in range(CLICKS_PER_SLICE):
        click = corrective_click(truth, current)
        if click is None or best_iou >= GOOD_ENOUGH:
            break
        points.append(click[0])
        labels.append(click[1])
        if not any(labels):  # negative clicks alone carve from the mask as it is
            if not current.any():
                break
            feedback = current
        pred = segmenter.predict(z, points=points, labels=labels, mask=feedback)
        current, feedback = pred.mask, pred.logits
        if _iou(truth, current) > best_iou:
            best, best_iou = current, _iou(truth, current)
    return best


def _iou(truth: np.ndarray, found: np.ndarray) -> float:
    return float((truth & found).sum() / max((truth | found).sum(), 1))


def _correct(
    segmenter: Segmenter,
    truth: np.ndarray,
    mark: dict[int, np.ndarray],
    found: np.ndarray,
    corrections: int,
) -> list[float]:
    """3D IoU after each correction of the worst slice (see the module's description)."""
    annotations = {z: m for z, m in mark.items() if m.any()}
    lo, hi = 0, truth.shape[0] - 1
    scores = []
    for _ in range(corrections):
        wrong = (truth ^ found).sum(axis=(1, 2))
        wrong[list(annotations)] = 0  # the user's own slices stand
        wrong[:lo], wrong[hi + 1 :] = 0, 0
        z = int(np.argmax(wrong))
        if wrong[z] and not truth[z].any():
            # the object is not on slice z: it ends before it
            if z > max(annotations):
                hi = z - 1
            elif z < min(annotations):
                lo = z + 1
        elif wrong[z]:
            fixed = _fix_slice(segmenter, z, truth[z], found[z])
            if fixed.any():
                annotations[z] = fixed
        if annotations:
            found = propagate_objects(segmenter, [annotations], z_range=(lo, hi))[0]
        scores.append(_iou(truth, found))
    return scores


def _first_mask(
    segmenter: Segmenter, truth: np.ndarray, label: int, where: tuple[slice, ...], start: str
) -> dict[int, np.ndarray]:
    """The object's largest slice and the mask predicted there from one prompt."""
    crop = truth[where] == label
    z = where[0].start + int(np.argmax(crop.sum(axis=(1, 2))))
    mask = truth[z] == label
    if start == "box":
        prompt = Prompt(box=tight_box(mask))
    else:
        prompt = Prompt(points=np.array([deepest_point(mask)], float), labels=np.array([1]))
    return {z: segmenter.predict_many(z, [prompt])[0].mask}


def _z_error(truth: np.ndarray, found: np.ndarray) -> int:
    """Slices the predicted extent in z is off at its two ends, added up."""
    want = np.flatnonzero(truth.any(axis=(1, 2)))
    got = np.flatnonzero(found.any(axis=(1, 2)))
    if got.size == 0:
        return int(want[-1] - want[0] + 1)
    return int(abs(got[0] - want[0]) + abs(got[-1] - want[-1]))
