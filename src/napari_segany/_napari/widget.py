"""The "Segment Anything" dock widget: click cells, see masks at once, commit, carry through z.

Everything slow runs in napari thread workers: loading the model and opening the
session, embedding (the slice on screen first, then its neighbours, or the whole volume),
decoding (latest wins: while one decode runs, only the newest request waits), and
propagation. The GUI thread only reads prompt layers and shows results. See
``docs/napari.md`` for the user's guide.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import FunctionWorker, GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..automatic.params import AutomaticParams
from ..device import keep_large_allocations
from ..embeddings import NotEmbeddedError
from ..propagate import PropagationCancelled, StopRule
from ..session import EmbeddingQueue, Preview, Session, volume_from_layer
from . import layers

if TYPE_CHECKING:
    from ..finetuning.run import FinetuneReport
    from ..model import SamModel

__all__ = [
    "SHORTCUTS",
    "SegmentAnythingWidget",
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


def _unwrap(obj: Any) -> Any:
    """The object behind napari's public-only proxy (plugins get proxies of the viewer)."""
    return getattr(obj, "__wrapped__", obj)


def _source_path(layer: Image) -> str | None:
    path = getattr(layer.source, "path", None)
    return str(path) if path else None


def _preview_with_outline(
    session: Session, z: int, points: np.ndarray, signs: np.ndarray, boxes: np.ndarray
) -> tuple[Preview, np.ndarray] | None:
    """Decode in a worker thread, with what the preview layer draws: the GUI only shows it.

    The preview keeps its labels image (the masks upscaled); the outline of its objects is
    what the layer shows.
    """
    preview = session.preview(z, points, signs, boxes)
    if preview is None:
        return None
    return preview, layers.outline(preview.labels())


def _learn_from_labels(
    session: Session,
    budget: float | None,
    *,
    callback: Callable[[int, int], None],
    cancel: Callable[[], bool],
) -> tuple[SamModel, FinetuneReport]:
    """Tune the session's model on its committed labels (in a worker thread)."""
    from ..finetuning.run import finetune

    name = session.model.name  # tuned again: the tuned file is replaced (at each gain)
    out = name if name.startswith("tuned-") else f"tuned-{Path(name).stem}.pt"
    return finetune(
        [(session.store, session.labels.read())],
        session.model,
        time_budget=budget,
        out=session.workspace / out,
        progress=False,
        callback=callback,
        cancel=cancel,
    )


class SegmentAnythingWidget(QWidget):
    """Interactive Segment Anything for the image layers of a napari viewer.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it when the widget is opened from the Plugins menu).

    Attributes
    ----------
    finetune_budget
        Seconds of training for "Learn from my labels" (None: the engine's default).
    finetune_report
        The last :class:`~napari_segany.finetuning.run.FinetuneReport` of "Learn from my labels".
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        # Before any of the widget's worker threads exists, so that they share the main
        # malloc heap and reuse the model's large blocks (see keep_large_allocations).
        keep_large_allocations()
        self.viewer = napari_viewer
        self.session: Session | None = None
        self.image: Image | None = None
        self.points: Points | None = None
        self.boxes: Shapes | None = None
        self.preview_layer: Labels | None = None
        self.labels_layer: Labels | None = None
        self.preview: Preview | None = None
        self._models: dict[tuple[str, str], Any] = {}
        self._queue: EmbeddingQueue | None = None
        self._start_worker: FunctionWorker | None = None
        self._embed_worker: GeneratorWorker | None = None
        self._decode_worker: FunctionWorker | None = None
        self._propagate_worker: FunctionWorker | None = None
        self._decode_again = False
        self._waiting_for: int | None = None
        self._generation = 0
        self._closed = False
        self._decode_generation = 0
        self._automatic_worker: FunctionWorker | None = None
        self._automatic_follows = False  # the running segmentation follows the labels
        self._propagating_z = 0
        self._propagate_generation = 0
        self._finetune_worker: FunctionWorker | None = None
        self._finetune_generation = 0
        self.finetune_budget: float | None = None
        self.finetune_report: FinetuneReport | None = None
        # The long tasks, automatic segmentation, propagation, learning (one at a time, see
        # _busy): Cancel sets the event, and the timer shows the progress their worker
        # writes into the list (see _task_worker).
        self._task_cancel = threading.Event()
        self._task_progress = [0, 0]
        self._task_message: Callable[[int, int], str] = "{} of {}".format
        self._task_timer = QTimer(self)
        self._task_timer.setInterval(200)
        self._task_timer.timeout.connect(self._task_tick)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(5)
        self._debounce.timeout.connect(self._decode_now)
        self._build()
        self._connect_viewer()
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
        self.device_combo.addItems(_devices())
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Open the image's session: embeddings and labels")
        self.start_button.clicked.connect(self.start)

        setup = QFormLayout()
        setup.addRow("Image", self.image_combo)
        setup.addRow("Model", self.model_combo)
        setup.addRow("Device", self.device_combo)
        setup.addRow(self.start_button)

        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m slices")
        self.embed_all_button = QPushButton("Embed all")
        self.embed_all_button.clicked.connect(self.embed_all)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_embedding)
        self.status = _WrappingLabel("Pick an image and press Start.")
        embed_row = QHBoxLayout()
        embed_row.addWidget(self.embed_all_button)
        embed_row.addWidget(self.cancel_button)
        embedding = QVBoxLayout()
        embedding.addWidget(self.progress)
        embedding.addLayout(embed_row)
        embedding.addWidget(self.status)
        embedding_box = QGroupBox("Embeddings")
        embedding_box.setLayout(embedding)

        self.negative_check = QCheckBox("Negative points (T)")
        self.negative_check.toggled.connect(self._sign_changed)
        self.refine_check = QCheckBox("Refined click")
        self.refine_check.setChecked(True)
        self.refine_check.setToolTip(
            "A click takes the smallest of SAM's candidate masks that is more than a speck "
            "(better on cells and nuclei); off: SAM's own choice by predicted IoU"
        )
        self.refine_check.toggled.connect(self._refine_changed)
        self.commit_button = QPushButton("Commit (C)")
        self.clear_button = QPushButton("Clear (X)")
        self.cycle_button = QPushButton("Next mask (N)")
        self.undo_button = QPushButton("Undo (Shift+Z)")
        self.redo_button = QPushButton("Redo (Shift+Y)")
        self.propagate_button = QPushButton("Propagate through z (Shift+P)")
        self.commit_button.clicked.connect(self.commit)
        self.clear_button.clicked.connect(self.clear_prompts)
        self.cycle_button.clicked.connect(self.next_candidate)
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self.propagate_button.clicked.connect(self.propagate)
        self.min_overlap = _spin(StopRule.min_overlap, "Least overlap with the previous slice")
        self.min_score = _spin(StopRule.min_score, "Least predicted IoU")
        self.preview_info = _WrappingLabel()
        grid = QGridLayout()
        grid.addWidget(self.negative_check, 0, 0)
        grid.addWidget(self.refine_check, 0, 1)
        grid.addWidget(self.commit_button, 1, 0)
        grid.addWidget(self.clear_button, 1, 1)
        grid.addWidget(self.cycle_button, 2, 0)
        grid.addWidget(self.undo_button, 3, 0)
        grid.addWidget(self.redo_button, 3, 1)
        grid.addWidget(self.preview_info, 2, 1)
        stop = QFormLayout()
        stop.addRow("Stop below overlap", self.min_overlap)
        stop.addRow("Stop below score", self.min_score)
        stop.addRow(self.propagate_button)
        grid.addLayout(stop, 4, 0, 1, 2)
        objects_box = QGroupBox("Objects")
        objects_box.setLayout(grid)

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
        self.segment_slice_button = QPushButton("Segment this slice")
        self.segment_volume_button = QPushButton("Segment the volume")
        self.segment_slice_button.clicked.connect(self.segment_slice)
        self.segment_volume_button.clicked.connect(self.segment_volume)
        automatic = QFormLayout()
        automatic.addRow("Prompts", self.automatic_mode)
        automatic.addRow("Points per side", self.points_per_side)
        automatic.addRow(self.follow_labels)
        automatic.addRow(self.segment_slice_button)
        automatic.addRow(self.segment_volume_button)
        automatic_box = QGroupBox("Automatic")
        automatic_box.setLayout(automatic)

        self.learn_button = QPushButton("Learn from my labels")
        self.learn_button.setToolTip(
            "Tune the model on the committed objects (some held back to check it); the "
            "tuned model is used only if it does better on them"
        )
        self.learn_button.clicked.connect(self.learn)
        self.save_button = QPushButton("Save labels as…")
        self.save_button.clicked.connect(self.save_labels_dialog)

        outer = QVBoxLayout(self)
        outer.addLayout(setup)
        outer.addWidget(embedding_box)
        outer.addWidget(objects_box)
        outer.addWidget(automatic_box)
        outer.addWidget(self.learn_button)
        outer.addWidget(self.save_button)
        outer.addStretch(1)
        self._enable(False)

    def _enable(self, ready: bool) -> None:
        for button in (
            self.embed_all_button,
            self.commit_button,
            self.clear_button,
            self.cycle_button,
            self.undo_button,
            self.redo_button,
            self.propagate_button,
            self.segment_slice_button,
            self.segment_volume_button,
            self.learn_button,
            self.save_button,
            self.negative_check,
        ):
            button.setEnabled(ready)
        self.cancel_button.setEnabled(False)

    def _connect_viewer(self) -> None:
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._layer_removed)
        self.viewer.dims.events.current_step.connect(self._slice_changed)
        self._bind_shortcuts(self.viewer)

    def _bind_shortcuts(self, target: Any) -> None:
        # On the viewer, and on our own layers too: a selected layer's keys come first.
        for key, name, _ in SHORTCUTS:
            target.bind_key(key, _Shortcut(self, getattr(self, name)), overwrite=True)

    def _refresh_images(self, *_: Any) -> None:
        current = self.image_combo.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)

    # -- starting a session -----------------------------------------------------------------

    def start(self) -> None:
        """Open the chosen image's session in a worker (model, embeddings, labels)."""
        name = self.image_combo.currentText()
        if name not in self.viewer.layers:
            show_warning("Segment Anything: add an image layer first")
            return
        image = self.viewer.layers[name]
        self.stop()
        self.image = image
        model_key = (self.model_combo.currentText(), self.device_combo.currentText())
        self.status.setText(f"Loading {model_key[0]} and opening the session…")
        self.start_button.setEnabled(False)
        data, rgb, multiscale = image.data, image.rgb, image.multiscale
        source = _source_path(image)
        worker = create_worker(
            self._open_session, data, rgb, multiscale, source, model_key, _start_thread=False
        )
        worker.returned.connect(self._session_ready)
        worker.errored.connect(self._start_failed)
        worker.finished.connect(self._start_finished)
        self._start_worker = worker
        worker.start()

    def _open_session(
        self, data: Any, rgb: bool, multiscale: bool, source: str | None, model_key: tuple
    ) -> Session:
        from ..model import load_model

        if model_key not in self._models:
            name, device = model_key
            self._models[model_key] = load_model(name, device, progress=False)
        volume = volume_from_layer(data, rgb=rgb, multiscale=multiscale)
        return Session.open(volume, self._models[model_key], source=source)

    def _start_failed(self, err: Exception) -> None:
        self.status.setText(f"Could not start: {err}")
        show_error(f"Segment Anything could not start: {err}")

    def _session_ready(self, session: Session) -> None:
        if self._closed or self.image is None or self.image.name not in self.viewer.layers:
            session.close()
            return
        self.session = session
        session.segmenter.refine = self.refine_check.isChecked()
        image = self.image
        self.labels_layer = self._add(layers.make_labels(image, session.labels.array))
        # Objects change through commits (logged, undoable), not napari's brush.
        self.labels_layer.editable = False
        self.preview_layer = self._add(layers.make_preview(image))
        self.boxes = self._add(layers.make_boxes(image))
        self.points = self._add(layers.make_points(image))
        self.boxes.mode = "add_rectangle"  # after adding: the layer controls follow it then
        self.points.mode = "add"
        for layer in (self.labels_layer, self.preview_layer, self.boxes, self.points):
            self._bind_shortcuts(layer)
        self.points.events.data.connect(self._prompts_changed)
        self.boxes.events.data.connect(self._prompts_changed)
        self.viewer.layers.selection.active = self.points
        self._queue = EmbeddingQueue(len(session.volume))
        self._queue.look_at(self._current_z())
        self._show_embedding_progress()
        self._enable(True)
        done = int(session.store.done().sum())
        self.status.setText(
            f"{self._next_step()} Session in {session.workspace}: {done} of "
            f"{len(session.volume)} slice(s) embedded, {len(session.labels.log())} object(s) "
            "committed earlier."
        )
        if session.read_only:
            show_warning(
                f"Segment Anything: the labels in {session.workspace} are being written by "
                "another process; they are shown read-only and commits are refused"
            )
        self._embed()

    def _add(self, layer: Any) -> Any:
        if layer.name in self.viewer.layers:
            self.viewer.layers.remove(layer.name)
        return self.viewer.add_layer(layer)

    def stop(self, wait: bool = False) -> None:
        """Stop the workers and close the session (the labels stay on disk).

        Parameters
        ----------
        wait
            Block until the workers have finished. Automatic segmentation and propagation
            are cancelled first (a cancelled propagation commits nothing).
        """
        self._generation += 1
        self._task_cancel.set()
        for worker in (self._embed_worker, self._propagate_worker):
            if worker is not None:
                worker.quit()
        if wait:
            FunctionWorker.await_workers(msecs=120_000)
        if self.session is not None:
            self.session.close()
        self.session = None
        self.preview = None
        self._enable(False)

    # -- embedding --------------------------------------------------------------------------

    def _current_z(self) -> int:
        if self.image is None or self.image.ndim == 2:
            return 0
        world = self.viewer.dims.point[-3]
        z = self.image.world_to_data([world, 0, 0])[0] if self.image.ndim == 3 else 0
        n = len(self.session.volume) if self.session is not None else 1
        return int(min(max(round(z), 0), n - 1))

    def _next_step(self) -> str:
        """What to do once a session is open."""
        ready = self.session is not None and self.session.is_embedded(self._current_z())
        # Clicking before the slice is embedded is fine: the prompts wait for it.
        click = "Ready: click" if ready else "Click"
        return f"{click} an object to segment it {_commit_and_clear_keys()}."

    def _embed(self) -> None:
        """Run the embedding worker if wanted slices are missing and none runs."""
        if self.session is None or self._queue is None or self._embed_worker is not None:
            return
        if self._queue.next(self.session.store.done()) is None:
            return
        worker = create_worker(self._queue.run, self.session, _start_thread=False)
        worker.yielded.connect(self._embedded)
        worker.errored.connect(self._embed_failed)
        worker.finished.connect(self._embedding_finished)
        self._embed_worker = worker
        self._update_cancel()
        next_z = self._queue.next(self.session.store.done())
        self.status.setText(f"{self._next_step()} Embedding slice {next_z}…")
        worker.start()

    def _embedded(self, update: tuple[int, int, int]) -> None:
        if self._closed:
            return
        z, done, wanted = update
        self.progress.setMaximum(wanted)
        self.progress.setValue(done)
        embedded = self.session.store.done() if self.session is not None else np.zeros(0, bool)
        self.status.setText(
            f"{self._next_step()} Embedded {done} of {wanted} wanted slices (last: slice {z}); "
            f"slices embedded: {slice_ranges(embedded)} of {len(embedded)}."
        )
        if self._waiting_for == z:
            self._waiting_for = None
            self._request_decode()

    def _embed_failed(self, err: Exception) -> None:
        self._report("embedding failed", err)

    def _start_finished(self) -> None:
        if not self._closed:
            self.start_button.setEnabled(True)

    def _embedding_finished(self) -> None:
        self._embed_worker = None
        if self._closed:
            return
        self._update_cancel()
        if self.session is not None and self._queue is not None:
            self._embed()  # the user may have moved on meanwhile

    def embed_all(self) -> None:
        """Embed every slice of the volume, the one on screen first."""
        if self._queue is not None:
            self._queue.want_all()
            self._show_embedding_progress()
            self._embed()

    def _show_embedding_progress(self) -> None:
        """The wanted slices and how many of them are embedded (some may be from before)."""
        if self._queue is None or self.session is None:
            return
        done, wanted = self._queue.progress(self.session.store.done())
        self.progress.setMaximum(wanted)
        self.progress.setValue(done)

    def cancel_embedding(self) -> None:
        """Stop embedding, automatic segmentation and propagation soon (the Cancel button).

        Finished embeddings and automatically segmented slices are kept; a cancelled
        propagation adds nothing.
        """
        self._task_cancel.set()
        if self._queue is not None:
            self._queue.want_all(False)
        if self._embed_worker is not None:
            self._embed_worker.quit()
            self.status.setText("Embedding cancelled; finished slices are kept.")
        tasks = (self._automatic_worker, self._propagate_worker, self._finetune_worker)
        if any(w is not None for w in tasks):
            self.status.setText("Cancelling…")

    def _update_cancel(self) -> None:
        """Cancel is enabled while something it stops runs."""
        workers = (
            self._embed_worker,
            self._automatic_worker,
            self._propagate_worker,
            self._finetune_worker,
        )
        self.cancel_button.setEnabled(any(w is not None for w in workers))

    def _slice_changed(self, *_: Any) -> None:
        if self.session is None or self._queue is None:
            return
        z = self._current_z()
        self._queue.look_at(z)
        if self.preview is not None and self.preview.z != z:
            self.preview = None
            self._show(None)
        self._embed()
        self._request_decode()

    # -- decoding (latest wins) --------------------------------------------------------------

    def _prompts_changed(self, event: Any = None) -> None:
        action = getattr(event, "action", None)
        if str(getattr(action, "value", action)).endswith("ing"):
            return  # napari's "adding"/"removing"/"changing": the data is not there yet
        self._color_points()
        if self._decode_worker is None and not self._debounce.isActive():
            self._decode_now()  # idle: start at once, overlapping the canvas repaint
        else:
            self._request_decode()  # busy: coalesce, the newest request wins

    def _color_points(self) -> None:
        points = self.points
        if points is None or not len(points.data):
            return
        signs = np.asarray(points.features[layers.SIGN], dtype=bool)
        colors = np.where(signs[:, None], layers.POSITIVE_COLOR, layers.NEGATIVE_COLOR)
        if not np.array_equal(points.face_color, colors):
            points.face_color = colors

    def _refine_changed(self, on: bool) -> None:
        if self.session is not None:
            self.session.segmenter.refine = on
            self._request_decode()

    def _request_decode(self) -> None:
        self._debounce.start()

    def _decode_now(self) -> None:
        if self.session is None or self.image is None:
            return
        if self._decode_worker is not None:
            self._decode_again = True  # the newest request waits; older ones are dropped
            return
        z = self._current_z()
        pts, signs, boxes = layers.prompts_on_slice(self.points, self.boxes, z, self.image.ndim)
        if not len(boxes) and not signs.any():
            self.preview = None
            self._show(None)
            return
        if not self.session.is_embedded(z):
            self._waiting_for = z  # decoded as soon as the slice is embedded
            self.status.setText(f"Waiting for slice {z}'s embedding; your prompts are kept.")
            self._embed()
            return
        self._decode_generation = self._generation
        worker = create_worker(
            _preview_with_outline, self.session, z, pts, signs, boxes, _start_thread=False
        )
        worker.returned.connect(self._decoded)
        worker.errored.connect(self._decode_failed)
        worker.finished.connect(self._decode_finished)
        self._decode_worker = worker
        worker.start()

    def _decoded(self, decoded: tuple[Preview, np.ndarray] | None) -> None:
        if self._decode_generation != self._generation or self._decode_again or self._closed:
            return  # stale: the session changed or newer prompts wait
        preview, outlined = decoded if decoded is not None else (None, None)
        if preview is not None and preview.z != self._current_z():
            return
        self.preview = preview
        self._show(preview, outlined)

    def _decode_failed(self, err: Exception) -> None:
        if isinstance(err, NotEmbeddedError):
            self._waiting_for = self._current_z()
            self._embed()
            return
        self._report("the prompts could not be decoded", err)

    def _decode_finished(self) -> None:
        self._decode_worker = None
        if self._decode_again and not self._closed:
            self._decode_again = False
            self._decode_now()

    def _show(self, preview: Preview | None, outlined: np.ndarray | None = None) -> None:
        """Show ``preview`` (None: nothing), drawn as ``outlined`` when that is known."""
        if self.preview_layer is None or self.image is None:
            return
        z = self._current_z() if preview is None else preview.z
        if preview is not None and outlined is None:
            outlined = layers.outline(preview.labels())
        layers.show_preview(self.preview_layer, self.image, z, outlined)
        if preview is None:
            self.preview_info.setText("")
        else:
            scores = ", ".join(f"{p.score:.2f}" for p in preview.predictions)
            which = preview.predictions[0]
            self.preview_info.setText(
                f"{len(preview.predictions)} object(s), mask {which.index + 1}/"
                f"{len(which.scores)}, score {scores}"
            )

    # -- actions ----------------------------------------------------------------------------

    def _busy(self) -> bool:
        if self._propagate_worker is not None:
            show_info("Segment Anything: wait for the propagation to finish")
            return True
        if self._automatic_worker is not None:
            show_info("Segment Anything: wait for the automatic segmentation to finish")
            return True
        if self._finetune_worker is not None:
            show_info("Segment Anything: wait for the learning from your labels to finish")
            return True
        return False

    def segment_slice(self) -> None:
        """Segment every object of the slice on screen, in a worker, into the labels."""
        self._segment_automatically(self._current_z())

    def segment_volume(self) -> None:
        """Segment every object of the whole volume (linked through z), in a worker."""
        self._segment_automatically(None)

    def _segment_automatically(self, z: int | None) -> None:
        if self.session is None or self._busy():
            return
        params = AutomaticParams(
            mode=self.automatic_mode.currentData(), points_per_side=self.points_per_side.value()
        )
        self._automatic_follows = follow = self.follow_labels.isChecked()
        worker = self._task_worker(
            self.session.segment_automatically,
            z,
            params=params,
            follow_labels=follow,
            total=1 if z is not None else len(self.session.volume),
            message="Segmenting automatically: {} of {} slice(s) done.".format,
            returned=self._segmented,
            errored=self._automatic_failed,
            finished=self._automatic_finished,
        )
        self._automatic_worker = worker
        self._start_task(worker, "Segmenting automatically…")

    def _segmented(self, ids: list[int]) -> None:
        self._end_task()
        if self._closed:
            return
        if self.labels_layer is not None:
            self.labels_layer.refresh()
        self.status.setText(f"Automatic segmentation added {len(ids)} object(s).")

    def _automatic_failed(self, err: Exception) -> None:
        self._end_task()
        if self._closed:
            return
        if self._automatic_follows and isinstance(err, ValueError):  # too few objects: one line
            line = " ".join(str(err).split()).rstrip(".")
            self.status.setText(f"Cannot follow your objects: {line}.")
        else:
            self._report("automatic segmentation failed", err)

    def _automatic_finished(self) -> None:
        self._automatic_worker = None
        self._end_task(show=False)
        if not self._closed and self.labels_layer is not None:
            self.labels_layer.refresh()

    def learn(self) -> None:
        """Tune the model on the committed labels (in a worker), then decode with it.

        The tuned model replaces the session's only if it beats it on held-back objects
        (see :func:`napari_segany.finetune`); it is saved in the session's workspace.
        Training lasts :attr:`finetune_budget` seconds; Cancel stops it, changing nothing.
        """
        if self.session is None or self._busy():
            return
        worker = self._task_worker(
            _learn_from_labels,
            self.session,
            self.finetune_budget,
            total=0,  # the steps are estimated once training runs
            message="Learning from your labels: step {} of about {}…".format,
            returned=self._learned,
            errored=self._learn_failed,
            finished=self._learning_finished,
        )
        self._finetune_generation = self._generation
        self._finetune_worker = worker
        self.learn_button.setEnabled(False)
        self.progress.setFormat("%v / %m steps")
        self._start_task(worker, "Learning from your labels: scoring the model first…")

    def _learned(self, result: tuple[SamModel, FinetuneReport]) -> None:
        self._end_task(complete=True)
        session = self.session
        if self._closed or session is None or self._finetune_generation != self._generation:
            return
        model, report = result
        self.finetune_report = report
        names = {"click": "one click", "box": "box", "clicks8": "8 clicks"}
        if report.kept != "tuned":
            base = ", ".join(f"{names[k]} {report.before[k]:.2f}" for k in names)
            self.status.setText(
                f"No gain on the {report.validation_objects} held-back objects ({base}); "
                f"the base model {session.model.name} is kept."
            )
            return
        try:
            session.use_model(model)
        except ValueError as err:
            self._report("the tuned model could not be used", err)
            return
        gains = ", ".join(
            f"{names[k]} {report.before[k]:.2f} → {report.after[k]:.2f}" for k in names
        )
        used = report.checkpoint.name if report.checkpoint is not None else model.name
        self.status.setText(
            f"Tuned on {report.training_objects} objects; held-back objects: {gains}; "
            f"now using {used}."
        )
        self._request_decode()  # the prompts on screen, with the tuned model

    def _learn_failed(self, err: Exception) -> None:
        from ..finetuning.run import FinetuneCancelled

        self._end_task()
        if self._closed or self._finetune_generation != self._generation:
            return  # the session was closed meanwhile: its own message stays
        if isinstance(err, FinetuneCancelled):
            self.status.setText("Learning cancelled; the model is unchanged.")
        elif isinstance(err, ValueError):  # too few objects, mismatched labels: one line
            line = " ".join(str(err).split()).rstrip(".")
            self.status.setText(f"Cannot learn from your labels: {line}.")
        else:
            self._report("learning from your labels failed", err)

    def _learning_finished(self) -> None:
        self._finetune_worker = None
        self._end_task(show=False)
        if not self._closed:
            self.progress.setFormat("%v / %m slices")
            self.learn_button.setEnabled(self.session is not None)

    # -- long tasks: progress polled from the GUI thread, Cancel ------------------------------

    def _task_worker(
        self,
        function: Callable[..., Any],
        *args: Any,
        total: int,
        message: Callable[[int, int], str],
        returned: Callable[[Any], None],
        errored: Callable[[Exception], None],
        finished: Callable[[], None],
        **kwargs: Any,
    ) -> FunctionWorker:
        """A worker (not started) running ``function(*args, **kwargs, callback, cancel)``.

        The callback only writes ``(done, total)`` into a list in the worker thread; the
        timer shows it, with ``message(done, total)`` as the status (``total`` 0: not
        known yet, the bar is busy). ``cancel`` polls the Cancel button's event. The
        handlers are connected here: with ``errored`` given, an error (a cancellation
        too) goes to it only, not raised again in the GUI thread.
        """
        self._task_cancel.clear()
        progress = self._task_progress = [0, total]
        self._task_message = message

        def report(done: int, at_most: int) -> None:  # called in the worker
            progress[:] = [done, at_most]

        return create_worker(
            function,
            *args,
            callback=report,
            cancel=self._task_cancel.is_set,
            _connect={"returned": returned, "errored": errored, "finished": finished},
            _start_thread=False,
            **kwargs,
        )

    def _start_task(self, worker: FunctionWorker, status: str) -> None:
        """Start a worker from :meth:`_task_worker` (kept in its attribute already)."""
        self._update_cancel()
        self._task_tick()
        self.status.setText(status)
        self._task_timer.start()
        worker.start()

    def _task_tick(self) -> None:
        done, total = self._task_progress
        self.progress.setMaximum(total)
        self.progress.setValue(done)
        if total and not self._task_cancel.is_set():  # else: "Cancelling…" stays
            self.status.setText(self._task_message(done, total))

    def _end_task(self, *, show: bool = True, complete: bool = False) -> None:
        """Stop the progress timer (before a task's result is shown: no tick overwrites it).

        ``show``: the bar shows the last progress reported, or all done (``complete``).
        """
        if self._closed:
            return  # the widget may be gone; close_session stopped the timer
        self._task_timer.stop()
        self._update_cancel()
        if show:
            done, total = self._task_progress
            total = max(total, 1)  # never left busy
            self.progress.setMaximum(total)
            self.progress.setValue(total if complete else min(done, total))

    def commit(self) -> list[int]:
        """Add the preview's objects to the labels (and the store on disk); their ids."""
        if self.session is None or self.preview is None or self._busy():
            return []
        preview = self.preview
        try:
            ids = self.session.commit(preview)
        except Exception as err:  # a read-only or locked store: say so, lose nothing
            self._report("the objects could not be committed", err)
            if self.labels_layer is not None:
                self.labels_layer.refresh()
            return []
        self._after_commit(preview.z, ids)
        return ids

    def _after_commit(self, z: int, ids: list[int]) -> None:
        self.preview = None
        self._show(None)
        if self.image is not None:
            layers.remove_prompts_on_slice(self.points, self.boxes, z, self.image.ndim)
        if self.labels_layer is not None:
            self.labels_layer.refresh()
        self.status.setText(
            f"Committed object(s) {', '.join(map(str, ids))}; click the next object "
            f"{_commit_and_clear_keys()}."
        )

    def clear_prompts(self) -> None:
        """Remove the prompts on the slice on screen and its preview."""
        if self.image is None:
            return
        layers.remove_prompts_on_slice(self.points, self.boxes, self._current_z(), self.image.ndim)
        self.preview = None
        self._show(None)

    def next_candidate(self) -> None:
        """Show every object's next candidate mask."""
        if self.preview is not None:
            self.preview = self.preview.cycle()
            self._show(self.preview)

    def toggle_sign(self) -> None:
        """Switch the next points between positive and negative."""
        self.negative_check.setChecked(not self.negative_check.isChecked())

    def _sign_changed(self, negative: bool) -> None:
        if self.points is not None:
            layers.set_sign(self.points, not negative)

    def undo(self) -> int | None:
        """Undo the last commit; the id removed."""
        if self.session is None or self._busy():
            return None
        try:
            removed = self.session.undo()
        except Exception as err:  # read-only labels, a changed store: say so
            self._report("the last commit could not be undone", err)
            return None
        self._labels_changed("undid object" if removed else "nothing to undo", removed)
        return removed

    def redo(self) -> int | None:
        """Redo the last undone commit; its id."""
        if self.session is None or self._busy():
            return None
        try:
            restored = self.session.redo()
        except Exception as err:
            self._report("the commit could not be redone", err)
            return None
        self._labels_changed("redid object" if restored else "nothing to redo", restored)
        return restored

    def _labels_changed(self, what: str, label_id: int | None) -> None:
        if self.labels_layer is not None:
            self.labels_layer.refresh()
        self.status.setText(f"{what} {label_id or ''}".strip() + ".")

    def stop_rule(self) -> StopRule:
        """The propagation stop rule from the widget's settings."""
        return StopRule(min_overlap=self.min_overlap.value(), min_score=self.min_score.value())

    def propagate(self) -> None:
        """Carry the preview's objects through z (in a worker) and commit them."""
        if self.session is None or self.preview is None or self._busy():
            if self.preview is None:
                show_info("Segment Anything: place prompts first, then propagate")
            return
        preview, session = self.preview, self.session
        worker = self._task_worker(
            session.propagate,
            preview,
            stop=self.stop_rule(),
            total=0,  # the steps are known once the first one is done
            message="Propagating through z: slice step {} of {}…".format,
            returned=self._propagated,
            errored=self._propagate_failed,
            finished=self._propagation_finished,
        )
        self._propagating_z = preview.z
        self._propagate_generation = self._generation
        self._propagate_worker = worker
        self.propagate_button.setEnabled(False)
        self._start_task(worker, "Propagating through z…")

    def _propagated(self, ids: list[int]) -> None:
        self._end_task(complete=True)
        if not self._closed:
            self._after_commit(self._propagating_z, ids)

    def _propagate_failed(self, err: Exception) -> None:
        self._end_task()
        if not isinstance(err, PropagationCancelled):
            self._report("propagation failed", err)
        elif not self._closed and self._propagate_generation == self._generation:
            # Not when the session was closed meanwhile: its own message stays.
            self.status.setText(
                "Propagation through z cancelled; nothing was added. The preview is kept: "
                "propagate again when ready."
            )

    def _propagation_finished(self) -> None:
        self._propagate_worker = None
        self._end_task(show=False)
        if not self._closed:
            self.propagate_button.setEnabled(self.session is not None)

    def save_labels(self, path: str | Path) -> Path:
        """Write the committed labels to a new OME-Zarr at ``path``."""
        if self.labels_layer is None:
            raise RuntimeError("start a session first")
        from .io import write_labels

        layer = self.labels_layer
        meta = {"scale": tuple(layer.scale), "translate": tuple(layer.translate)}
        written = write_labels(str(path), layer.data, meta)  # read band by band
        self.status.setText(f"Labels saved to {written[0]}.")
        return Path(written[0])

    def save_labels_dialog(self) -> None:
        """Ask where, then :meth:`save_labels`."""
        path, _ = QFileDialog.getSaveFileName(self, "Save labels as OME-Zarr", "labels.ome.zarr")
        if path:
            try:
                self.save_labels(path)
            except Exception as err:
                self._report("the labels could not be saved", err)

    # -- bad moments --------------------------------------------------------------------------

    def _report(self, what: str, err: Exception) -> None:
        if self._closed:
            return
        self.status.setText(f"Segment Anything: {what}: {err}")
        show_error(f"Segment Anything: {what}: {err}")

    def _layer_removed(self, event: Any) -> None:
        self._refresh_images()
        removed = _unwrap(event.value)
        if removed is _unwrap(self.image):
            self.stop()
            self.image = None
            self.status.setText("The image layer was removed; the session was closed.")
        elif removed is _unwrap(self.points):
            self.points = None
        elif removed is _unwrap(self.boxes):
            self.boxes = None
        elif removed is _unwrap(self.preview_layer):
            self.preview_layer = None
        elif removed is _unwrap(self.labels_layer):
            self.labels_layer = None

    def close_session(self) -> None:
        """Stop everything and wait for the workers (before the viewer closes)."""
        self._closed = True
        self._debounce.stop()
        self._task_timer.stop()
        self.stop(wait=True)
        for key, _, _ in SHORTCUTS:
            self.viewer.keymap.pop(key, None)

    def closeEvent(self, event: Any) -> None:
        self.close_session()
        super().closeEvent(event)

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        self._fit_dock_title()

    def _fit_dock_title(self) -> None:
        """Be at least as wide as the title bar of the dock we are in needs.

        The dock takes its width from this widget, not from its title bar (napari's custom
        title bar reports no minimum width), so without this the title is cut off.
        """
        dock = self.parentWidget()
        bar = dock.titleBarWidget() if isinstance(dock, QDockWidget) else None
        layout = bar.layout() if bar is not None else None
        if layout is None:
            return
        needed = layout.totalMinimumSize().width()  # with the title bar's own margins
        if needed > self.minimumWidth():
            self.setMinimumWidth(needed)


class _Shortcut:
    """A viewer key binding that calls a widget method, and nothing once the widget is gone."""

    def __init__(self, widget: SegmentAnythingWidget, method: Any) -> None:
        self._widget, self._name = widget, method.__name__

    def __call__(self, _viewer: Any) -> None:
        if not self._widget._closed:
            getattr(self._widget, self._name)()


def _commit_and_clear_keys() -> str:
    """``"(C commits, X clears)"``, with the keys that are bound (:data:`SHORTCUTS`)."""
    keys = {name: key.upper() for key, name, _ in SHORTCUTS}
    return f"({keys['commit']} commits, {keys['clear_prompts']} clears)"


class _WrappingLabel(QLabel):
    """A label for long text (paths, errors, slice lists) that never widens the dock.

    It wraps at spaces and path separators; a word longer than the width is cut, and the
    whole text is in the tooltip.
    """

    def __init__(self, text: str = "") -> None:
        super().__init__()
        self.setWordWrap(True)
        # Ignored: the layout decides the width, the text only the height.
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.setText(text)

    def setText(self, text: str | None) -> None:
        super().setText(text)
        self.setToolTip(text or "")


def _spin(value: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(0.0, 1.0)
    box.setSingleStep(0.05)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def _devices() -> list[str]:
    import torch

    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found
