"""Annotations that can be replayed: prompts in, masks out, written down as they happen.

:func:`annotate` segments one object from its prompts (optionally carried through z),
commits it to a :class:`~napari_segany.labels.store.LabelsStore` and puts everything needed to
do it again into the store's annotation log. :func:`replay` redoes the live log entries
from the embeddings and returns the labels they give, so a segmentation can be reviewed,
reproduced, or recomputed with another model.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from .propagate import StopRule
from .segmenter import Prompt

if TYPE_CHECKING:
    from .labels.store import LabelsStore
    from .model import SamModel
    from .segmenter import Prediction, Segmenter

__all__ = [
    "KIND",
    "VERSION",
    "annotate",
    "annotation_record",
    "prompt_from_record",
    "prompt_record",
    "replay",
    "segment",
]

KIND = "napari-segany.prompt"
VERSION = 1


def _runs(mask: np.ndarray) -> list[int]:
    """Run-length encoding of a boolean mask (C order): alternating run lengths, from False."""
    flat = np.concatenate([[False], mask.ravel(), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    return np.diff(np.concatenate([[0], edges, [mask.size]])).tolist()


def _unruns(runs: list[int], shape: tuple[int, int]) -> np.ndarray:
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(shape)


def prompt_record(prompt: Prompt) -> dict[str, Any]:
    """A JSON-able prompt; a boolean mask prompt is kept run-length encoded."""
    mask = prompt.mask
    entry: dict[str, Any] = {
        "points": None if prompt.points is None else np.asarray(prompt.points).tolist(),
        "labels": None if prompt.labels is None else np.asarray(prompt.labels).tolist(),
        "box": None if prompt.box is None else np.asarray(prompt.box).tolist(),
        "mask": None,
    }
    if mask is not None:
        if not (isinstance(mask, np.ndarray) and mask.dtype == bool):
            raise ValueError(
                "only boolean mask prompts can be recorded; low-resolution logits depend on "
                "an earlier prediction: record that prediction's prompts instead"
            )
        entry["mask"] = {"shape": list(mask.shape), "runs": _runs(mask)}
    return entry


def prompt_from_record(entry: dict[str, Any]) -> Prompt:
    """Inverse of :func:`prompt_record`."""
    mask = entry.get("mask")
    return Prompt(
        points=None if entry["points"] is None else np.asarray(entry["points"], dtype=float),
        labels=None if entry["labels"] is None else np.asarray(entry["labels"]),
        box=None if entry["box"] is None else np.asarray(entry["box"], dtype=float),
        mask=None if mask is None else _unruns(mask["runs"], tuple(mask["shape"])),
    )


def segment(
    segmenter: Segmenter,
    z: int,
    prompt: Prompt,
    *,
    multimask: bool | None = None,
    candidate: int | None = None,
    propagate: dict[str, Any] | None = None,
    refine: bool | None = None,
) -> np.ndarray:
    """The mask a prompt gives: ``(Y, X)``, or ``(Z, Y, X)`` when carried through z.

    ``candidate`` picks one of the candidate masks (default the segmenter's choice, made
    by SAM's score or the refined rule as ``refine`` says, default the segmenter's);
    ``propagate`` holds :meth:`Segmenter.propagate`'s options (``z_range``,
    ``direction``, ``projection``, ``stop`` as a dict of :class:`StopRule` fields).
    """
    pred = _predict(segmenter, z, prompt, multimask=multimask, candidate=candidate, refine=refine)
    return _carry(segmenter, pred, propagate)


def _predict(
    segmenter: Segmenter,
    z: int,
    prompt: Prompt,
    *,
    multimask: bool | None,
    candidate: int | None,
    refine: bool | None = None,
) -> Prediction:
    pred = segmenter.predict_many(z, [prompt], multimask=multimask, refine=refine)[0]
    return pred if candidate is None else pred.cycle(candidate - pred.index)


def _carry(segmenter: Segmenter, pred: Prediction, propagate: dict[str, Any] | None) -> np.ndarray:
    if propagate is None:
        return pred.mask
    options = dict(propagate)
    if options.get("stop") is not None:
        options["stop"] = StopRule(**options["stop"])
    if options.get("z_range") is not None:
        options["z_range"] = tuple(options["z_range"])
    return segmenter.propagate(pred.z, pred.mask, **options)


def annotation_record(
    model: SamModel,
    z: int,
    prompt: Prompt,
    *,
    multimask: bool | None = None,
    candidate: int | None = None,
    propagate: dict[str, Any] | None = None,
    refine: bool = False,
) -> dict[str, Any]:
    """The log entry that lets :func:`replay` redo an object (see :func:`segment`)."""
    if propagate is not None and isinstance(propagate.get("stop"), StopRule):
        propagate = {**propagate, "stop": asdict(propagate["stop"])}
    return {
        "kind": KIND,
        "version": VERSION,
        "z": int(z),
        "prompt": prompt_record(prompt),
        "multimask": multimask,
        "candidate": None if candidate is None else int(candidate),
        "refine": bool(refine),
        "propagate": propagate,
        "model": {"name": model.name, "architecture": model.architecture, "sha256": model.sha256},
    }


def annotate(
    labels: LabelsStore,
    segmenter: Segmenter,
    z: int,
    prompt: Prompt,
    *,
    multimask: bool | None = None,
    candidate: int | None = None,
    propagate: dict[str, Any] | None = None,
    overlap: str = "keep",
) -> int:
    """Segment an object, commit it, and log how (see :func:`segment`); returns its id."""
    if propagate is not None and isinstance(propagate.get("stop"), StopRule):
        propagate = {**propagate, "stop": asdict(propagate["stop"])}
    pred = _predict(segmenter, z, prompt, multimask=multimask, candidate=candidate)
    mask = _carry(segmenter, pred, propagate)
    # The rule and the chosen candidate are logged, so a replay gives the same mask
    # whichever rule (SAM's IoU head or the refined choice) the replaying segmenter uses.
    record = annotation_record(
        segmenter.model,
        z,
        prompt,
        multimask=multimask,
        candidate=pred.index,
        propagate=propagate,
        refine=segmenter.refine,
    )
    if mask.ndim == 3:
        return labels.commit(mask, overlap=overlap, record=record)
    return labels.commit(mask, z=z, overlap=overlap, record=record)


def replay(entries: list[dict[str, Any]], segmenter: Segmenter) -> np.ndarray:
    """Redo logged annotations in order; the ``(Z, Y, X)`` uint32 labels they give.

    Parameters
    ----------
    entries
        :meth:`LabelsStore.log` entries; those not made by :func:`annotate` are refused.
    segmenter
        Over the same volume's embeddings (the same model reproduces the labels exactly;
        another model recomputes them).
    """
    out = np.zeros((len(segmenter.store), *segmenter.slice_shape), dtype=np.uint32)
    for entry in entries:
        record = entry.get("record") or {}
        if record.get("kind") != KIND:
            raise ValueError(f"log entry of object {entry.get('id')} was not made by annotate()")
        mask = segment(
            segmenter,
            record["z"],
            prompt_from_record(record["prompt"]),
            multimask=record["multimask"],
            candidate=record["candidate"],
            propagate=record["propagate"],
            refine=record.get("refine", False),  # logs from before the refined click
        )
        target = out if mask.ndim == 3 else out[record["z"]]
        if entry["overlap"] == "keep":
            mask = mask & (target == 0)
        target[mask] = entry["id"]
    return out
