"""The field's interactive-segmentation evaluation (micro-sam's iterative prompting).

Every object of a ground truth gets a first prompt (its deepest interior point, or its
tight box), then corrective clicks at the deepest point of the larger error region; each
prediction is made with all the prompts so far and the previous prediction's logits. The
scores: per-object IoU after each prompt, mSA and SA50 of the objects' masks assembled into
an instance segmentation as micro-sam does, and the number of clicks to reach IoU 0.85 /
0.90. :func:`run_protocol` takes any decoder, so the protocol is testable without a model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..segmenter import Prompt, Segmenter
from .protocol import CHUNK, Decoder, ProtocolScores, Result, run_protocol
from .report import InteractiveReport
from .volume import PropagationReport, evaluate_propagation

if TYPE_CHECKING:
    from ..model import SamModel

__all__ = [
    "CHUNK",
    "STARTS",
    "Decoder",
    "InteractiveReport",
    "PropagationReport",
    "ProtocolScores",
    "Result",
    "SegmenterDecoder",
    "evaluate_in_3d",
    "evaluate_interactive",
    "run_protocol",
]

STARTS = ("point", "box")


def evaluate_interactive(
    model_or_segmenter: Segmenter | SamModel | str | os.PathLike[str],
    image_or_volume: Any,
    labels: np.ndarray | str | os.PathLike[str],
    *,
    start: str = "point",
    iterations: int = 8,
    refine: bool | None = None,
    device: str = "auto",
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
) -> InteractiveReport:
    """Score interactive segmentation of every ground-truth object, as micro-sam does.

    Parameters
    ----------
    model_or_segmenter
        A :class:`Segmenter` (its store holds the embeddings; the image is not read), a
        :class:`SamModel`, or a model name or checkpoint path for :func:`load_model`.
    image_or_volume
        What :func:`open_volume` accepts (an array, a path) or a :class:`Volume`; embedded
        in memory, only the slices with objects. May be None with a Segmenter.
    labels
        Integer instance labels, or the path of a TIFF file of them: ``(Y, X)`` for an
        image, ``(Z, Y, X)`` for a volume. Each label id on each slice is one object.
    start
        The first prompt: ``"point"`` (deepest interior point) or ``"box"`` (tight box).
    iterations
        Corrective clicks after the first prompt.
    refine
        The Segmenter's ``refine`` setting; None keeps the Segmenter's (or its default).
    device
        For a model loaded by name or path.
    progress, callback
        A progress bar, and ``callback(done, total)`` over object decodes.

    Returns
    -------
    InteractiveReport

    Raises
    ------
    ValueError
        A bad ``start`` or ``iterations``; labels that are not integers, do not match the
        image's shape, or hold no object.
    """
    check_settings(start, iterations)
    truth = read_labels(labels)
    segmenter, truth, embed_seconds, opened = _segmenter_for(
        model_or_segmenter, image_or_volume, truth, refine, device, progress, all_slices=False
    )
    try:
        scores = run_protocol(
            SegmenterDecoder(segmenter),
            truth,
            start=start,
            iterations=iterations,
            progress=progress,
            callback=callback,
        )
    finally:
        if opened is not None:
            opened.close()
    return InteractiveReport.from_scores(
        scores,
        start=start,
        iterations=iterations,
        model=segmenter.model.name,
        refine=segmenter.refine,
        embed_seconds=embed_seconds,
    )


def evaluate_in_3d(
    model_or_segmenter: Segmenter | SamModel | str | os.PathLike[str],
    volume: Any,
    labels: np.ndarray | str | os.PathLike[str],
    *,
    start: str = "box",
    corrections: int = 0,
    refine: bool | None = None,
    device: str = "auto",
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
) -> PropagationReport:
    """Score objects carried through z: one prompt on each object's largest slice, then
    :meth:`Segmenter.propagate` (see :mod:`napari_segany.evaluate.volume`).

    Parameters are those of :func:`evaluate_interactive`; ``labels`` are ``(Z, Y, X)``;
    ``corrections``: that many corrections on each object's worst slice afterwards, each
    followed by propagation from every annotated slice.
    Every slice is embedded (propagation visits them), unless a Segmenter is given.

    Returns
    -------
    PropagationReport
        Per object the 3D IoU and the z-extent error; mean IoU, mSA, SA50, median error.
    """
    if start not in STARTS:
        raise ValueError(f"start must be 'point' or 'box', got {start!r}")
    truth = read_labels(labels)
    if truth.ndim != 3:
        raise ValueError(f"the 3D protocol needs (Z, Y, X) labels, got shape {truth.shape}")
    segmenter, truth, _, opened = _segmenter_for(
        model_or_segmenter, volume, truth, refine, device, progress, all_slices=True
    )
    try:
        return evaluate_propagation(
            segmenter,
            truth,
            start=start,
            corrections=corrections,
            progress=progress,
            callback=callback,
        )
    finally:
        if opened is not None:
            opened.close()


def _segmenter_for(
    model_or_segmenter: Segmenter | SamModel | str | os.PathLike[str],
    image_or_volume: Any,
    truth: np.ndarray,
    refine: bool | None,
    device: str,
    progress: bool,
    *,
    all_slices: bool,
) -> tuple[Segmenter, np.ndarray, float, Any]:
    """The Segmenter to evaluate, the labels fitted to its volume, the seconds spent
    embedding, and the volume this opened (to close), or None."""
    from ..volume.volume import Volume, open_volume

    if isinstance(model_or_segmenter, Segmenter):
        segmenter = model_or_segmenter
        if refine is not None and refine != segmenter.refine:
            segmenter = Segmenter(segmenter.model, segmenter.store, refine=refine)
        truth = fit_labels(truth, (len(segmenter.store), *segmenter.slice_shape))
        return segmenter, truth, 0.0, None
    from ..embeddings import embed
    from ..model import as_model

    if image_or_volume is None:
        raise ValueError("give the image (or volume) to embed, or a Segmenter")
    opened = None
    if isinstance(image_or_volume, Volume):
        volume = image_or_volume
    else:
        volume = opened = open_volume(image_or_volume)
    try:
        # The labels are checked before a model is loaded (perhaps downloaded).
        truth = fit_labels(truth, (len(volume), *volume.slice_shape))
        model = as_model(model_or_segmenter, device=device, progress=progress)
        t0 = time.perf_counter()
        wanted = None if all_slices else [z for z in range(len(truth)) if truth[z].any()]
        store = embed(volume, model, None, slices=wanted, progress=progress)
        embed_seconds = time.perf_counter() - t0
    except BaseException:
        if opened is not None:
            opened.close()
        raise
    options = {} if refine is None else {"refine": refine}
    return Segmenter(model, store, **options), truth, embed_seconds, opened


def check_settings(start: str, iterations: int) -> None:
    """Raise ValueError for a ``start`` or ``iterations`` the protocol does not know."""
    if start not in STARTS:
        raise ValueError(f"start must be 'point' or 'box', got {start!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)):
        raise ValueError(f"iterations must be an integer, got {iterations!r}")
    if iterations < 0:
        raise ValueError(f"iterations must be 0 or more, got {iterations}")


def read_labels(labels: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
    """Instance labels from an array or a TIFF file; ValueError unless integers."""
    if isinstance(labels, (str, os.PathLike)):
        from ..volume.sources import open_tiff

        with open_tiff(labels) as tiff:  # an error names the file
            labels = tiff.asarray()
    array = np.asarray(labels)
    if array.dtype.kind not in "iu":
        raise ValueError(
            f"labels must be integer instance ids (0 = background), got dtype {array.dtype}"
        )
    return array


def fit_labels(truth: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Labels as ``(Z, Y, X)`` matching a volume of ``shape``; ValueError otherwise."""
    stack = truth[None] if truth.ndim == 2 else truth
    if stack.shape != shape:
        expected = shape[1:] if shape[0] == 1 else shape
        raise ValueError(f"labels of shape {truth.shape} do not match the image's shape {expected}")
    if stack.min() < 0:
        raise ValueError(f"labels must not be negative, found {stack.min()}")
    if not stack.any():
        raise ValueError("labels hold no object: every pixel is 0 (background)")
    return stack


class SegmenterDecoder:
    """A :data:`Decoder` on a :class:`Segmenter`: prompts of one slice decoded together,
    the previous logits fed back (on the window they were decoded on)."""

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    def __call__(self, z: int, prompts: list[Prompt], feedbacks: list[Any]) -> list[Result]:
        grid = self.segmenter.store.grid
        ready = []
        for prompt, feedback in zip(prompts, feedbacks, strict=True):
            if feedback is not None:
                window, logits = feedback
                # Logits belong to a window; a new positive click may move the prompt to
                # another window of a tiled slice, where they would mean nothing.
                if len(grid) == 1 or grid.windows[grid.window_for_box(_extent(prompt))] == window:
                    prompt = replace(prompt, mask=logits)
            ready.append(prompt)
        return [_Decoded(p) for p in self.segmenter.predict_many(z, ready)]


class _Decoded:
    def __init__(self, prediction: Any) -> None:
        self._prediction = prediction
        # A copy: the chosen logits are a view that would keep the whole batch alive.
        self.feedback = (prediction.window, prediction.logits.clone())

    @property
    def mask(self) -> np.ndarray:
        return self._prediction.mask


def _extent(prompt: Prompt) -> tuple[float, float, float, float]:
    """The region a prompt covers, as :class:`Segmenter` picks its window: positive points
    and the box."""
    corners = []
    if prompt.points is not None:
        points = np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2)
        corners.append(points[np.asarray(prompt.labels).reshape(-1) == 1])
    if prompt.box is not None:
        corners.append(np.asarray(prompt.box, dtype=np.float64).reshape(2, 2))
    both = np.concatenate(corners)
    (y0, x0), (y1, x1) = both.min(axis=0), both.max(axis=0)
    return float(y0), float(x0), float(y1), float(x1)
