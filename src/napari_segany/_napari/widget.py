"""The "Segment Anything" dock widget: click cells, see masks at once, commit, carry through z.

This module holds the Qt controls only. What they do is decided by the Qt-free
:class:`~napari_segany._napari.controller.Controller`, whose slow calls (loading the model
and opening the session, embedding, decoding, propagation, automatic segmentation,
learning) run in napari thread workers (:class:`~napari_segany._napari.workers.QtRunner`);
the GUI thread only reads prompt layers and shows results. See ``docs/napari.md`` for the
user's guide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QProgressBar,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..automatic.params import AutomaticParams
from ..device import keep_large_allocations
from ..propagate import StopRule
from .controller import Controller, devices
from .messages import SHORTCUTS, slice_ranges
from .qt_widgets import WrappingLabel, button, fit_dock_title, form, group, unit_spin
from .workers import QtRunner

__all__ = [
    "SHORTCUTS",
    "SegmentAnythingWidget",
    "slice_ranges",
]


class _OfController:
    """An attribute of the widget that is its controller's (or ``part``'s of it)."""

    def __init__(self, part: str | None = None) -> None:
        self.part = part

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _owner(self, widget: SegmentAnythingWidget) -> Any:
        return getattr(widget.controller, self.part) if self.part else widget.controller

    def __get__(self, widget: SegmentAnythingWidget | None, owner: type | None = None) -> Any:
        return self if widget is None else getattr(self._owner(widget), self.name)

    def __set__(self, widget: SegmentAnythingWidget, value: Any) -> None:
        setattr(self._owner(widget), self.name, value)


class SegmentAnythingWidget(QWidget):
    """Interactive Segment Anything for the image layers of a napari viewer.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it when the widget is opened from the Plugins menu).

    Attributes
    ----------
    controller
        What the controls do (:class:`~napari_segany._napari.controller.Controller`).
    session, preview, image, points, boxes, preview_layer, labels_layer
        The controller's session, preview, image and layers.
    finetune_budget
        Seconds of training for "Learn from my labels" (None: the engine's default).
    finetune_report
        The last :class:`~napari_segany.finetuning.run.FinetuneReport` of "Learn from my labels".
    """

    session = _OfController()
    preview = _OfController()
    image = _OfController()
    points = _OfController()
    boxes = _OfController()
    preview_layer = _OfController()
    labels_layer = _OfController()
    finetune_budget = _OfController("long_tasks")
    finetune_report = _OfController("long_tasks")

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        # Before any of the widget's worker threads exists, so that they share the main
        # malloc heap and reuse the model's large blocks (see keep_large_allocations).
        keep_large_allocations()
        self.viewer = napari_viewer
        self.controller = Controller(napari_viewer, QtRunner(self))
        # Deleted with the viewer, maybe without a closeEvent: late results go nowhere.
        self.destroyed.connect(self.controller.detach)
        self._build()
        self._connect()
        self._refresh_images()

    # -- building ---------------------------------------------------------------------------

    def _build(self) -> None:
        from ..weights import list_models

        self.image_combo = QComboBox()
        # Layer names can be long (file names): they must not widen the dock.
        self.image_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.image_combo.setMinimumContentsLength(12)
        self.model_combo = QComboBox()
        self.model_combo.addItems(list_models())
        self.model_combo.setCurrentText("mobile_sam")
        self.device_combo = QComboBox()
        self.device_combo.addItems(devices())
        tip = "Open the image's session: embeddings and labels"
        self.start_button = button("Start", self.start, tip)
        setup = form(
            ("Image", self.image_combo),
            ("Model", self.model_combo),
            ("Device", self.device_combo),
            self.start_button,
        )

        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m slices")
        self.embed_all_button = button("Embed all", self.embed_all)
        self.cancel_button = button("Cancel", self.cancel_embedding)
        self.status = WrappingLabel(self.controller.status)
        embed_row = QHBoxLayout()
        embed_row.addWidget(self.embed_all_button)
        embed_row.addWidget(self.cancel_button)
        embedding = QVBoxLayout()
        embedding.addWidget(self.progress)
        embedding.addLayout(embed_row)
        embedding.addWidget(self.status)

        self.negative_check = QCheckBox("Negative points (T)")
        self.negative_check.toggled.connect(self.controller.set_negative)
        self.refine_check = QCheckBox("Refined click")
        self.refine_check.setChecked(self.controller.refine)
        self.refine_check.setToolTip(
            "A click takes the smallest of SAM's candidate masks that is more than a speck "
            "(better on cells and nuclei); off: SAM's own choice by predicted IoU"
        )
        self.refine_check.toggled.connect(self.controller.set_refine)
        self.commit_button = button("Commit (C)", self.commit)
        self.clear_button = button("Clear (X)", self.clear_prompts)
        self.cycle_button = button("Next mask (N)", self.next_candidate)
        self.undo_button = button("Undo (Shift+Z)", self.undo)
        self.redo_button = button("Redo (Shift+Y)", self.redo)
        self.propagate_button = button("Propagate through z (Shift+P)", self.propagate)
        self.min_overlap = unit_spin(StopRule.min_overlap, "Least overlap with the previous slice")
        self.min_score = unit_spin(StopRule.min_score, "Least predicted IoU")
        self.preview_info = WrappingLabel()
        grid = QGridLayout()
        grid.addWidget(self.negative_check, 0, 0)
        grid.addWidget(self.refine_check, 0, 1)
        grid.addWidget(self.commit_button, 1, 0)
        grid.addWidget(self.clear_button, 1, 1)
        grid.addWidget(self.cycle_button, 2, 0)
        grid.addWidget(self.undo_button, 3, 0)
        grid.addWidget(self.redo_button, 3, 1)
        grid.addWidget(self.preview_info, 2, 1)
        stop = form(
            ("Stop below overlap", self.min_overlap),
            ("Stop below score", self.min_score),
            self.propagate_button,
        )
        grid.addLayout(stop, 4, 0, 1, 2)

        self.points_per_side = QSpinBox()
        self.points_per_side.setRange(4, 64)
        self.points_per_side.setValue(AutomaticParams.points_per_side)
        self.points_per_side.setToolTip("Grid of point prompts per side of a slice (or tile)")
        self.automatic_mode = QComboBox()
        for text, mode in (
            ("sparse (fast)", "sparse"),
            ("seeded (blobs)", "seeded"),
            ("full grid", "grid"),
        ):
            self.automatic_mode.addItem(text, mode)
        self.automatic_mode.setCurrentIndex(self.automatic_mode.findData(AutomaticParams.mode))
        self.automatic_mode.setToolTip(
            "Which point prompts are decoded: sparse goes coarse to fine, skipping points inside "
            "objects found or in the background (fast); seeded starts at the centres of bright "
            "blobs; full grid decodes every point, as SAM does (slowest)"
        )
        self.follow_labels = QCheckBox("Follow my objects")
        self.follow_labels.setToolTip(
            "Look for objects like the ones already labelled: their size and brightness; "
            "needs at least 3"
        )
        self.segment_slice_button = button("Segment this slice", self.segment_slice)
        self.segment_volume_button = button("Segment the volume", self.segment_volume)
        automatic = form(
            ("Prompts", self.automatic_mode),
            ("Points per side", self.points_per_side),
            self.follow_labels,
            self.segment_slice_button,
            self.segment_volume_button,
        )

        self.learn_button = button(
            "Learn from my labels",
            self.learn,
            "Tune the model on the committed objects (some held back to check it); the "
            "tuned model is used only if it does better on them",
        )
        self.save_button = button("Save labels as…", self.save_labels_dialog)

        outer = QVBoxLayout(self)
        outer.addLayout(setup)
        outer.addWidget(group("Embeddings", embedding))
        outer.addWidget(group("Objects", grid))
        outer.addWidget(group("Automatic", automatic))
        outer.addWidget(self.learn_button)
        outer.addWidget(self.save_button)
        outer.addStretch(1)
        self._enable(self.controller.controls())

    def _connect(self) -> None:
        controller = self.controller
        controller.status_changed.connect(self.status.setText)
        controller.progress_changed.connect(self._show_progress)
        controller.unit_changed.connect(self._show_unit)
        controller.preview_line_changed.connect(self.preview_info.setText)
        controller.controls_changed.connect(self._enable)
        controller.layers_added.connect(self._bind_layers)
        # Looked up at each call: tests replace them.
        controller.error.connect(lambda text: show_error(text))
        controller.warning.connect(lambda text: show_warning(text))
        controller.info.connect(lambda text: show_info(text))
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self._bind_shortcuts(self.viewer)

    def _enable(self, enabled: dict[str, bool]) -> None:
        for name, on in enabled.items():  # each the button of that name; or the check box
            control = self.negative_check if name == "negative" else getattr(self, f"{name}_button")
            control.setEnabled(on)

    def _show_progress(self, done: int, total: int) -> None:
        self.progress.setMaximum(total)
        self.progress.setValue(done)

    def _show_unit(self, unit: str) -> None:
        self.progress.setFormat(f"%v / %m {unit}")

    def _bind_layers(self, layers: list[Any]) -> None:
        for layer in layers:
            self._bind_shortcuts(layer)

    def _bind_shortcuts(self, target: Any) -> None:
        # On the viewer, and on our own layers too: a selected layer's keys come first.
        for key, name, _ in SHORTCUTS:
            target.bind_key(key, _Shortcut(self, name), overwrite=True)

    def _refresh_images(self, *_: Any) -> None:
        current = self.image_combo.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)

    # -- actions (the controller's, with the settings of the controls) -----------------------

    def start(self) -> None:
        """Open the chosen image's session in a worker (model, embeddings, labels)."""
        image, model = self.image_combo.currentText(), self.model_combo.currentText()
        self.controller.start(image, model, self.device_combo.currentText())

    def stop(self, wait: bool = False) -> None:
        """Stop the workers and close the session (the labels stay on disk).

        Parameters
        ----------
        wait
            Block until the workers have finished. Automatic segmentation and propagation
            are cancelled first (a cancelled propagation commits nothing).
        """
        self.controller.stop(wait)

    def embed_all(self) -> None:
        """Embed every slice of the volume, the one on screen first."""
        self.controller.embed_all()

    def cancel_embedding(self) -> None:
        """Stop embedding, automatic segmentation and propagation soon (the Cancel button).

        Finished embeddings and automatically segmented slices are kept; a cancelled
        propagation adds nothing.
        """
        self.controller.cancel()

    def commit(self) -> list[int]:
        """Add the preview's objects to the labels (and the store on disk); their ids."""
        return self.controller.commit()

    def clear_prompts(self) -> None:
        """Remove the prompts on the slice on screen and its preview."""
        self.controller.clear_prompts()

    def next_candidate(self) -> None:
        """Show every object's next candidate mask."""
        self.controller.next_candidate()

    def toggle_sign(self) -> None:
        """Switch the next points between positive and negative."""
        self.negative_check.setChecked(not self.negative_check.isChecked())

    def undo(self) -> int | None:
        """Undo the last commit; the id removed."""
        return self.controller.undo()

    def redo(self) -> int | None:
        """Redo the last undone commit; its id."""
        return self.controller.redo()

    def stop_rule(self) -> StopRule:
        """The propagation stop rule from the widget's settings."""
        return StopRule(min_overlap=self.min_overlap.value(), min_score=self.min_score.value())

    def propagate(self) -> None:
        """Carry the preview's objects through z (in a worker) and commit them."""
        self.controller.long_tasks.propagate(self.stop_rule())

    def segment_slice(self) -> None:
        """Segment every object of the slice on screen, in a worker, into the labels."""
        self._segment(self.controller.current_z())

    def segment_volume(self) -> None:
        """Segment every object of the whole volume (linked through z), in a worker."""
        self._segment(None)

    def _segment(self, z: int | None) -> None:
        mode, points = self.automatic_mode.currentData(), self.points_per_side.value()
        params = AutomaticParams(mode=mode, points_per_side=points)
        self.controller.long_tasks.segment(z, params, self.follow_labels.isChecked())

    def learn(self) -> None:
        """Tune the model on the committed labels (in a worker), then decode with it.

        See :meth:`~napari_segany._napari.long_tasks.LongTasks.learn`.
        """
        self.controller.long_tasks.learn()

    def save_labels(self, path: str | Path) -> Path:
        """Write the committed labels to a new OME-Zarr at ``path``."""
        return self.controller.save_labels(path)

    def save_labels_dialog(self) -> None:
        """Ask where, then :meth:`save_labels`."""
        path, _ = QFileDialog.getSaveFileName(self, "Save labels as OME-Zarr", "labels.ome.zarr")
        if path:
            try:
                self.save_labels(path)
            except Exception as err:
                self.controller.report("the labels could not be saved", err)

    # -- closing, and the dock ----------------------------------------------------------------

    def close_session(self) -> None:
        """Stop everything and wait for the workers (before the viewer closes)."""
        self.controller.close()
        for key, _, _ in SHORTCUTS:
            self.viewer.keymap.pop(key, None)

    def closeEvent(self, event: Any) -> None:
        self.close_session()
        super().closeEvent(event)

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        fit_dock_title(self)


class _Shortcut:
    """A viewer key binding that calls a widget method, and nothing once the widget is gone."""

    def __init__(self, widget: SegmentAnythingWidget, name: str) -> None:
        self._widget, self._name = widget, name

    def __call__(self, _viewer: Any) -> None:
        if not self._widget.controller.closed:
            getattr(self._widget, self._name)()
