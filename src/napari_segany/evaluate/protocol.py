"""The iterative-prompting loop of the interactive evaluation, on any decoder.

Slice by slice, iteration by iteration: every object still imperfect is decoded with all
its prompts so far (objects in chunks, so that prompts of the same kind are batched), its
IoU is taken at once and its full-size mask dropped; only each object's crop, prompts and
low-resolution logits live between iterations. The objects' masks of an iteration are
assembled into one instance segmentation for the mSA, as micro-sam does: masks painted
largest first, each pixel to the smallest mask covering it (:data:`LARGER_MASKS_WIN`), then
connected pieces as instances.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from ..scores import SA_THRESHOLDS, segmentation_accuracy, split_components
from ..segmenter import Prompt
from .prompts import bounding_box, corrective_click, deepest_point, tight_box

__all__ = [
    "CHUNK",
    "LARGER_MASKS_WIN",
    "Decoder",
    "ProtocolScores",
    "Result",
    "run_protocol",
]

CHUNK = 32
"""Objects decoded together in one decoder call."""


class Result(Protocol):
    """One object's prediction, as the protocol reads it."""

    @property
    def mask(self) -> np.ndarray: ...  # boolean (Y, X)

    @property
    def feedback(self) -> Any: ...  # handed back with the object's next prompt


Decoder = Callable[[int, list[Prompt], list[Any]], Sequence[Result]]
"""``decode(z, prompts, feedbacks)``: one result per prompt (feedbacks None at first)."""


@dataclass
class ProtocolScores:
    """What :func:`run_protocol` measured.

    Attributes
    ----------
    ious
        ``(objects, iterations + 1)`` IoU of each object after each prompt.
    objects
        ``(objects, 2)``: slice and label id of each row.
    sa
        ``(slices, iterations + 1, len(SA_THRESHOLDS))`` segmentation accuracies.
    seconds, decode_ms
        Wall time, and mean milliseconds per object decode (mask included).
    """

    ious: np.ndarray
    objects: np.ndarray
    sa: np.ndarray
    seconds: float
    decode_ms: float


def run_protocol(
    decode: Decoder,
    labels: np.ndarray,
    *,
    start: str = "point",
    iterations: int = 8,
    chunk: int = CHUNK,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
) -> ProtocolScores:
    """Prompt every object of ``labels`` through ``decode`` and score the masks.

    Parameters
    ----------
    decode
        A :data:`Decoder`, e.g. :class:`napari_segany.evaluate.runs.SegmenterDecoder`.
    labels
        ``(Z, Y, X)`` integer instance labels (checked by the caller).
    start, iterations
        The first prompt (``"point"`` or ``"box"``) and the corrective clicks after it.
    chunk
        Objects per decoder call.
    progress, callback
        A progress bar and ``callback(done, total)`` over object decodes.
    """
    began = time.perf_counter()
    counts = {z: np.unique(labels[z]).size - 1 for z in range(labels.shape[0])}
    slices = [z for z, n in counts.items() if n > 0]
    total = sum(counts[z] for z in slices) * (iterations + 1)
    ious: list[np.ndarray] = []
    objects: list[tuple[int, int]] = []
    sa: list[np.ndarray] = []
    clock = _Clock()
    done = 0
    with tqdm(total=total, desc="evaluating", unit="decode", disable=not progress) as bar:
        for z in slices:
            objs = _objects_of(labels[z], start)
            truth = split_components(labels[z])
            here = np.zeros((len(objs), iterations + 1))
            slice_sa = np.zeros((iterations + 1, len(SA_THRESHOLDS)))
            for i in range(iterations + 1):
                assembly = _Assembly(truth.shape)
                for k, obj in enumerate(objs):
                    if obj.done:  # perfect earlier: kept as it was, no more clicks
                        here[k, i] = 1.0
                        assembly.add(k + 1, obj.mask, obj.box)
                active = [k for k, obj in enumerate(objs) if not obj.done]
                for first in range(0, len(active), chunk):
                    batch = active[first : first + chunk]
                    _step(
                        decode,
                        z,
                        [objs[k] for k in batch],
                        batch,
                        here[:, i],
                        assembly,
                        last=i == iterations,
                        clock=clock,
                    )
                    done += len(batch)
                    bar.update(len(batch))
                    if callback is not None:
                        callback(done, total)
                skipped = len(objs) - len(active)
                done += skipped
                bar.update(skipped)
                if skipped and callback is not None:
                    callback(done, total)
                slice_sa[i] = segmentation_accuracy(split_components(assembly.owner), truth)
            ious.append(here)
            objects.extend((z, obj.label) for obj in objs)
            sa.append(slice_sa)
    return ProtocolScores(
        ious=np.concatenate(ious),
        objects=np.array(objects, dtype=np.int64).reshape(-1, 2),
        sa=np.stack(sa),
        seconds=time.perf_counter() - began,
        decode_ms=1e3 * clock.seconds / max(clock.decodes, 1),
    )


def _step(
    decode: Decoder,
    z: int,
    objs: list[_Object],
    rows: list[int],
    ious: np.ndarray,
    assembly: _Assembly,
    *,
    last: bool,
    clock: _Clock,
) -> None:
    """Decode some objects once; score, assemble and give each its next click."""
    t0 = time.perf_counter()
    results: list[Result | None] = list(
        decode(z, [obj.prompt() for obj in objs], [obj.feedback for obj in objs])
    )
    clock.seconds += time.perf_counter() - t0
    if len(results) != len(objs):
        raise RuntimeError(f"the decoder gave {len(results)} results for {len(objs)} prompts")
    for j, (obj, row) in enumerate(zip(objs, rows, strict=True)):
        result = results[j]
        assert result is not None  # each result is read once, here
        t0 = time.perf_counter()
        pred = np.asarray(result.mask, dtype=bool)  # a decoder may compute it only now
        clock.seconds += time.perf_counter() - t0
        clock.decodes += 1
        obj.feedback = result.feedback
        results[j] = None  # the full-size mask goes as soon as it is scored
        del result
        box = bounding_box(pred)
        iou, truth, mine, origin = _compare(obj, pred, box)
        ious[row] = iou
        if box is not None:
            y0, x0, y1, x1 = box
            assembly.add(row + 1, pred[y0:y1, x0:x1], box)
        del pred
        if iou == 1.0:
            obj.done = True
        elif not last:
            click = corrective_click(truth, mine)
            assert click is not None  # iou < 1: the prediction has an error to click on
            (y, x), label = click
            obj.points.append((origin[0] + y, origin[1] + x))
            obj.point_labels.append(label)


def _compare(
    obj: _Object, pred: np.ndarray, box: tuple[int, int, int, int] | None
) -> tuple[float, np.ndarray, np.ndarray, tuple[int, int]]:
    """IoU of a prediction (its pixels in ``box``) with its object, and both cropped to the
    box around the two."""
    y0, x0, y1, x1 = obj.box
    if box is not None:
        y0, x0 = min(y0, box[0]), min(x0, box[1])
        y1, x1 = max(y1, box[2]), max(x1, box[3])
    mine = pred[y0:y1, x0:x1]
    truth = np.zeros_like(mine)
    oy0, ox0, oy1, ox1 = obj.box
    truth[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] = obj.mask
    overlap = int(np.count_nonzero(truth & mine))
    union = int(np.count_nonzero(mine)) + obj.area - overlap
    return overlap / union, truth, mine, (y0, x0)


@dataclass
class _Clock:
    seconds: float = 0.0  # in the decoder and computing masks
    decodes: int = 0  # object decodes


LARGER_MASKS_WIN = False
"""Where two objects' masks overlap, the smaller keeps the pixels, as the micro-sam releases
behind its published evaluations did (masks painted largest first, each over the ones
before). True: the larger one does (micro-sam's current ``mask_data_to_segmentation`` with
``merge_exclusively=True``), under which one wrong mask that spans the image wipes out the
whole slice's mSA."""


class _Assembly:
    """One iteration's instance segmentation from the objects' masks, as micro-sam's
    ``mask_data_to_segmentation`` makes it: masks sorted stably by area, largest first, each
    taking only pixels still free (see :data:`LARGER_MASKS_WIN`). Done incrementally: a
    pixel belongs to the largest mask covering it, the lower object number among masks of
    equal area."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.owner = np.zeros(shape, dtype=np.uint32)
        self._area = np.zeros(shape, dtype=np.int64)

    def add(self, number: int, mask: np.ndarray, box: tuple[int, int, int, int]) -> None:
        y0, x0, y1, x1 = box
        owner, area = self.owner[y0:y1, x0:x1], self._area[y0:y1, x0:x1]
        size = int(np.count_nonzero(mask))
        if LARGER_MASKS_WIN:
            wins = (size > area) | ((size == area) & (owner > number))
        else:  # painted largest first, each over the others: the last of equal areas wins
            wins = (owner == 0) | (size < area) | ((size == area) & (owner < number))
        wins &= mask
        owner[wins] = number
        area[wins] = size


@dataclass
class _Object:
    label: int
    box: tuple[int, int, int, int]  # of its pixels, ends exclusive
    mask: np.ndarray  # boolean, cropped to box
    area: int = 0
    points: list[tuple[int, int]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    prompt_box: np.ndarray | None = None
    feedback: Any = None
    done: bool = False

    def prompt(self) -> Prompt:
        if not self.points:
            return Prompt(box=self.prompt_box)
        points = np.array(self.points, dtype=np.float64)
        return Prompt(points=points, labels=np.array(self.point_labels), box=self.prompt_box)


def _objects_of(truth: np.ndarray, start: str) -> list[_Object]:
    """Each label id of a slice as an object with its first prompt, in increasing id order."""
    ids, inverse = np.unique(truth, return_inverse=True)
    sequential = inverse.reshape(truth.shape)
    if ids[0] != 0:  # no background pixel: make room for label 0
        ids, sequential = np.concatenate([[0], ids]), sequential + 1
    found = []
    for index, where in enumerate(ndimage.find_objects(sequential), start=1):
        crop = sequential[where] == index
        y0, x0 = where[0].start, where[1].start
        obj = _Object(int(ids[index]), (y0, x0, where[0].stop, where[1].stop), crop)
        obj.area = int(np.count_nonzero(crop))
        if start == "box":
            obj.prompt_box = tight_box(crop) + np.array([y0, x0, y0, x0], dtype=np.float64)
        else:
            dy, dx = deepest_point(crop)
            obj.points, obj.point_labels = [(y0 + dy, x0 + dx)], [1]
        found.append(obj)
    return found
