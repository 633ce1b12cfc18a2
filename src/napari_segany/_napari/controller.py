"""The Segment Anything widget's decisions, free of Qt: what each action does, and what shows.

A :class:`Controller` drives a :class:`~napari_segany.session.Session` on a napari viewer: it
opens the session of an image layer, adds the session's layers, embeds the slice on screen
first (an :class:`~napari_segany.embedding_queue.EmbeddingQueue`), decodes the prompts as they
change (latest wins: while one decode runs, only the newest request waits), commits,
undoes, propagates, segments automatically and learns from the labels. The slow calls run
as :class:`~napari_segany._napari.tasks.Task` objects in its runner. What the widget shows
(the status line, the progress bar, which controls can be used) comes out as signals of
plain data; the dock widget (:mod:`napari_segany._napari.widget`) only draws them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from ..embedding_queue import EmbeddingQueue
from ..embeddings import NotEmbeddedError
from ..session import Preview, Session, volume_from_layer
from . import layers, messages
from .long_tasks import LONG_TASKS, LongTasks
from .tasks import Runner, Task

if TYPE_CHECKING:
    from napari.components import ViewerModel
    from napari.layers import Image, Labels, Points, Shapes

    from ..model import SamModel

__all__ = ["CONTROLS", "Controller", "devices", "preview_with_outline"]

#: The controls that :meth:`Controller.controls` enables and disables, by name.
CONTROLS = (
    "start", "embed_all", "cancel", "negative", "commit", "clear", "cycle", "undo", "redo",
    "propagate", "segment_slice", "segment_volume", "learn", "save",
)  # fmt: skip
#: The tasks Cancel stops.
_CANCELLABLE = ("embed", *LONG_TASKS)


def devices() -> list[str]:
    """The devices to offer: auto and cpu, then cuda and mps where torch sees them."""
    import torch

    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def preview_with_outline(
    session: Session, z: int, points: np.ndarray, signs: np.ndarray, boxes: np.ndarray
) -> tuple[Preview, np.ndarray] | None:
    """Decode (in a worker thread) with what the preview layer draws: the GUI only shows it.

    Returns the preview (with its labels image made) and the outline of its objects, or
    None when there are no prompts.
    """
    preview = session.preview(z, points, signs, boxes)
    if preview is None:
        return None
    return preview, layers.outline(preview.labels())


class Controller:
    """The widget's state and actions on a viewer; see the module docstring.

    Parameters
    ----------
    viewer
        The napari viewer (a ``ViewerModel`` will do): its image layers are segmented,
        the session's layers go into it and its dims say which slice is on screen.
    runner
        Runs the slow calls (:class:`~napari_segany._napari.workers.QtRunner` in the widget,
        :class:`~napari_segany._napari.tasks.InlineRunner` without Qt).

    Attributes
    ----------
    session, preview
        The open session (None before Start) and the objects the prompts give now.
    queue
        Which slices to embed next.
    image, points, boxes, preview_layer, labels_layer
        The image of the session and the layers added over it (None once removed).
    status, progress, unit
        The status line, ``(done, total)`` of the progress bar and what it counts.
    refine
        The "Refined click" setting, for the sessions to come too.
    long_tasks
        Propagation, automatic segmentation and learning (:class:`LongTasks`).
    generation
        One more at each :meth:`stop`: results of a closed session are dropped.
    closed
        True once :meth:`close` or :meth:`detach` was called: late results are dropped.
    """

    status_changed = Signal(str)
    progress_changed = Signal(int, int)
    unit_changed = Signal(str)
    preview_line_changed = Signal(str)
    #: Which of :data:`CONTROLS` can be used now (a dict name -> bool).
    controls_changed = Signal(dict)
    #: The layers just added for a session: the widget binds its keys on them.
    layers_added = Signal(list)
    error = Signal(str)
    info = Signal(str)
    warning = Signal(str)

    def __init__(self, viewer: ViewerModel, runner: Runner) -> None:
        self.viewer, self.runner = viewer, runner
        self.session: Session | None = None
        self.preview: Preview | None = None
        self.queue: EmbeddingQueue | None = None
        self.image: Image | None = None
        self.points: Points | None = None
        self.boxes: Shapes | None = None
        self.preview_layer: Labels | None = None
        self.labels_layer: Labels | None = None
        self.status = "Pick an image and press Start."
        #: Whether the status line shows embedding progress, which the next update replaces;
        #: anything else (a result, an error) stays until something the user does replaces it.
        self.status_is_progress = False
        self.progress, self.unit = (0, 0), "slices"
        self.refine = True
        self.closed = False
        self.generation = 0
        self._models: dict[tuple[str, str], SamModel] = {}
        self._tasks: dict[str, Task] = {}
        self._decode_generation = 0
        self._decode_again = False
        self._waiting_for: int | None = None
        self.long_tasks = LongTasks(self)
        self._debounce = runner.timer(5, self._decode_now)
        viewer.layers.events.removed.connect(self._layer_removed)
        viewer.dims.events.current_step.connect(self._slice_changed)

    # -- what shows -------------------------------------------------------------------------

    def running(self, kind: str) -> bool:
        """Whether a task of ``kind`` runs: start, embed, decode, propagate, automatic, learn."""
        return kind in self._tasks

    def controls(self) -> dict[str, bool]:
        """Which of :data:`CONTROLS` can be used now."""
        ready = self.session is not None
        enabled = dict.fromkeys(CONTROLS, ready)
        enabled["start"] = not self.running("start")
        enabled["cancel"] = ready and any(self.running(k) for k in _CANCELLABLE)
        enabled["propagate"] = ready and not self.running("propagate")
        enabled["learn"] = ready and not self.running("learn")
        return enabled

    def say(self, text: str, *, progress: bool = False) -> None:
        """Put ``text`` on the status line (``progress``: background embedding progress)."""
        self.status = text
        self.status_is_progress = progress
        self.status_changed.emit(text)

    def tell(self, text: str) -> None:
        """Show ``text`` as an info notification (something to do before, not a failure)."""
        self.info.emit(text)

    def show_progress(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` on the progress bar (``total`` 0: busy)."""
        self.progress = (done, total)
        self.progress_changed.emit(done, total)

    def show_unit(self, unit: str) -> None:
        """What the progress bar counts: ``"slices"`` or ``"steps"``."""
        self.unit = unit
        self.unit_changed.emit(unit)

    def update_controls(self) -> None:
        """Tell the widget which controls can be used now (:meth:`controls`)."""
        self.controls_changed.emit(self.controls())

    def refresh_labels(self) -> None:
        """Redraw the labels layer (the labels store changed)."""
        if self.labels_layer is not None:
            self.labels_layer.refresh()

    def report(self, what: str, err: Exception) -> None:
        """Say that ``what`` went wrong, on the status line and as an error notification."""
        if self.closed:
            return
        self.say(f"Segment Anything: {what}: {err}")
        self.error.emit(f"Segment Anything: {what}: {err}")

    def run(self, kind: str, task: Task) -> None:
        """Start ``task`` as the one task of ``kind`` running (until it has finished)."""
        finished = task.finished

        def done() -> None:
            if self._tasks.get(kind) is task:
                del self._tasks[kind]
            if finished is not None:
                finished()

        task.finished = done
        self._tasks[kind] = task
        self.update_controls()
        self.runner.start(task)

    # -- starting a session -----------------------------------------------------------------

    def start(self, name: str, model: str, device: str) -> None:
        """Open the session of image layer ``name`` in a worker: model, embeddings, labels."""
        if name not in self.viewer.layers:
            self.warning.emit("Segment Anything: add an image layer first")
            return
        image = self.viewer.layers[name]
        self.stop()
        self.image = image
        self.say(f"Loading {model} and opening the session…")
        data, rgb, multiscale = image.data, image.rgb, image.multiscale
        source = layers.source_path(image)
        task = Task(self._open_session, (data, rgb, multiscale, source, (model, device)))
        task.returned, task.errored = self._session_ready, self._start_failed
        task.finished = self._start_finished
        self.run("start", task)

    def _open_session(
        self, data: Any, rgb: bool, multiscale: bool, source: str | None, key: tuple[str, str]
    ) -> Session:
        from ..model import load_model

        if key not in self._models:
            self._models[key] = load_model(*key, progress=False)
        volume = volume_from_layer(data, rgb=rgb, multiscale=multiscale)
        return Session.open(volume, self._models[key], source=source)

    def _start_finished(self) -> None:
        if not self.closed:
            self.update_controls()

    def _start_failed(self, err: Exception) -> None:
        if self.closed:
            return
        self.say(f"Could not start: {err}")
        self.error.emit(f"Segment Anything could not start: {err}")

    def _session_ready(self, session: Session) -> None:
        image = self.image
        if self.closed or image is None or image.name not in self.viewer.layers:
            session.close()
            return
        self.session = session
        session.segmenter.refine = self.refine
        added = layers.add_session_layers(self.viewer, image, session.labels.array)
        self.labels_layer, self.preview_layer, self.boxes, self.points = added
        _, _, boxes, points = added
        self.layers_added.emit(list(added))
        points.events.data.connect(self._prompts_changed)
        boxes.events.data.connect(self._prompts_changed)
        self.viewer.layers.selection.active = points
        self.queue = EmbeddingQueue(len(session.volume))
        self.queue.look_at(self.current_z())
        self._show_embedding_progress()
        self.update_controls()
        self.say(messages.session_opened(self._next_step(), session), progress=True)
        if session.read_only:
            self.warning.emit(
                f"Segment Anything: the labels in {session.workspace} are being written by "
                "another process; they are shown read-only and commits are refused"
            )
        self._embed()

    def stop(self, wait: bool = False) -> None:
        """Stop the workers and close the session (the labels stay on disk).

        Parameters
        ----------
        wait
            Block until the workers have finished. Automatic segmentation and propagation
            are cancelled first (a cancelled propagation commits nothing).
        """
        self.generation += 1
        self.long_tasks.cancel()
        for kind in ("embed", "propagate"):
            if kind in self._tasks:
                self._tasks[kind].quit()
        if wait:
            self.runner.wait(120_000)
        if self.session is not None:
            self.session.close()
        self.session = None
        self.preview = None
        self.update_controls()

    def close(self) -> None:
        """Stop everything and wait for the workers (before the viewer closes)."""
        self.closed = True
        self._debounce.stop()
        self.stop(wait=True)

    def detach(self) -> None:
        """The widget is gone: late results and viewer events are dropped from now on.

        The workers run on to their end (nothing waits for them).
        """
        self.closed = True

    def _layer_removed(self, event: Any) -> None:
        if self.closed:
            return
        removed = layers.unwrap(event.value)
        if removed is layers.unwrap(self.image):
            self.stop()
            self.image = None
            self.say("The image layer was removed; the session was closed.")
        for name in ("points", "boxes", "preview_layer", "labels_layer"):
            if removed is layers.unwrap(getattr(self, name)):
                setattr(self, name, None)

    # -- embedding --------------------------------------------------------------------------

    def current_z(self) -> int:
        """The slice on screen (0 for a 2D image)."""
        if self.image is None or self.image.ndim == 2:
            return 0
        world = self.viewer.dims.point[-3]
        z = self.image.world_to_data([world, 0, 0])[0] if self.image.ndim == 3 else 0
        n = len(self.session.volume) if self.session is not None else 1
        return int(min(max(round(z), 0), n - 1))

    def _next_step(self) -> str:
        session = self.session
        return messages.next_step(session is not None and session.is_embedded(self.current_z()))

    def _embed(self) -> None:
        """Run the embedding worker if wanted slices are missing and none runs."""
        if self.session is None or self.queue is None or self.running("embed"):
            return
        next_z = self.queue.next(self.session.store.done())
        if next_z is None:
            return
        self.say(f"{self._next_step()} Embedding slice {next_z}…", progress=True)
        task = Task(self.queue.run, (self.session,), yielded=self._embedded)
        task.errored = lambda err: self.report("embedding failed", err)
        task.finished = self._embedding_finished
        self.run("embed", task)

    def _embedded(self, update: tuple[int, int, int]) -> None:
        if self.closed:
            return
        z, done, wanted = update
        self.show_progress(done, wanted)
        if self.status_is_progress:  # a result the user has not yet read stays
            embedded = self.session.store.done() if self.session is not None else np.zeros(0, bool)
            self.say(messages.embedded(self._next_step(), z, done, wanted, embedded), progress=True)
        if self._waiting_for == z:
            self._waiting_for = None
            self.request_decode()

    def _embedding_finished(self) -> None:
        if not self.closed:
            self.update_controls()
            self._embed()  # the user may have moved on meanwhile

    def embed_all(self) -> None:
        """Embed every slice of the volume, the one on screen first."""
        if self.queue is not None:
            self.queue.want_all()
            self._show_embedding_progress()
            self._embed()

    def _show_embedding_progress(self) -> None:
        """The wanted slices and how many of them are embedded (some may be from before)."""
        if self.queue is not None and self.session is not None:
            self.show_progress(*self.queue.progress(self.session.store.done()))

    def cancel(self) -> None:
        """Stop embedding, automatic segmentation, propagation and learning soon.

        Finished embeddings and automatically segmented slices are kept; a cancelled
        propagation adds nothing, cancelled learning changes no model.
        """
        self.long_tasks.cancel()
        if self.queue is not None:
            self.queue.want_all(False)
        if self.running("embed"):
            self._tasks["embed"].quit()
            self.say("Embedding cancelled; finished slices are kept.")
        if any(self.running(kind) for kind in LONG_TASKS):
            self.say("Cancelling…")

    def _slice_changed(self, *_: Any) -> None:
        if self.closed or self.session is None or self.queue is None:
            return
        z = self.current_z()
        self.queue.look_at(z)
        if self.preview is not None and self.preview.z != z:
            self.preview = None
            self._show(None)
        self._embed()
        self.request_decode()

    # -- decoding (latest wins) -------------------------------------------------------------

    def _prompts_changed(self, event: Any = None) -> None:
        action = getattr(event, "action", None)
        if self.closed or str(getattr(action, "value", action)).endswith("ing"):
            return  # napari's "adding"/"removing"/"changing": the data is not there yet
        layers.color_points(self.points)
        if not self.running("decode") and not self._debounce.isActive():
            self._decode_now()  # idle: start at once, overlapping the canvas repaint
        else:
            self.request_decode()  # busy: coalesce, the newest request wins

    def set_refine(self, on: bool) -> None:
        """Turn the refined click on or off; the prompts on screen are decoded again."""
        self.refine = on
        if self.session is not None:
            self.session.segmenter.refine = on
            self.request_decode()

    def set_negative(self, negative: bool) -> None:
        """Make the next points negative (True) or positive."""
        if self.points is not None:
            layers.set_sign(self.points, not negative)

    def request_decode(self) -> None:
        """Decode the prompts on screen soon (requests close together make one decode)."""
        self._debounce.start()

    def _decode_now(self) -> None:
        if self.session is None or self.image is None:
            return
        if self.running("decode"):
            self._decode_again = True  # the newest request waits; older ones are dropped
            return
        z = self.current_z()
        pts, signs, boxes = layers.prompts_on_slice(self.points, self.boxes, z, self.image.ndim)
        if not len(boxes) and not signs.any():
            self.preview = None
            self._show(None)
            return
        if not self.session.is_embedded(z):
            self._waiting_for = z  # decoded as soon as the slice is embedded
            self.say(f"Waiting for slice {z}'s embedding; your prompts are kept.", progress=True)
            self._embed()
            return
        self._decode_generation = self.generation
        task = Task(preview_with_outline, (self.session, z, pts, signs, boxes))
        task.returned, task.errored = self._decoded, self._decode_failed
        task.finished = self._decode_finished
        self.run("decode", task)

    def _decoded(self, decoded: tuple[Preview, np.ndarray] | None) -> None:
        if self._decode_generation != self.generation or self._decode_again or self.closed:
            return  # stale: the session changed or newer prompts wait
        preview, outlined = decoded if decoded is not None else (None, None)
        if preview is not None and preview.z != self.current_z():
            return
        self.preview = preview
        self._show(preview, outlined)

    def _decode_failed(self, err: Exception) -> None:
        if self.closed:
            return
        if isinstance(err, NotEmbeddedError):
            self._waiting_for = self.current_z()
            self._embed()
            return
        self.report("the prompts could not be decoded", err)

    def _decode_finished(self) -> None:
        if self._decode_again and not self.closed:
            self._decode_again = False
            self._decode_now()

    def _show(self, preview: Preview | None, outlined: np.ndarray | None = None) -> None:
        """Show ``preview`` (None: nothing), drawn as ``outlined`` when that is known."""
        if self.preview_layer is None or self.image is None:
            return
        z = self.current_z() if preview is None else preview.z
        if preview is not None and outlined is None:
            outlined = layers.outline(preview.labels())
        layers.show_preview(self.preview_layer, self.image, z, outlined)
        self.preview_line_changed.emit(messages.preview_line(preview))

    # -- actions on the preview and the labels ----------------------------------------------

    def commit(self) -> list[int]:
        """Add the preview's objects to the labels (and the store on disk); their ids."""
        if self.session is None or self.preview is None or self.long_tasks.busy():
            return []
        preview = self.preview
        try:
            ids = self.session.commit(preview)
        except Exception as err:  # a read-only or locked store: say so, lose nothing
            self.report("the objects could not be committed", err)
            self.refresh_labels()
            return []
        self.after_commit(preview.z, ids)
        return ids

    def after_commit(self, z: int, ids: list[int]) -> None:
        """Show that ``ids`` were committed from slice ``z``: its prompts and preview go."""
        self.preview = None
        self._show(None)
        if self.image is not None:
            layers.remove_prompts_on_slice(self.points, self.boxes, z, self.image.ndim)
        self.refresh_labels()
        self.say(messages.committed(ids))

    def clear_prompts(self) -> None:
        """Remove the prompts on the slice on screen and its preview."""
        if self.image is None:
            return
        z = self.current_z()
        layers.remove_prompts_on_slice(self.points, self.boxes, z, self.image.ndim)
        self.preview = None
        self._show(None)

    def next_candidate(self) -> None:
        """Show every object's next candidate mask."""
        if self.preview is not None:
            self.preview = self.preview.cycle()
            self._show(self.preview)

    def undo(self) -> int | None:
        """Undo the last commit; the id removed."""
        if self.session is None or self.long_tasks.busy():
            return None
        failed = "the last commit could not be undone"
        return self._change_labels(self.session.undo, failed, "undid object", "nothing to undo")

    def redo(self) -> int | None:
        """Redo the last undone commit; its id."""
        if self.session is None or self.long_tasks.busy():
            return None
        failed = "the commit could not be redone"
        return self._change_labels(self.session.redo, failed, "redid object", "nothing to redo")

    def _change_labels(
        self, change: Callable[[], int | None], failed: str, did: str, nothing: str
    ) -> int | None:
        try:
            label_id = change()
        except Exception as err:  # read-only labels, a changed store: say so
            self.report(failed, err)
            return None
        self.refresh_labels()
        self.say(f"{did if label_id else nothing} {label_id or ''}".strip() + ".")
        return label_id

    def save_labels(self, path: str | Path) -> Path:
        """Write the committed labels to a new OME-Zarr at ``path``."""
        if self.labels_layer is None:
            raise RuntimeError("start a session first")
        from .io import write_labels

        layer = self.labels_layer
        meta = {"scale": tuple(layer.scale), "translate": tuple(layer.translate)}
        written = write_labels(str(path), layer.data, meta)  # read band by band
        self.say(f"Labels saved to {written[0]}.")
        return Path(written[0])
