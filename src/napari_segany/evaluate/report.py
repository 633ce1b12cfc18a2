"""The result of an interactive evaluation: numbers, a terminal table, JSON and a plot."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..scores import paired_accuracy

if TYPE_CHECKING:
    from .protocol import ProtocolScores

__all__ = [
    "NOC_TARGETS",
    "InteractiveReport",
]

NOC_TARGETS = (0.85, 0.90)
"""IoU targets of the number-of-clicks scores (NoC@85, NoC@90)."""


@dataclass
class InteractiveReport:
    """How well prompts and corrective clicks segment every object of a ground truth.

    Iteration 0 is the first prompt (a point or a box); iteration ``i`` adds the ``i``-th
    corrective click, so it has ``i + 1`` prompts.

    Attributes
    ----------
    start
        ``"point"`` or ``"box"``: the first prompt.
    iterations
        Corrective clicks per object.
    ious
        ``(objects, iterations + 1)`` IoU of each object's mask after each prompt.
    objects
        ``(objects, 2)``: the slice and the label id of each row of ``ious``.
    msa, sa50
        ``(iterations + 1,)``: mean segmentation accuracy (IoU 0.5:0.95) and SA at IoU
        0.5, each mask scored against the object it was prompted for
        (:func:`napari_segany.scores.paired_accuracy`).
    msa_assembled, sa50_assembled
        The same after assembling each slice's masks into one instance image and matching
        it to the truth, as micro-sam does, averaged over slices. Where masks overlap this
        moves with the assembly rule, not only with the masks' quality.
    model
        The model's name.
    refine
        The Segmenter's ``refine`` setting.
    seconds
        Wall time of the prompting and scoring (embedding not included).
    decode_ms
        Mean time of one object's decode, mask included, in milliseconds.
    embed_seconds
        Time spent embedding the image (0 for a Segmenter given ready).
    """

    start: str
    iterations: int
    ious: np.ndarray
    objects: np.ndarray
    msa: np.ndarray
    sa50: np.ndarray
    msa_assembled: np.ndarray
    sa50_assembled: np.ndarray
    model: str
    refine: bool
    seconds: float
    decode_ms: float
    embed_seconds: float = 0.0

    @classmethod
    def from_scores(
        cls,
        scores: ProtocolScores,
        *,
        start: str,
        iterations: int,
        model: str,
        refine: bool,
        embed_seconds: float = 0.0,
    ) -> InteractiveReport:
        """The report of a :func:`napari_segany.evaluate.runs.run_protocol` run."""
        paired = paired_accuracy(scores.ious)  # (thresholds, iterations + 1)
        return cls(
            start=start,
            iterations=iterations,
            ious=scores.ious,
            objects=scores.objects,
            msa=paired.mean(axis=0),
            sa50=paired[0],
            msa_assembled=scores.sa.mean(axis=(0, 2)),
            sa50_assembled=scores.sa[:, :, 0].mean(axis=0),
            model=model,
            refine=refine,
            seconds=scores.seconds,
            decode_ms=scores.decode_ms,
            embed_seconds=embed_seconds,
        )

    @property
    def n_objects(self) -> int:
        """Objects evaluated (each label id on each slice)."""
        return int(self.ious.shape[0])

    @property
    def n_slices(self) -> int:
        """Slices that hold objects."""
        return int(np.unique(self.objects[:, 0]).size)

    @property
    def mean_iou(self) -> np.ndarray:
        """``(iterations + 1,)``: the mean IoU over objects after each prompt."""
        return self.ious.mean(axis=0)

    def noc(self, target: float) -> tuple[float, int]:
        """Mean number of prompts until IoU >= ``target``, and how many never got there.

        The first prompt counts as 1; an object that never reaches the target counts as
        ``iterations + 1`` (the cap).
        """
        reached = self.ious >= target
        ever = reached.any(axis=1)
        clicks = np.where(ever, reached.argmax(axis=1) + 1, self.iterations + 1)
        return float(clicks.mean()), int((~ever).sum())

    @property
    def noc85(self) -> float:
        """NoC@85: mean prompts until IoU >= 0.85."""
        return self.noc(0.85)[0]

    @property
    def noc90(self) -> float:
        """NoC@90: mean prompts until IoU >= 0.90."""
        return self.noc(0.90)[0]

    @property
    def rows(self) -> list[dict[str, float]]:
        """One row per iteration: prompts so far (``clicks``), mean IoU, mSA, SA50."""
        mean_iou = self.mean_iou
        return [
            {
                "clicks": i + 1,
                "mean_iou": float(mean_iou[i]),
                "msa": float(self.msa[i]),
                "sa50": float(self.sa50[i]),
                "msa_assembled": float(self.msa_assembled[i]),
                "sa50_assembled": float(self.sa50_assembled[i]),
            }
            for i in range(self.iterations + 1)
        ]

    def table(self) -> str:
        """The results as a plain-text table for a terminal."""
        lines = [
            f"interactive evaluation: {self.model}, start={self.start}, refine={self.refine}, "
            f"{self.n_objects} object(s) on {self.n_slices} slice(s)",
            f"{'clicks':>6}  {'mean IoU':>8}  {'mSA':>6}  {'SA50':>6}",
        ]
        for row in self.rows:
            lines.append(
                f"{row['clicks']:>6}  {row['mean_iou']:>8.3f}  {row['msa']:>6.3f}  "
                f"{row['sa50']:>6.3f}"
            )
        lines.append(f"(the first prompt, a {self.start}, counts as one click)")
        for target in NOC_TARGETS:
            mean, failed = self.noc(target)
            lines.append(
                f"NoC@{round(target * 100)}  {mean:.2f}  ({failed} of {self.n_objects} never "
                f"reached IoU {target:.2f} in {self.iterations + 1} prompts)"
            )
        lines.append(
            f"time    {self.seconds:.1f} s, {self.decode_ms:.1f} ms per object decode"
            + (f" (embedding {self.embed_seconds:.1f} s)" if self.embed_seconds else "")
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """Everything as JSON-able values (per-object IoUs included)."""
        nocs = {f"noc{round(t * 100)}": self.noc(t) for t in NOC_TARGETS}
        return {
            "model": self.model,
            "refine": self.refine,
            "start": self.start,
            "iterations": self.iterations,
            "objects": self.n_objects,
            "slices": self.n_slices,
            "rows": self.rows,
            **{name: mean for name, (mean, _) in nocs.items()},
            **{f"{name}_failed": failed for name, (_, failed) in nocs.items()},
            "seconds": self.seconds,
            "decode_ms": self.decode_ms,
            "embed_seconds": self.embed_seconds,
            "per_object": {
                "z": self.objects[:, 0].tolist(),
                "label": self.objects[:, 1].tolist(),
                "iou": np.round(self.ious, 6).tolist(),
            },
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`as_dict` as indented JSON; returns the path."""
        target = Path(path)
        target.write_text(json.dumps(self.as_dict(), indent=1) + "\n")
        return target

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Save a PNG of mean IoU and mSA against the number of clicks; returns the path."""
        # The figure is drawn on its own Agg canvas: no pyplot state, no GUI backend.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        clicks = np.arange(1, self.iterations + 2)
        figure = Figure(figsize=(5.0, 3.5), dpi=120)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.plot(clicks, self.mean_iou, marker="o", label="mean IoU")
        axes.plot(clicks, self.msa, marker="s", label="mSA (IoU 0.5:0.95)")
        axes.set_xlabel(f"clicks (the first prompt, a {self.start}, counts as one)")
        axes.set_ylabel("score")
        axes.set_ylim(0.0, 1.0)
        axes.set_xticks(clicks)
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right")
        path_name = "refined click" if self.refine else "SAM's plain choice"
        axes.set_title(f"{self.model} ({path_name}), start={self.start}, {self.n_objects} objects")
        figure.tight_layout()
        target = Path(path)
        figure.savefig(target, format="png")
        return target
