"""'Learn from my labels' in the dock widget: a real viewer, the real default model.

The labels are written into the session's labels store (as commits are); the widget tunes
the model on them in its task worker, with a short time budget.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from napari import Viewer
from scipy import ndimage

import napari_segany.finetuning.run as finetune_module
from napari_segany._napari.widget import SegmentAnythingWidget
from napari_segany.finetuning.run import FinetuneCancelled, FinetuneReport

from .test_widget import WAIT, _open_widget, _start

pytestmark = [pytest.mark.gui, pytest.mark.slow]

BUDGET = 8.0  # seconds of training, validation included
# Scoring the held-back objects before and after training takes most of the time on a CPU
# (10-50 s on two cores): the workers get 3 * WAIT.
NAMES = {"click": "one click", "box": "box", "clicks8": "8 clicks"}


def bright_blobs() -> tuple[np.ndarray, np.ndarray]:
    """A 192 x 192 image of 16 bright ellipses of various sizes on a noisy background,
    and their labels (ids 1..16)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:192, :192]
    truth = np.zeros((192, 192), dtype=np.uint16)
    for label in range(1, 17):
        row, col = divmod(label - 1, 4)
        cy, cx = 26 + 46 * row + rng.integers(-4, 5), 26 + 46 * col + rng.integers(-4, 5)
        ry, rx = rng.uniform(8, 15, size=2)
        truth[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = label
    image = ndimage.gaussian_filter(np.where(truth > 0, 200.0, 30.0), sigma=1.0)
    image += rng.normal(0, 8, truth.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


@pytest.fixture
def blobs_widget(
    qtbot, make_napari_viewer: Callable[..., Viewer]
) -> Iterator[tuple[SegmentAnythingWidget, np.ndarray]]:
    """The widget with a started session on the blobs, its slice embedded; the truth."""
    image, truth = bright_blobs()
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="blobs")
    widget = _open_widget(viewer)
    _start(qtbot, widget, "blobs")
    qtbot.waitUntil(lambda: not widget.controller.running("embed"), timeout=WAIT)
    assert widget.session.is_embedded(0)
    widget.finetune_budget = BUDGET
    yield widget, truth
    widget.close_session()


def _commit(widget: SegmentAnythingWidget, truth: np.ndarray, ids: range) -> None:
    for label in ids:
        assert widget.session.labels.commit(truth == label, z=0) == label
    widget.labels_layer.refresh()


def _learn(qtbot, widget: SegmentAnythingWidget, *, timeout: int = 3 * WAIT) -> list[str]:
    """Click "Learn from my labels" and wait for its worker; the statuses seen meanwhile."""
    seen: list[str] = []

    def finished() -> bool:
        if not seen or seen[-1] != widget.status.text():
            seen.append(widget.status.text())
        return not widget.controller.running("learn")

    widget.learn_button.click()
    assert widget.cancel_button.isEnabled() and not widget.learn_button.isEnabled()
    qtbot.waitUntil(finished, timeout=timeout)
    assert widget.learn_button.isEnabled() and not widget.cancel_button.isEnabled()
    return seen


def _scores(report: FinetuneReport, tuned: bool) -> str:
    if tuned:
        return ", ".join(
            f"{NAMES[k]} {report.before[k]:.2f} → {report.after[k]:.2f}" for k in NAMES
        )
    return ", ".join(f"{NAMES[k]} {report.before[k]:.2f}" for k in NAMES)


def _expected_status(report: FinetuneReport) -> str:
    if report.kept == "tuned":
        return (
            f"Tuned on {report.training_objects} objects; held-back objects: "
            f"{_scores(report, True)}; now using {report.checkpoint.name}."
        )
    return (
        f"No gain on the {report.validation_objects} held-back objects "
        f"({_scores(report, False)}); the base model mobile_sam is kept."
    )


def test_too_few_objects_cancel_and_closing_change_nothing(
    qtbot, blobs_widget, monkeypatch: pytest.MonkeyPatch, shown_errors
) -> None:
    widget, truth = blobs_widget
    session = widget.session
    base = session.model
    tuned_file = session.workspace / "tuned-mobile_sam.pt"

    # Too few objects: one line says how many more are needed; nothing else changes.
    _commit(widget, truth, range(1, 7))
    (*_, status) = _learn(qtbot, widget)
    assert status == (
        "Cannot learn from your labels: fine-tuning needs at least 10 labelled objects "
        "(some are held back to check it), found 6: label 4 more."
    )
    assert session.model is base and session.segmenter.model is base
    assert widget.finetune_report is None and not tuned_file.exists()
    assert shown_errors == []

    # Enough objects, but Cancel: it stops, and the model is unchanged.
    _commit(widget, truth, range(7, 17))
    outcomes: list[str] = []
    real = finetune_module.finetune

    def recorded(*args: Any, **kwargs: Any) -> Any:
        try:
            result = real(*args, **kwargs)
        except FinetuneCancelled:
            outcomes.append("cancelled")
            raise
        outcomes.append(result[1].kept)
        return result

    monkeypatch.setattr(finetune_module, "finetune", recorded)
    widget.finetune_budget = None  # the default, minutes on a CPU: only Cancel ends it soon
    widget.learn_button.click()
    widget.cancel_button.click()
    assert widget.status.text() == "Cancelling…"
    # The engine sees the cancel once it has scored the base model (seconds to a minute).
    qtbot.waitUntil(lambda: not widget.controller.running("learn"), timeout=3 * WAIT)
    assert outcomes == ["cancelled"]
    assert widget.status.text() == "Learning cancelled; the model is unchanged."
    assert session.model is base and session.segmenter.model is base
    assert widget.finetune_report is None and not tuned_file.exists()
    assert widget.learn_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert shown_errors == []

    # Closing the widget while it learns cancels it too.
    widget.learn_button.click()
    assert widget.controller.running("learn")
    widget.close_session()  # waits for the worker: it sees the cancel
    assert outcomes == ["cancelled", "cancelled"]
    assert session.model is base and not tuned_file.exists()
    assert shown_errors == []


def test_learning_reports_held_back_scores_and_uses_a_tuned_model(
    qtbot, blobs_widget, monkeypatch: pytest.MonkeyPatch, shown_errors
) -> None:
    widget, truth = blobs_widget
    session = widget.session
    base = session.model
    tuned_file = session.workspace / "tuned-mobile_sam.pt"
    _commit(widget, truth, range(1, 17))

    # For real, with a short budget: the bar and the status follow the steps.
    seen = _learn(qtbot, widget)
    steps = [
        s for s in seen if re.fullmatch(r"Learning from your labels: step \d+ of about \d+…", s)
    ]
    assert steps, seen
    report = widget.finetune_report
    assert report is not None and report.validation_objects >= 3
    assert report.training_objects + report.validation_objects == 16
    assert widget.status.text() == _expected_status(report)
    if report.kept == "tuned":
        assert session.model is not base and session.model.name == "tuned-mobile_sam.pt"
        assert session.segmenter.model is session.model
        assert report.checkpoint == tuned_file and tuned_file.is_file()
    else:
        assert session.model is base and session.segmenter.model is base
    assert shown_errors == []

    # Each outcome once more, with an engine that answers at once: what the widget passes,
    # and what it does with each answer.
    current = session.model
    other = copy.copy(base)  # another model object with the same encoder
    before = {"click": 0.5, "box": 0.6, "clicks8": 0.7}
    after = {"click": 0.8, "box": 0.9, "clicks8": 0.95}
    answers = [
        (current, FinetuneReport(before, before, "base", 12, 4, 3, 1.0, "no more gain")),
        (other, FinetuneReport(before, after, "tuned", 12, 4, 3, 1.0, "time budget", tuned_file)),
    ]
    calls: list[dict[str, Any]] = []

    def answer(pairs: Any, model: Any, **kwargs: Any) -> Any:
        calls.append({"pairs": pairs, "model": model, **kwargs})
        return answers[len(calls) - 1]

    monkeypatch.setattr(finetune_module, "finetune", answer)
    _learn(qtbot, widget)
    ((store, labels),) = calls[0]["pairs"]
    assert store is session.store and calls[0]["model"] is current
    np.testing.assert_array_equal(np.asarray(labels)[0], truth)
    assert calls[0]["time_budget"] == BUDGET and calls[0]["out"] == tuned_file
    assert calls[0]["progress"] is False
    assert widget.status.text() == (
        "No gain on the 4 held-back objects (one click 0.50, box 0.60, 8 clicks 0.70); "
        f"the base model {current.name} is kept."
    )
    assert session.model is current and session.segmenter.model is current

    _learn(qtbot, widget)
    assert widget.status.text() == (
        "Tuned on 12 objects; held-back objects: one click 0.50 → 0.80, box 0.60 → 0.90, "
        "8 clicks 0.70 → 0.95; now using tuned-mobile_sam.pt."
    )
    assert session.model is other and session.segmenter.model is other
    assert session.segmenter.refine == widget.refine_check.isChecked()
    assert shown_errors == []
