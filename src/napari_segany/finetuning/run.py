"""Learn from the user's own annotations: tune the prompt encoder and mask decoder.

The image encoder stays frozen, so every embedding is already in the stores and a
training step costs only decoder passes (:mod:`~napari_segany.models.decoder_training`). Prompts are
drawn as the evaluation's simulated user gives them: a click at an object's deepest point
or elsewhere deep inside it, its tight box, and corrective clicks at the model's own
errors with its previous logits. A share of the objects (whole label ids) is held back;
the model is scored on them with the evaluation protocol itself before training and every
so often during it, and the best state wins. A tuned model that does not beat the base on
all of one click, a box and eight corrective clicks is not kept: the base is returned and
the report says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import MAX_EXAMPLES, examples_of, held_back_labels, split_ids
from .train import BATCH, Trainer

if TYPE_CHECKING:
    from ..embeddings import EmbeddingStore
    from ..model import SamModel

CPU_BUDGET = 240.0
"""Default seconds of training on a CPU (validation included)."""
GPU_BUDGET = 120.0
VALIDATE_EVERY = 25.0
"""Seconds of training between two checks of the model, at least (more when a check takes
longer: checks take at most a quarter of the time)."""
PATIENCE = 4
"""Validations without a gain before training stops."""
MAX_VALIDATION = 32
"""Held-back objects on slices scored at most (a fixed random sample of the rest)."""


class FinetuneCancelled(RuntimeError):
    """The run was cancelled; the best checkpoint so far (if written) is kept."""


@dataclass
class FinetuneReport:
    """What :func:`finetune` did and what it gained on the held-back objects.

    Attributes
    ----------
    before, after
        Mean IoU of the held-back objects for ``"click"`` (one click), ``"box"`` and
        ``"clicks8"`` (after eight corrective clicks), with the base model and with the
        model returned.
    kept
        ``"tuned"``, or ``"base"`` when tuning did not beat the base on all three.
    training_objects, validation_objects
        Objects on slices trained on and scored.
    steps, seconds, stopped
        Optimiser steps, wall time, and why training ended (``"time budget"``,
        ``"epochs"``, ``"no more gain"``).
    checkpoint, decoder_file
        Files written (None when no ``out`` was given, or nothing was kept).
    history
        ``(step, seconds, scores)`` of every validation.
    """

    before: dict[str, float]
    after: dict[str, float]
    kept: str
    training_objects: int
    validation_objects: int
    steps: int
    seconds: float
    stopped: str
    checkpoint: Path | None = None
    decoder_file: Path | None = None
    history: list[tuple[int, float, dict[str, float]]] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for people: before and after, side by side."""
        rows = [
            f"held-back objects: {self.validation_objects} (trained on {self.training_objects})",
            *(
                f"  {name:<8} {self.before[name]:.3f} -> {self.after[name]:.3f}"
                for name in ("click", "box", "clicks8")
            ),
            f"{self.steps} steps in {self.seconds:.0f} s, stopped: {self.stopped}; "
            + ("tuned model kept" if self.kept == "tuned" else "no gain: the base model is kept"),
        ]
        return "\n".join(rows)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-able data."""
        return {
            "before": self.before,
            "after": self.after,
            "kept": self.kept,
            "training_objects": self.training_objects,
            "validation_objects": self.validation_objects,
            "steps": self.steps,
            "seconds": self.seconds,
            "stopped": self.stopped,
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "decoder_file": None if self.decoder_file is None else str(self.decoder_file),
            "history": [list(h) for h in self.history],
        }


def finetune(
    pairs: Sequence[tuple[Any, Any]],
    model: SamModel | str | os.PathLike[str] = "mobile_sam",
    *,
    time_budget: float | None = None,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "auto",
    validation: float = 0.25,
    out: str | os.PathLike[str] | None = None,
    decoder_only: bool | None = None,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[SamModel, FinetuneReport]:
    """Tune a model's prompt encoder and mask decoder on annotated images.

    Parameters
    ----------
    pairs
        ``(embeddings, labels)`` per image: an :class:`EmbeddingStore` of ``model``'s
        encoder (or a volume, an array or a path, embedded here in memory), and a
        :class:`LabelsStore`, an integer array or a TIFF path of instance labels of the
        same ``(Z, Y, X)`` (or ``(Y, X)``) shape.
    model
        A :class:`SamModel`, or a name or checkpoint for :func:`load_model`.
    time_budget
        Seconds of training, the checks of the model included (default: 240 on a CPU,
        120 on a GPU).
    epochs
        Stop after this many passes over the training objects (default: the budget only).
    seed
        Seeds the split, the prompts and the order: the same inputs give the same model.
    device
        For a model loaded by name or path.
    validation
        The share of label ids held back to score the model.
    out
        Write the tuned checkpoint here (a SAM checkpoint; see
        :mod:`napari_segany.finetuning.checkpoint`), replaced atomically at each gain so an
        interrupted run leaves the last good one. Nothing is written if no gain is found.
    decoder_only
        Also write ``<out stem>.decoder.pt`` (default: for ViT encoders).
    progress, callback, cancel
        A progress bar, ``callback(step, steps)`` (steps estimated from the budget), and
        a poll that stops the run (:class:`FinetuneCancelled`) when it returns True.

    Returns
    -------
    model, report
        The tuned model (or the base, when tuning gained nothing) and a
        :class:`FinetuneReport`.

    Raises
    ------
    ValueError
        Too few objects (it says how many are needed), labels that do not match their
        image, a store of another model's encoder, bad settings.
    FinetuneCancelled
        ``cancel`` returned True.
    """
    from ..model import as_model

    began = time.perf_counter()
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be 1 or more, got {epochs}")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"the time budget must be positive seconds, got {time_budget}")
    if not 0.0 < validation < 1.0:  # said before a model is loaded or an image embedded
        raise ValueError(f"the validation share must lie between 0 and 1, got {validation}")
    base = as_model(model, device=device)
    if out is not None and base.checkpoint is None:
        raise ValueError(
            f"{base.name} has no checkpoint file to build the tuned checkpoint from: "
            "tune a model loaded from a file, or pass out=None"
        )
    stores, labels = _open_pairs(pairs, base, progress)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    train_ids, val_ids = split_ids(labels, validation, rng)
    examples = [
        ex
        for p, (store, stack) in enumerate(zip(stores, labels, strict=True))
        for ex in examples_of(p, stack, train_ids[p], store.grid, rng)
    ]
    if len(examples) > MAX_EXAMPLES:
        keep = rng.choice(len(examples), size=MAX_EXAMPLES, replace=False)
        examples = [examples[i] for i in sorted(keep)]
    held = [held_back_labels(stack, ids) for stack, ids in zip(labels, val_ids, strict=True)]
    held = _limit_validation(held, rng)
    budget = time_budget or (GPU_BUDGET if base.device.type == "cuda" else CPU_BUDGET)

    trainer = Trainer(base, stores, examples, rng)
    judge = _Judge(stores, held, cancel)
    loop = _Loop(budget, epochs, max(1, len(examples) // BATCH), callback, cancel, progress)
    before = judge.scores(base)
    loop.judged()
    best_scores, best_state, history = None, None, []
    written: tuple[Path, Path | None] | None = None
    stopped, waited = "time budget", 0
    try:
        while True:
            loop.poll()
            trainer.step()
            reason = loop.stepped()
            if reason is None:
                continue
            scores = judge.scores(trainer.model())
            loop.judged()
            history.append((loop.step, round(time.perf_counter() - began, 1), scores))
            if _beats(scores, before) and (
                best_scores is None or sum(scores.values()) > sum(best_scores.values())
            ):
                best_scores, best_state, waited = scores, trainer.state(), 0
                if out is not None:
                    written = trainer.save(out, decoder_only)
            else:
                waited += 1
            if reason != "check":
                stopped = reason
                break
            if waited >= PATIENCE:
                stopped = "no more gain"
                break
    finally:
        loop.close()
    kept = best_state is not None
    result = trainer.model(best_state) if kept else base
    if kept and written is not None:  # the model is the file: name it so, hash it from it
        result.name, result.checkpoint = written[0].name, written[0]
    return result, FinetuneReport(
        before=before,
        after=best_scores if best_scores is not None else before,  # set with best_state
        kept="tuned" if kept else "base",
        training_objects=len(examples),
        validation_objects=judge.objects,
        steps=loop.step,
        seconds=time.perf_counter() - began,
        stopped=stopped,
        checkpoint=written[0] if written else None,
        decoder_file=written[1] if written else None,
        history=history,
    )


def _beats(scores: dict[str, float], than: dict[str, float]) -> bool:
    """Better on the mean of the three and not worse on any of them."""
    if any(scores[k] < than[k] for k in than):
        return False
    return sum(scores.values()) > sum(than.values())


def _open_pairs(
    pairs: Sequence[tuple[Any, Any]], model: SamModel, progress: bool
) -> tuple[list[EmbeddingStore], list[np.ndarray]]:
    """Each pair's embedding store (of ``model``'s encoder) and ``(Z, Y, X)`` labels."""
    from ..embeddings import EmbeddingStore, embed
    from ..evaluate.runs import fit_labels, read_labels
    from ..labels.store import LabelsStore
    from ..model import same_encoder
    from ..volume.volume import open_volume

    if isinstance(pairs, tuple) and len(pairs) == 2 and not isinstance(pairs[0], tuple):
        pairs = [pairs]  # one pair given bare
    if not pairs:
        raise ValueError("give at least one (embeddings, labels) pair to learn from")
    stores, labels = [], []
    for number, pair in enumerate(pairs, start=1):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"pair {number} is not an (embeddings, labels) pair: {pair!r}")
        source, truth = pair
        if isinstance(truth, LabelsStore):
            truth = truth.read()
        truth = read_labels(truth)
        volume = None
        if isinstance(source, EmbeddingStore):
            store = source
            if not same_encoder(store.signature["model"], model.identity):
                raise ValueError(
                    f"pair {number}: the embeddings in {store.path or 'memory'} were computed "
                    f"with {store.signature['model'].get('name')!r}, whose image encoder "
                    f"{model.name!r} does not have: embed the image with {model.name!r}"
                )
            shape = (len(store), *store.grid.slice_shape)
        else:
            volume = open_volume(source)
            shape = (len(volume), *volume.slice_shape)
        try:
            stack = fit_labels(truth, shape)
        except ValueError as err:
            raise ValueError(f"pair {number}: {err}") from None
        if volume is not None:  # embedded here, in memory: only the slices with objects
            wanted = [z for z in range(len(stack)) if stack[z].any()]
            store = embed(volume, model, None, slices=wanted, progress=progress)
        stores.append(store)
        labels.append(stack)
    return stores, labels


def _limit_validation(held: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """At most :data:`MAX_VALIDATION` held-back objects on slices, a fixed random sample."""
    found = [
        (p, z, int(i))
        for p, stack in enumerate(held)
        for z in range(stack.shape[0])
        for i in np.unique(stack[z])
        if i
    ]
    if len(found) <= MAX_VALIDATION:
        return held
    keep = {found[k] for k in rng.choice(len(found), size=MAX_VALIDATION, replace=False)}
    out = []
    for p, stack in enumerate(held):
        limited = np.zeros_like(stack)
        for z in range(stack.shape[0]):
            for i in np.unique(stack[z]):
                if i and (p, z, int(i)) in keep:
                    limited[z][stack[z] == i] = i
        out.append(limited)
    return out


class _Loop:
    """When to check the model and when to stop: the budget covers the checks, the one
    before training included, so a run ends within its budget."""

    def __init__(
        self,
        budget: float,
        epochs: int | None,
        steps_per_epoch: int,
        callback: Callable[[int, int], None] | None,
        cancel: Callable[[], bool] | None,
        progress: bool,
    ) -> None:
        self.started = self.last = self._check_began = time.perf_counter()
        self.deadline = self.started + budget
        self.planned = None if epochs is None else epochs * steps_per_epoch
        self.callback, self.cancel = callback, cancel
        self.step, self.check_cost, self.step_cost = 0, 0.0, 0.0
        self.bar = tqdm(total=self.planned, desc="fine-tuning", unit="step", disable=not progress)

    def poll(self) -> None:
        if self.cancel is not None and self.cancel():
            raise FinetuneCancelled("fine-tuning cancelled")
        self._step_began = time.perf_counter()

    def judged(self) -> None:
        """A check just ended: learn what one costs."""
        now = time.perf_counter()
        self.check_cost = max(self.check_cost, now - self._check_began)
        self.last = now

    def stepped(self) -> str | None:
        """After a step: None to go on, else ``"check"``, ``"time budget"`` or ``"epochs"``
        (check the model, then stop)."""
        now = time.perf_counter()
        self.step += 1
        self.step_cost = now - self._step_began
        self.bar.update(1)
        left = self.deadline - now - self.check_cost
        if self.callback is not None:
            rate = self.step / max(now - self.started, 1e-9)
            estimate = self.step + int(rate * max(left, 0.0) * 0.8)
            if self.planned is not None:
                estimate = min(estimate, self.planned)
            self.callback(self.step, max(estimate, self.step))
        self._check_began = now
        if self.planned is not None and self.step >= self.planned:
            return "epochs"
        if left < 1.5 * self.step_cost:
            return "time budget"
        if now - self.last >= max(VALIDATE_EVERY, 3 * self.check_cost):
            return "check"
        return None

    def close(self) -> None:
        self.bar.close()


class _Judge:
    """Scores a model on the held-back objects with the evaluation protocol itself."""

    def __init__(
        self,
        stores: list[EmbeddingStore],
        held: list[np.ndarray],
        cancel: Callable[[], bool] | None,
    ) -> None:
        self.stores, self.held, self.cancel = stores, held, cancel
        self.objects = sum(
            int(np.unique(stack[z]).size - 1)
            for stack in held
            for z in range(stack.shape[0])
            if stack[z].any()
        )

    def scores(self, model: SamModel) -> dict[str, float]:
        from ..evaluate.protocol import run_protocol
        from ..evaluate.runs import SegmenterDecoder
        from ..segmenter import Segmenter

        clicks: list[np.ndarray] = []
        boxes: list[np.ndarray] = []
        for store, stack in zip(self.stores, self.held, strict=True):
            if not stack.any():
                continue
            decoder = SegmenterDecoder(Segmenter(model, store))
            for start, iterations, into in (("point", 8, clicks), ("box", 0, boxes)):
                scores = run_protocol(
                    decoder,
                    stack,
                    start=start,
                    iterations=iterations,
                    progress=False,
                    callback=self._poll,
                )
                into.append(scores.ious)
        point, box = np.concatenate(clicks), np.concatenate(boxes)
        return {
            "click": round(float(point[:, 0].mean()), 4),
            "box": round(float(box[:, 0].mean()), 4),
            "clicks8": round(float(point[:, -1].mean()), 4),
        }

    def _poll(self, done: int, total: int) -> None:
        if self.cancel is not None and self.cancel():
            raise FinetuneCancelled("fine-tuning cancelled")


__all__ = ["FinetuneCancelled", "FinetuneReport", "finetune"]
