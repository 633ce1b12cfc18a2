"""The widget's controller without Qt: a real session, the real default model, a ViewerModel.

The controller runs its tasks with the :class:`InlineRunner`: each task runs to its end
when it starts, and its handlers run as they would from a worker. What the widget would
show is recorded from the controller's signals.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_segany import LabelsStore
from napari_segany._napari.controller import CONTROLS, Controller
from napari_segany._napari.messages import commit_and_clear_keys
from napari_segany._napari.tasks import InlineRunner, Progress, Task
from napari_segany.automatic.params import AutomaticParams
from napari_segany.propagate import StopRule

SIGNALS = ("status_changed", "controls_changed", "layers_added", "error", "info", "warning")
CENTRE = (64.0, 60.0)  # of the bright disc through the three slices


def discs() -> np.ndarray:
    """``(3, 128, 128)`` uint8: a bright disc shrinking through z, and a smaller one."""
    yy, xx = np.mgrid[:128, :128]
    volume = np.full((3, 128, 128), 20, dtype=np.uint8)
    for z in range(3):
        volume[z][(yy - CENTRE[0]) ** 2 + (xx - CENTRE[1]) ** 2 < (20 - 2 * z) ** 2] = 200
        volume[z][(yy - 30) ** 2 + (xx - 100) ** 2 < 12**2] = 150
    return volume


class Shown:
    """What the controller sent to the widget, by signal."""

    def __init__(self, controller: Controller) -> None:
        self.sent: dict[str, list[Any]] = {name: [] for name in SIGNALS}
        for name in SIGNALS:
            getattr(controller, name).connect(self.sent[name].append)

    def __getitem__(self, name: str) -> list[Any]:
        return self.sent[name]


@pytest.fixture
def viewer() -> ViewerModel:
    viewer = ViewerModel()
    viewer.add_image(discs(), name="cells")
    return viewer


@pytest.fixture
def controller(viewer: ViewerModel) -> Iterator[Controller]:
    controller = Controller(viewer, InlineRunner())
    yield controller
    controller.close()


@pytest.fixture
def shown(controller: Controller) -> Shown:
    return Shown(controller)


@pytest.fixture
def started(controller: Controller, shown: Shown) -> Controller:
    """The controller with the session of "cells" open (its three slices embedded)."""
    controller.start("cells", "mobile_sam", "cpu")
    assert controller.session is not None, controller.status
    return controller


def test_the_controller_needs_no_qt() -> None:
    code = (
        "import sys; import napari_segany._napari.controller; "
        "print([m for m in sys.modules if m.split('.')[0] in "
        "('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'superqt')])"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert found.strip() == "[]"


def test_start_needs_an_image_layer(controller: Controller, shown: Shown) -> None:
    controller.start("nuclei", "mobile_sam", "cpu")
    assert shown["warning"] == ["Segment Anything: add an image layer first"]
    assert controller.session is None and not controller.running("start")
    assert controller.controls() == {name: name == "start" for name in CONTROLS}


@pytest.mark.slow
def test_start_opens_the_session_adds_its_layers_and_embeds_around_the_slice(
    started: Controller, shown: Shown, viewer: ViewerModel
) -> None:
    controller = started
    assert controller.current_z() == viewer.dims.current_step[0] == 1
    names = [layer.name for layer in viewer.layers]
    assert names == ["cells", "cells labels", "cells preview", "cells boxes", "cells points"]
    (added,) = shown["layers_added"]
    assert [layer.name for layer in added] == names[1:]  # the widget binds its keys on them
    assert not controller.labels_layer.editable
    assert controller.points.mode == "add" and controller.boxes.mode == "add_rectangle"
    assert viewer.layers.selection.active is controller.points

    # The slice on screen first, then its neighbours: all three here.
    assert controller.session.store.done().all() and controller.progress == (3, 3)
    assert shown["status_changed"][0] == "Loading mobile_sam and opening the session…"
    assert controller.status == (
        f"Ready: click an object to segment it {commit_and_clear_keys()}. Embedded 3 of 3 "
        "wanted slices (last: slice 0); slices embedded: 0-2 of 3."
    )
    assert shown["controls_changed"][-1] == {name: name != "cancel" for name in CONTROLS}
    assert shown["error"] == shown["warning"] == []


@pytest.mark.slow
def test_a_click_previews_and_commit_undo_redo_and_clear_change_the_labels(
    started: Controller, shown: Shown
) -> None:
    controller = started
    z = controller.current_z()
    controller.points.add([z, *CENTRE])
    preview = controller.preview
    assert preview is not None and preview.z == z
    mask = preview.labels() > 0
    assert 0.7 < mask.sum() / (np.pi * 18**2) < 1.3  # the disc on this slice
    assert controller.preview_layer.data[0].any() and controller.preview_layer.translate[0] == z

    controller.next_candidate()
    assert controller.preview.predictions[0].index != preview.predictions[0].index

    (label_id,) = controller.commit()
    assert (np.asarray(controller.labels_layer.data[z]) == label_id).any()
    assert controller.status == f"Committed object(s) {label_id}; click the next object " + (
        f"{commit_and_clear_keys()}."
    )
    assert len(controller.points.data) == 0 and controller.preview is None
    assert not controller.preview_layer.data.any()

    assert controller.undo() == label_id and controller.status == f"undid object {label_id}."
    assert controller.undo() is None and controller.status == "nothing to undo."
    assert controller.redo() == label_id and controller.status == f"redid object {label_id}."
    assert controller.session.labels.log()[0]["id"] == label_id

    controller.points.add([z, 30, 100])
    assert controller.preview is not None
    controller.clear_prompts()
    assert controller.preview is None and len(controller.points.data) == 0
    assert shown["error"] == []


@pytest.mark.slow
def test_embedding_progress_replaces_progress_but_not_a_result(
    started: Controller, shown: Shown
) -> None:
    controller = started
    z = controller.current_z()
    controller.points.add([z, *CENTRE])
    controller.commit()
    committed = controller.status
    assert committed.startswith("Committed") and not controller.status_is_progress
    # The embedding worker reports a slice (as its thread would, late): the result stays.
    controller._embedded((0, 3, 3))
    assert controller.status == committed and controller.progress == (3, 3)
    # Progress replaces progress.
    controller.say("Embedding slice 0…", progress=True)
    controller._embedded((0, 3, 3))
    assert controller.status.endswith(
        "Embedded 3 of 3 wanted slices (last: slice 0); slices embedded: 0-2 of 3."
    )


@pytest.mark.slow
def test_propagation_commits_through_z_with_the_controls_that_fit(
    started: Controller, shown: Shown
) -> None:
    controller = started
    controller.long_tasks.propagate(StopRule())
    assert shown["info"] == ["Segment Anything: place prompts first, then propagate"]

    z = controller.current_z()
    controller.points.add([z, *CENTRE])
    before = len(shown["controls_changed"])
    controller.long_tasks.propagate(StopRule())
    running, *_, after = shown["controls_changed"][before:]
    assert running["cancel"] and not running["propagate"]  # while it runs
    assert after["propagate"] and not after["cancel"]
    (entry,) = controller.session.labels.log()
    carried = np.asarray(controller.labels_layer.data[:]) == entry["id"]
    assert carried.any(axis=(1, 2)).all()  # every slice
    assert entry["record"]["propagate"]["stop"]["min_overlap"] == StopRule.min_overlap
    done, total = controller.progress
    assert done == total > 0
    assert controller.status.startswith(f"Committed object(s) {entry['id']}")
    assert shown["error"] == []


@pytest.mark.slow
def test_automatic_segmentation_and_learning_say_in_one_line_what_they_need(
    started: Controller, shown: Shown
) -> None:
    controller = started
    tasks = controller.long_tasks
    z = controller.current_z()

    tasks.segment(z, AutomaticParams(mode="grid", points_per_side=8), follow_labels=True)
    assert controller.status == (
        "Cannot follow your objects: 0 labelled object(s) to learn from; label at least 3."
    )
    tasks.learn()  # nothing labelled yet: the engine's reason, on one line
    assert controller.status.startswith("Cannot learn from your labels: ")
    assert "labels hold no object" in controller.status and "\n" not in controller.status
    assert controller.unit == "slices" and tasks.finetune_report is None
    assert shown["error"] == [] and controller.session.labels.log() == []

    tasks.segment(z, AutomaticParams(mode="grid", points_per_side=8), follow_labels=False)
    log = controller.session.labels.log()
    assert controller.status == f"Automatic segmentation added {len(log)} object(s)."
    found = np.asarray(controller.labels_layer.data[z])
    assert found[int(CENTRE[0]), int(CENTRE[1])] > 0 and found[30, 100] > 0  # both discs
    assert shown["error"] == []


@pytest.mark.slow
def test_removing_the_image_closes_the_session(
    started: Controller, shown: Shown, viewer: ViewerModel
) -> None:
    workspace = started.session.workspace
    viewer.layers.remove("cells")
    assert started.session is None and started.image is None
    assert started.status == "The image layer was removed; the session was closed."
    assert shown["controls_changed"][-1] == {name: name == "start" for name in CONTROLS}
    with LabelsStore.open(workspace / "labels.ome.zarr") as labels:  # released: writable
        assert not labels.read_only


@pytest.mark.slow
def test_once_the_widget_is_gone_nothing_more_is_decoded_or_shown(
    started: Controller, shown: Shown, viewer: ViewerModel
) -> None:
    started.detach()  # the widget was deleted (the viewer closed)
    sent = {name: len(values) for name, values in shown.sent.items()}
    started.points.add([started.current_z(), *CENTRE])
    viewer.dims.set_current_step(0, 0)
    viewer.layers.remove("cells")
    assert started.preview is None and started.session is not None
    assert {name: len(values) for name, values in shown.sent.items()} == sent


def test_a_task_stops_at_quit_and_its_error_goes_to_its_handler() -> None:
    seen: list[Any] = []

    def count() -> Iterator[int]:
        yield from range(5)

    def quit_at_two(value: int) -> None:
        seen.append(value)
        if value == 2:
            task.quit()

    task = Task(count, yielded=quit_at_two, returned=seen.append)
    task.finished = lambda: seen.append("finished")
    InlineRunner().start(task)
    assert seen == [0, 1, 2, "finished"]  # no more values, and no result

    def fail() -> None:
        raise ValueError("no")

    errors: list[Exception] = []
    InlineRunner().start(Task(fail, errored=errors.append))
    assert [str(e) for e in errors] == ["no"]
    with pytest.raises(ValueError, match="no"):  # no handler: raised
        InlineRunner().start(Task(fail))


def test_progress_says_nothing_until_the_total_is_known() -> None:
    progress = Progress(0, "step {} of {}".format)
    assert progress.text() is None and progress.steps == (0, 0)
    progress.report(2, 7)
    assert progress.text() == "step 2 of 7" and not progress.cancelled()
    progress.cancel.set()
    assert progress.cancelled()
