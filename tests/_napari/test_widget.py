"""The Segment Anything dock widget in a real napari viewer, with the real default model.

Prompts are added through the prompt layers' own API, as a click in add mode does; every
assertion is on layer data. The workers are real threads: tests wait for their results.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from napari import Viewer
from napari.qt.threading import FunctionWorker
from scipy import ndimage

from napari_segany import LabelsStore
from napari_segany._napari.widget import SHORTCUTS, SegmentAnythingWidget, slice_ranges
from napari_segany.automatic.params import AutomaticParams
from napari_segany.propagate import PropagationCancelled
from napari_segany.sample_data import coins, nuclei_volume

from ..helpers import iou

pytestmark = [pytest.mark.gui, pytest.mark.slow]

PLUGIN = "napari-segany"
WAIT = 120_000  # ms: the encoder takes ~1-3 s per slice on a small CPU


@pytest.fixture
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    return nuclei_volume()


def _open_widget(viewer: Viewer) -> SegmentAnythingWidget:
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything")
    return widget


def _start(qtbot, widget: SegmentAnythingWidget, image: str) -> None:
    widget.image_combo.setCurrentText(image)
    widget.start()
    qtbot.waitUntil(lambda: widget.session is not None, timeout=WAIT)


def _centre(mask: np.ndarray) -> tuple[float, float]:
    y, x = np.argwhere(mask).mean(axis=0)
    return float(y), float(x)


def _nucleus(labels: np.ndarray, z: int) -> np.ndarray:
    """The largest ground-truth nucleus on slice ``z``: ``(Z, Y, X)`` mask of its id."""
    ids, counts = np.unique(labels[z][labels[z] > 0], return_counts=True)
    return labels == ids[np.argmax(counts)]


@pytest.fixture
def viewer_with_nuclei(make_napari_viewer: Callable[..., Viewer]) -> Viewer:
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "nuclei")
    return viewer


def test_click_commit_undo_redo_propagate_save_and_reopen(
    qtbot, viewer_with_nuclei: Viewer, nuclei, tmp_path: Path
) -> None:
    viewer = viewer_with_nuclei
    _, truth = nuclei
    widget = _open_widget(viewer)
    try:
        _start(qtbot, widget, "nuclei")
        z = widget.controller.current_z()
        assert z == viewer.dims.current_step[0]
        # The widget's worker embeds the slice on screen first.
        qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=WAIT)
        assert widget.session.is_embedded(z)

        target = _nucleus(truth, z)
        widget.points.add([z, *_centre(target[z])])
        qtbot.waitUntil(lambda: widget.preview is not None, timeout=WAIT)
        shown = widget.preview.labels() > 0
        assert widget.preview_layer.data[0].any()  # drawn on the slice it belongs to
        assert widget.preview_layer.translate[0] == z
        assert iou(shown, target[z]) > 0.8

        (label_id,) = widget.commit()
        labels = widget.labels_layer
        assert iou(np.asarray(labels.data[z]) == label_id, target[z]) > 0.8
        assert len(widget.points.data) == 0  # the prompts went into the log
        assert not widget.preview_layer.data.any()

        assert widget.undo() == label_id
        assert not np.asarray(labels.data[z]).any()
        assert widget.redo() == label_id
        assert (np.asarray(labels.data[z]) == label_id).any()

        # Another nucleus, carried through z.
        other = _nucleus(np.where(target, 0, truth), z)
        widget.points.add([z, *_centre(other[z])])
        qtbot.waitUntil(lambda: widget.preview is not None, timeout=WAIT)
        widget.propagate()
        assert widget.cancel_button.isEnabled() and not widget.propagate_button.isEnabled()
        qtbot.waitUntil(lambda: not widget.controller.running("propagate"), timeout=3 * WAIT)
        assert widget.propagate_button.isEnabled()
        assert widget.progress.value() == widget.progress.maximum() > 0  # all slice steps
        carried = np.asarray(labels.data[:]) == label_id + 1
        assert carried.any(axis=(1, 2)).sum() > 3  # several slices
        assert iou(carried, other) > 0.6

        saved = widget.save_labels(tmp_path / "saved.ome.zarr")
        committed = np.asarray(labels.data[:])
    finally:
        widget.close_session()

    layers = viewer.open(saved, plugin=PLUGIN)
    reopened = [layer for layer in layers if layer._type_string == "labels"]
    assert len(reopened) == 1
    np.testing.assert_array_equal(
        np.asarray(reopened[0].data[0] if reopened[0].multiscale else reopened[0].data), committed
    )


class _HeldPropagation:
    """``Session.propagate`` of one session, held in the worker thread where a test says.

    With ``until_cancelled`` a call waits until its ``cancel`` poll says yes, then runs
    the real propagation, which stops before its first step: whenever the cancel comes, it
    is seen. Otherwise a call runs to its end, records its progress callbacks, and returns
    only once ``release`` is set (the widget's timer shows the last progress meanwhile).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, session: Any) -> None:
        self.real = session.propagate
        self.until_cancelled = False
        self.cancelled = False
        self.steps: list[tuple[int, int]] = []
        self.returned = threading.Event()
        self.release = threading.Event()
        monkeypatch.setattr(session, "propagate", self)

    def __call__(self, *args: Any, callback: Any, cancel: Any, **kwargs: Any) -> list[int]:
        if self.until_cancelled:
            deadline = time.monotonic() + WAIT / 1000
            while not cancel():
                if time.monotonic() > deadline:
                    raise TimeoutError("the propagation was never cancelled")
                time.sleep(0.01)
            try:
                return self.real(*args, callback=callback, cancel=cancel, **kwargs)
            except PropagationCancelled:
                self.cancelled = True
                raise

        def record(done: int, at_most: int) -> None:
            self.steps.append((done, at_most))
            callback(done, at_most)

        ids = self.real(*args, callback=record, cancel=cancel, **kwargs)
        self.returned.set()
        if not self.release.wait(WAIT / 1000):
            raise TimeoutError("the test never released the propagation")
        return ids


def _preview_of_a_nucleus(qtbot, widget: SegmentAnythingWidget, truth: np.ndarray) -> int:
    """Start, click the largest nucleus on the slice on screen; its slice, once previewed."""
    _start(qtbot, widget, "nuclei")
    z = widget.controller.current_z()
    widget.points.add([z, *_centre(_nucleus(truth, z)[z])])
    qtbot.waitUntil(lambda: widget.preview is not None, timeout=WAIT)
    return z


def test_propagation_can_be_cancelled_and_shows_its_progress(
    qtbot, viewer_with_nuclei: Viewer, nuclei, monkeypatch: pytest.MonkeyPatch, shown_errors
) -> None:
    _, truth = nuclei
    widget = _open_widget(viewer_with_nuclei)
    held = None
    try:
        z = _preview_of_a_nucleus(qtbot, widget, truth)
        qtbot.waitUntil(lambda: not widget.controller.running("embed"), timeout=3 * WAIT)
        held = _HeldPropagation(monkeypatch, widget.session)
        labels = widget.labels_layer
        before = np.asarray(labels.data[:]).copy()

        # Cancel: the propagation stops, commits nothing, and is no error.
        held.until_cancelled = True
        widget.propagate()
        assert widget.status.text() == "Propagating through z…"
        assert widget.cancel_button.isEnabled() and not widget.propagate_button.isEnabled()
        widget.cancel_button.click()
        qtbot.waitUntil(lambda: not widget.controller.running("propagate"), timeout=3 * WAIT)
        assert held.cancelled
        assert widget.session.labels.log() == []
        np.testing.assert_array_equal(np.asarray(labels.data[:]), before)
        status = widget.status.text()
        assert "cancelled" in status and "nothing was added" in status
        assert shown_errors == []
        # The preview is kept for another try.
        assert widget.preview is not None and widget.preview.z == z
        assert widget.propagate_button.isEnabled() and not widget.cancel_button.isEnabled()

        # Again, to its end: the status and the bar follow the slice steps.
        held.until_cancelled = False
        widget.propagate()
        qtbot.waitUntil(held.returned.is_set, timeout=3 * WAIT)
        done, at_most = held.steps[-1]
        assert held.steps == [(step, at_most) for step in range(1, done + 1)]
        assert at_most == max(z, len(widget.session.volume) - 1 - z)
        shown = f"Propagating through z: slice step {done} of {at_most}…"
        qtbot.waitUntil(lambda: widget.status.text() == shown, timeout=WAIT)
        assert (widget.progress.value(), widget.progress.maximum()) == (done, at_most)
        held.release.set()
        qtbot.waitUntil(lambda: not widget.controller.running("propagate"), timeout=WAIT)
        assert widget.progress.value() == widget.progress.maximum() == at_most
        (entry,) = widget.session.labels.log()
        assert widget.status.text().startswith(f"Committed object(s) {entry['id']}")
        carried = np.asarray(labels.data[:]) == entry["id"]
        assert carried.any(axis=(1, 2)).sum() > 3
        assert widget.preview is None and widget.propagate_button.isEnabled()
        assert shown_errors == []
    finally:
        if held is not None:
            held.release.set()
        widget.close_session()


def test_closing_the_widget_cancels_a_propagation(
    qtbot, viewer_with_nuclei: Viewer, nuclei, monkeypatch: pytest.MonkeyPatch, shown_errors
) -> None:
    _, truth = nuclei
    widget = _open_widget(viewer_with_nuclei)
    try:
        _preview_of_a_nucleus(qtbot, widget, truth)
        workspace = widget.session.workspace
        held = _HeldPropagation(monkeypatch, widget.session)
        held.until_cancelled = True
        widget.propagate()
        assert widget.controller.running("propagate")
    finally:
        widget.close_session()  # waits for the worker: it sees the cancel
    assert held.cancelled
    qtbot.waitUntil(lambda: not widget.controller.running("propagate"), timeout=WAIT)
    assert shown_errors == []
    with LabelsStore.open(workspace / "labels.ome.zarr", read_only=True) as store:
        assert store.log() == []
        assert not np.asarray(store.read()).any()


def test_reopening_the_same_data_restores_the_labels(
    qtbot, make_napari_viewer: Callable[..., Viewer], nuclei
) -> None:
    image, truth = nuclei
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="cells")
    widget = _open_widget(viewer)
    z = 8
    viewer.dims.set_current_step(0, z)
    try:
        _start(qtbot, widget, "cells")
        target = _nucleus(truth, z)
        widget.points.add([z, *_centre(target[z])])
        qtbot.waitUntil(lambda: widget.preview is not None, timeout=WAIT)
        (label_id,) = widget.commit()
    finally:
        widget.close_session()

    # Another viewer, the same pixels pasted again (a new array object): the session finds
    # its labels.
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image.copy(), name="cells again")
    widget = _open_widget(viewer)
    try:
        _start(qtbot, widget, "cells again")
        # The slices embedded last time count at once, before any new one is embedded.
        wanted, done = widget.controller.queue.wanted(), widget.session.store.done()
        assert done[z] and widget.progress.maximum() == len(wanted)
        assert widget.progress.value() >= sum(bool(done[w]) for w in wanted) >= 1
        restored = np.asarray(widget.labels_layer.data[z]) == label_id
        assert iou(restored, target[z]) > 0.8
        assert widget.session.labels.log()[0]["id"] == label_id
    finally:
        widget.close_session()


def test_prompts_before_the_embedding_are_kept_and_slices_can_change(
    qtbot, viewer_with_nuclei: Viewer, nuclei
) -> None:
    viewer = viewer_with_nuclei
    _, truth = nuclei
    widget = _open_widget(viewer)
    try:
        _start(qtbot, widget, "nuclei")
        # Move before anything is embedded: the new slice is embedded first.
        z = 5
        viewer.dims.set_current_step(0, z)
        target = _nucleus(truth, z)
        widget.points.add([z, *_centre(target[z])])  # queued, not lost
        qtbot.waitUntil(lambda: widget.preview is not None, timeout=2 * WAIT)
        assert widget.preview.z == z
        assert iou(widget.preview.labels() > 0, target[z]) > 0.7
        assert widget.preview_layer.translate[0] == z

        # Another slice: the preview of slice 3 is not shown there.
        viewer.dims.set_current_step(0, z + 5)
        assert not widget.preview_layer.data.any()
        viewer.dims.set_current_step(0, z)  # back: the prompts are still there
        qtbot.waitUntil(lambda: widget.preview_layer.data.any(), timeout=2 * WAIT)
        assert iou(widget.preview.labels() > 0, target[z]) > 0.7
    finally:
        widget.close_session()


def test_boxes_and_negative_points_on_a_2d_image(
    qtbot, make_napari_viewer: Callable[..., Viewer]
) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "coins")
    widget = _open_widget(viewer)
    try:
        _start(qtbot, widget, "coins")
        qtbot.waitUntil(lambda: widget.session.is_embedded(0), timeout=WAIT)
        image = coins()
        found, _ = ndimage.label(ndimage.binary_fill_holes(image > image.mean() + image.std()))
        sizes = np.bincount(found.ravel())[1:]
        coin = found == 1 + int(np.argmax(sizes))  # the largest coin, by a box around it
        (y0, y1), (x0, x1) = [(int(i.min()) - 4, int(i.max()) + 4) for i in np.nonzero(coin)]
        widget.boxes.add_rectangles(np.array([[y0, x0], [y1, x1]], dtype=float))
        qtbot.waitUntil(lambda: widget.preview is not None, timeout=WAIT)
        boxed = widget.preview.labels() > 0
        assert boxed.shape == image.shape
        assert boxed[y0:y1, x0:x1].sum() > 0.95 * boxed.sum()
        assert iou(boxed, coin) > 0.7

        # The shortcuts work whichever of our layers is selected, and the labels change
        # only through commits.
        for layer in (widget.boxes, widget.points, widget.labels_layer):
            assert {"c", "x", "n"} <= {str(k).lower() for k in layer.keymap}
        assert widget.boxes.mode == "add_rectangle" and widget.points.mode == "add"
        assert not widget.labels_layer.editable
        widget.toggle_sign()
        assert widget.points.feature_defaults["positive"][0] == False  # noqa: E712
        widget.toggle_sign()
        (label_id,) = widget.commit()
        assert (np.asarray(widget.labels_layer.data) == label_id).sum() == boxed.sum()
    finally:
        widget.close_session()


def test_the_refined_click_is_a_setting_that_redecodes_at_once(
    qtbot, viewer_with_nuclei: Viewer, nuclei
) -> None:
    _, truth = nuclei
    widget = _open_widget(viewer_with_nuclei)
    try:
        _start(qtbot, widget, "nuclei")
        z = widget.controller.current_z()
        qtbot.waitUntil(lambda: widget.session.is_embedded(z), timeout=WAIT)
        assert widget.refine_check.isChecked() and widget.session.segmenter.refine
        widget.points.add([z, *_centre(_nucleus(truth, z)[z])])
        qtbot.waitUntil(lambda: widget.preview is not None, timeout=WAIT)
        refined = widget.preview
        widget.refine_check.setChecked(False)
        assert widget.session.segmenter.refine is False
        qtbot.waitUntil(lambda: widget.preview is not refined, timeout=WAIT)
        plain = widget.preview.predictions[0]
        assert plain.index == int(np.argmax(plain.scores))
        np.testing.assert_array_equal(plain.scores, refined.predictions[0].scores)
    finally:
        widget.close_session()


def test_after_start_the_status_says_what_to_do_and_the_preview_stands_apart(
    qtbot, viewer_with_nuclei: Viewer, nuclei
) -> None:
    viewer = viewer_with_nuclei
    _, truth = nuclei
    widget = _open_widget(viewer)
    try:
        _start(qtbot, widget, "nuclei")
        qtbot.waitUntil(lambda: not widget.controller.running("embed"), timeout=3 * WAIT)
        keys = {name: key.upper() for key, name, _ in SHORTCUTS}
        status = widget.status.text()
        assert status.startswith("Ready: click an object to segment it")
        assert f"{keys['commit']} commits" in status and f"{keys['clear_prompts']} clears" in status

        # The preview layer draws the border of each object, in one colour; the labels
        # layer fills committed objects, a colour per id: an id never looks the same in both.
        z = widget.controller.current_z()
        widget.points.add([z, *_centre(_nucleus(truth, z)[z])])
        qtbot.waitUntil(lambda: widget.preview is not None, timeout=WAIT)
        mask = widget.preview.labels() > 0
        drawn = widget.preview_layer.data[0] > 0
        assert drawn.any() and not (drawn & ~mask).any()
        assert drawn.sum() < 0.5 * mask.sum()
        preview, labels = widget.preview_layer, widget.labels_layer
        for label_id in range(1, 6):
            np.testing.assert_allclose(preview.get_color(label_id), preview.get_color(1))
            assert not np.allclose(preview.get_color(label_id), labels.get_color(label_id))
        # In 3D too, with nothing for napari to warn about.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            viewer.dims.ndisplay = 3
            viewer.dims.ndisplay = 2
    finally:
        widget.close_session()


def test_the_dock_fits_its_title_and_long_text_does_not_widen_it(
    qtbot, make_napari_viewer: Callable[..., Viewer]
) -> None:
    from qtpy.QtWidgets import QLabel

    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "nuclei")
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything")
    qtbot.waitUntil(widget.isVisible)
    qtbot.wait(100)
    title = dock.titleBarWidget().findChild(QLabel)
    assert "Segment Anything" in title.text()
    assert title.width() >= title.sizeHint().width()  # not cut off
    width = dock.width()

    folder = "/".join(["data", "0123456789abcdef" * 4, *(["experiment"] * 12), "labels.ome.zarr"])
    widget.status.setText(f"Segment Anything: the labels could not be saved: {folder} is busy")
    widget.preview_info.setText(", ".join(["0.97"] * 40))
    viewer.add_image(np.zeros((8, 8)), name="a very long layer name " * 8)
    qtbot.wait(200)
    assert dock.width() == width
    assert widget.minimumSizeHint().width() <= width
    # The text wraps instead: several lines, each within the widget.
    assert widget.status.height() >= 3 * widget.status.fontMetrics().height()
    widget.close_session()


def test_shortcuts_are_bound_on_the_viewer(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    widget = SegmentAnythingWidget(viewer)
    bound = {str(k) for k in viewer.keymap}
    for key, _, _ in SHORTCUTS:
        assert any(key.replace("-", "+").lower() == b.lower() for b in bound), key
    widget.close_session()


def test_removing_the_image_mid_embedding_closes_the_session(
    qtbot, viewer_with_nuclei: Viewer
) -> None:
    viewer = viewer_with_nuclei
    widget = _open_widget(viewer)
    try:
        _start(qtbot, widget, "nuclei")
        widget.embed_all()
        viewer.layers.remove("nuclei")
        assert widget.session is None
        assert "removed" in widget.status.text()
        qtbot.waitUntil(lambda: not widget.controller.running("embed"), timeout=WAIT)
    finally:
        widget.close_session()


def test_labels_written_by_another_process_are_read_only(
    qtbot, viewer_with_nuclei: Viewer, sessions_folder: Path, nuclei
) -> None:
    viewer = viewer_with_nuclei
    _, truth = nuclei
    widget = _open_widget(viewer)
    _start(qtbot, widget, "nuclei")
    workspace = widget.session.workspace
    widget.stop(wait=True)

    holder = LabelsStore.open(workspace / "labels.ome.zarr")  # another writer
    try:
        _start(qtbot, widget, "nuclei")
        assert widget.session.read_only
        z = widget.controller.current_z()
        widget.points.add([z, *_centre(_nucleus(truth, z)[z])])
        qtbot.waitUntil(lambda: widget.preview is not None, timeout=WAIT)
        assert widget.commit() == []
        assert "could not be committed" in widget.status.text()
        assert widget.preview is not None  # nothing lost: the preview is still there
        widget.close_session()
    finally:
        holder.close()


def test_segment_this_slice_automatically(
    qtbot, viewer_with_nuclei: Viewer, nuclei, shown_errors
) -> None:
    viewer = viewer_with_nuclei
    _, truth = nuclei
    widget = _open_widget(viewer)
    try:
        _start(qtbot, widget, "nuclei")
        z = widget.controller.current_z()

        # Following the objects labelled by hand needs 3 of them: none yet, one line says so.
        assert widget.follow_labels.text() == "Follow my objects"
        assert "at least 3" in widget.follow_labels.toolTip()
        widget.follow_labels.setChecked(True)
        widget.segment_slice()
        qtbot.waitUntil(lambda: not widget.controller.running("automatic"), timeout=WAIT)
        assert widget.status.text() == (
            "Cannot follow your objects: 0 labelled object(s) to learn from; label at least 3."
        )
        assert shown_errors == []
        assert widget.session.labels.log() == []
        widget.follow_labels.setChecked(False)

        widget.points_per_side.setValue(12)
        assert widget.automatic_mode.currentData() == AutomaticParams.mode
        widget.automatic_mode.setCurrentIndex(widget.automatic_mode.findData("grid"))
        widget.segment_slice()
        qtbot.waitUntil(lambda: not widget.controller.running("automatic"), timeout=3 * WAIT)
        found = np.asarray(widget.labels_layer.data[z])
        ids = np.unique(found[found > 0])
        assert "added" in widget.status.text()
        # Most nuclei on the slice are found, each one object.
        nuclei_here = np.unique(truth[z][truth[z] > 0])
        hits = sum(iou(found == i, truth[z] == truth[z][found == i].max()) > 0.5 for i in ids)
        assert hits >= 0.5 * len(nuclei_here)
        log = widget.session.labels.log()
        assert [e["record"]["method"] for e in log] == ["automatic"] * len(ids)
        assert {
            (e["record"]["params"]["mode"], e["record"]["params"]["points_per_side"]) for e in log
        } == {("grid", 12)}
    finally:
        widget.close_session()


def test_slice_ranges_say_which_slices_are_embedded() -> None:
    assert slice_ranges(np.array([1, 1, 1, 0, 0, 1, 0, 1, 1], bool)) == "0-2, 5, 7-8"
    assert slice_ranges(np.zeros(3, bool)) == "none"


def test_closing_the_viewer_during_embedding(
    qtbot, make_napari_viewer: Callable[..., Viewer]
) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "nuclei")
    widget = _open_widget(viewer)
    _start(qtbot, widget, "nuclei")
    widget.embed_all()
    assert widget.controller.running("embed")
    viewer.close()  # the window goes while the encoder runs in the worker
    qtbot.wait(3000)  # its signals arrive after the widget is gone: no error, no crash
    FunctionWorker.await_workers(msecs=120_000)
