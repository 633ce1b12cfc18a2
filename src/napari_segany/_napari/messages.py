"""What the widget says: its keys, its status line and the line about the preview.

Plain text from plain data: the controller decides when each is shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..finetuning.run import FinetuneReport
    from ..session import Preview, Session

__all__ = [
    "SHORTCUTS",
    "commit_and_clear_keys",
    "committed",
    "embedded",
    "learned",
    "next_step",
    "one_line",
    "preview_line",
    "session_opened",
    "slice_ranges",
]

#: Keys bound on the viewer while the widget is open: (key, method name, what it does).
SHORTCUTS = (
    ("c", "commit", "commit the preview as new object(s)"),
    ("x", "clear_prompts", "clear the prompts on this slice"),
    ("n", "next_candidate", "next candidate mask"),
    ("t", "toggle_sign", "next points negative / positive"),
    ("Shift-P", "propagate", "carry the preview through z"),
    ("Shift-Z", "undo", "undo the last commit"),
    ("Shift-Y", "redo", "redo"),
    ("Shift-S", "segment_slice", "segment every object of this slice automatically"),
)

#: The held-back scores of "Learn from my labels", by prompt kind.
_SCORES = {"click": "one click", "box": "box", "clicks8": "8 clicks"}


def slice_ranges(done: np.ndarray) -> str:
    """``"0-4, 7"`` for the True entries of a boolean array; ``"none"`` when there are none."""
    runs, start = [], None
    for i, flag in enumerate([*np.asarray(done, bool).tolist(), False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append(str(start) if i - 1 == start else f"{start}-{i - 1}")
            start = None
    return ", ".join(runs) or "none"


def commit_and_clear_keys() -> str:
    """``"(C commits, X clears)"``, with the keys that are bound (:data:`SHORTCUTS`)."""
    keys = {name: key.upper() for key, name, _ in SHORTCUTS}
    return f"({keys['commit']} commits, {keys['clear_prompts']} clears)"


def next_step(ready: bool) -> str:
    """What to do once a session is open; ``ready``: the slice on screen is embedded."""
    # Clicking before the slice is embedded is fine: the prompts wait for it.
    click = "Ready: click" if ready else "Click"
    return f"{click} an object to segment it {commit_and_clear_keys()}."


def session_opened(step: str, session: Session) -> str:
    """The status once ``session`` is open: what to do, where its files are, what they hold."""
    embedded = int(session.store.done().sum())
    return (
        f"{step} Session in {session.workspace}: {embedded} of {len(session.volume)} slice(s) "
        f"embedded, {len(session.labels.log())} object(s) committed earlier."
    )


def embedded(step: str, z: int, done: int, wanted: int, slices: np.ndarray) -> str:
    """The status after slice ``z`` was embedded; ``slices``: which ones are, all told."""
    return (
        f"{step} Embedded {done} of {wanted} wanted slices (last: slice {z}); "
        f"slices embedded: {slice_ranges(slices)} of {len(slices)}."
    )


def committed(ids: list[int]) -> str:
    """The status after the objects ``ids`` were committed."""
    return (
        f"Committed object(s) {', '.join(map(str, ids))}; click the next object "
        f"{commit_and_clear_keys()}."
    )


def preview_line(preview: Preview | None) -> str:
    """The line beside Next mask: how many objects, which candidate, their scores."""
    if preview is None:
        return ""
    scores = ", ".join(f"{p.score:.2f}" for p in preview.predictions)
    which = preview.predictions[0]
    return (
        f"{len(preview.predictions)} object(s), mask {which.index + 1}/"
        f"{len(which.scores)}, score {scores}"
    )


def one_line(err: Exception) -> str:
    """An error's message on one line, without its final full stop."""
    return " ".join(str(err).split()).rstrip(".")


def learned(report: FinetuneReport, base: str, used: str) -> str:
    """The status after "Learn from my labels": the held-back scores, which model is used.

    Parameters
    ----------
    report
        What the fine-tuning found.
    base
        The name of the model tuned (kept when the tuned one does no better).
    used
        The name of the tuned model, when it is used.
    """
    if report.kept != "tuned":
        scores = ", ".join(f"{_SCORES[k]} {report.before[k]:.2f}" for k in _SCORES)
        return (
            f"No gain on the {report.validation_objects} held-back objects ({scores}); "
            f"the base model {base} is kept."
        )
    gains = ", ".join(
        f"{_SCORES[k]} {report.before[k]:.2f} → {report.after[k]:.2f}" for k in _SCORES
    )
    return (
        f"Tuned on {report.training_objects} objects; held-back objects: {gains}; now using {used}."
    )
