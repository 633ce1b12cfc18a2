"""The widget's long tasks, free of Qt: propagation, automatic segmentation, learning.

One runs at a time (the others, commits and undos wait for it); each reports its progress
from its worker thread, shown every few tenths of a second, and stops soon on Cancel. They
are the part of the :class:`~napari_segany._napari.controller.Controller` that
:class:`LongTasks` holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..propagate import PropagationCancelled, StopRule
from . import messages
from .tasks import Progress, Task

if TYPE_CHECKING:
    from ..automatic.params import AutomaticParams
    from ..finetuning.run import FinetuneReport
    from ..model import SamModel
    from ..session import Preview, Session

__all__ = ["LONG_TASKS", "LongTasks", "TaskHost"]

#: The long tasks by kind, as a message names them.
LONG_TASKS = {
    "propagate": "the propagation",
    "automatic": "the automatic segmentation",
    "learn": "the learning from your labels",
}


class TaskHost(Protocol):
    """What the long tasks use of their :class:`~napari_segany._napari.controller.Controller`:
    its session and preview, its task runner, and its ways of showing things."""

    session: Session | None
    preview: Preview | None
    closed: bool
    generation: int

    def running(self, kind: str) -> bool: ...
    def run(self, kind: str, task: Task) -> None: ...
    def say(self, text: str, *, progress: bool = False) -> None: ...
    def tell(self, text: str) -> None: ...
    def report(self, what: str, err: Exception) -> None: ...
    def show_progress(self, done: int, total: int) -> None: ...
    def show_unit(self, unit: str) -> None: ...
    def update_controls(self) -> None: ...
    def refresh_labels(self) -> None: ...
    def request_decode(self) -> None: ...
    def after_commit(self, z: int, ids: list[int]) -> None: ...


class LongTasks:
    """Propagation, automatic segmentation and learning for a controller.

    Parameters
    ----------
    controller
        Whose session, preview and display these tasks use.

    Attributes
    ----------
    finetune_budget
        Seconds of training for "Learn from my labels" (None: the engine's default).
    finetune_report
        The last :class:`~napari_segany.finetuning.run.FinetuneReport` of "Learn from my labels".
    """

    def __init__(self, controller: TaskHost) -> None:
        self._controller = controller
        self.finetune_budget: float | None = None
        self.finetune_report: FinetuneReport | None = None
        self._progress = Progress()
        self._generation = 0  # the controller's when the task started
        self._propagating_z = 0
        self._follows = False  # the running automatic segmentation follows the labels

    def busy(self) -> bool:
        """Whether a long task runs; if so, an info notification asks to wait for it."""
        for kind, what in LONG_TASKS.items():
            if self._controller.running(kind):
                self._controller.tell(f"Segment Anything: wait for {what} to finish")
                return True
        return False

    def cancel(self) -> None:
        """Ask the running long task to stop soon (a cancelled propagation adds nothing)."""
        self._progress.cancel.set()

    def _start(self, kind: str, task: Task, progress: Progress, status: str) -> None:
        """Run ``task``, its function called with ``callback`` and ``cancel`` too.

        The callback records ``(done, total)`` in the worker thread; :meth:`tick` shows it
        (``total`` 0: not known yet, the bar is busy). ``cancel`` polls Cancel.
        """
        self._progress = progress
        self._generation = self._controller.generation
        task.kwargs.update(callback=progress.report, cancel=progress.cancelled)
        task.poll = self.tick
        self.tick()
        self._controller.say(status)
        self._controller.run(kind, task)

    def tick(self) -> None:
        """Show the progress the running task reported (its timer calls this)."""
        if self._controller.closed:
            return
        self._controller.show_progress(*self._progress.steps)
        text = self._progress.text()
        if text is not None and not self._progress.cancelled():  # else: "Cancelling…" stays
            self._controller.say(text)

    def _end(self, *, complete: bool = False) -> bool:
        """Show the bar at the last progress reported (or all done); False once closed."""
        if self._controller.closed:
            return False
        done, total = self._progress.steps
        total = max(total, 1)  # never left busy
        self._controller.show_progress(total if complete else min(done, total), total)
        return True

    def _finished(self) -> None:
        if not self._controller.closed:
            self._controller.update_controls()

    def _current(self) -> bool:
        """Whether the session the task started in is still open."""
        controller = self._controller
        return not controller.closed and self._generation == controller.generation

    # -- propagation ------------------------------------------------------------------------

    def propagate(self, stop: StopRule) -> None:
        """Carry the preview's objects through z (in a worker) and commit them."""
        controller = self._controller
        session, preview = controller.session, controller.preview
        if session is None or preview is None or self.busy():
            if preview is None:
                controller.tell("Segment Anything: place prompts first, then propagate")
            return
        self._propagating_z = preview.z
        task = Task(session.propagate, (preview,), {"stop": stop})
        task.returned, task.errored = self._propagated, self._propagate_failed
        task.finished = self._finished
        # The steps are known once the first one is done.
        progress = Progress(0, "Propagating through z: slice step {} of {}…".format)
        self._start("propagate", task, progress, "Propagating through z…")

    def _propagated(self, ids: list[int]) -> None:
        if self._end(complete=True):
            self._controller.after_commit(self._propagating_z, ids)

    def _propagate_failed(self, err: Exception) -> None:
        self._end()
        if not isinstance(err, PropagationCancelled):
            self._controller.report("propagation failed", err)
        elif self._current():  # else the session was closed: its own message stays
            self._controller.say(
                "Propagation through z cancelled; nothing was added. The preview is kept: "
                "propagate again when ready."
            )

    # -- automatic segmentation -------------------------------------------------------------

    def segment(self, z: int | None, params: AutomaticParams, follow_labels: bool) -> None:
        """Segment every object of slice ``z`` (None: the volume), in a worker, into the labels.

        ``follow_labels``: look for objects like the ones already labelled.
        """
        session = self._controller.session
        if session is None or self.busy():
            return
        self._follows = follow_labels
        options = {"params": params, "follow_labels": follow_labels}
        task = Task(session.segment_automatically, (z,), options)
        task.returned, task.errored = self._segmented, self._automatic_failed
        task.finished = self._automatic_finished
        total = 1 if z is not None else len(session.volume)
        progress = Progress(total, "Segmenting automatically: {} of {} slice(s) done.".format)
        self._start("automatic", task, progress, "Segmenting automatically…")

    def _segmented(self, ids: list[int]) -> None:
        if not self._end():
            return
        self._controller.refresh_labels()
        self._controller.say(f"Automatic segmentation added {len(ids)} object(s).")

    def _automatic_failed(self, err: Exception) -> None:
        if not self._end():
            return
        if self._follows and isinstance(err, ValueError):  # too few objects: one line
            self._controller.say(f"Cannot follow your objects: {messages.one_line(err)}.")
        else:
            self._controller.report("automatic segmentation failed", err)

    def _automatic_finished(self) -> None:
        self._finished()
        if not self._controller.closed:
            self._controller.refresh_labels()

    # -- learning from the labels -----------------------------------------------------------

    def learn(self) -> None:
        """Tune the model on the committed labels (in a worker), then decode with it.

        The tuned model replaces the session's only if it beats it on held-back objects
        (see :func:`napari_segany.finetune`); it is saved in the session's workspace.
        Training lasts :attr:`finetune_budget` seconds; Cancel stops it, changing nothing.
        """
        session = self._controller.session
        if session is None or self.busy():
            return
        task = Task(session.learn_from_labels, (self.finetune_budget,))
        task.returned, task.errored = self._learned, self._learn_failed
        task.finished = self._learning_finished
        self._controller.show_unit("steps")
        # The steps are estimated once training runs.
        progress = Progress(0, "Learning from your labels: step {} of about {}…".format)
        self._start("learn", task, progress, "Learning from your labels: scoring the model first…")

    def _learned(self, result: tuple[SamModel, FinetuneReport]) -> None:
        self._end(complete=True)
        session = self._controller.session
        if session is None or not self._current():
            return
        model, report = result
        self.finetune_report = report
        base = session.model.name
        if report.kept == "tuned":
            try:
                session.use_model(model)
            except ValueError as err:
                self._controller.report("the tuned model could not be used", err)
                return
        used = report.checkpoint.name if report.checkpoint is not None else model.name
        self._controller.say(messages.learned(report, base, used))
        if report.kept == "tuned":
            self._controller.request_decode()  # the prompts on screen, with the tuned model

    def _learn_failed(self, err: Exception) -> None:
        from ..finetuning.run import FinetuneCancelled

        self._end()
        if not self._current():
            return  # the session was closed meanwhile: its own message stays
        if isinstance(err, FinetuneCancelled):
            self._controller.say("Learning cancelled; the model is unchanged.")
        elif isinstance(err, ValueError):  # too few objects, mismatched labels: one line
            self._controller.say(f"Cannot learn from your labels: {messages.one_line(err)}.")
        else:
            self._controller.report("learning from your labels failed", err)

    def _learning_finished(self) -> None:
        if not self._controller.closed:
            self._controller.show_unit("slices")
        self._finished()
