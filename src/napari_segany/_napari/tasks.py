"""Background work for the widget, free of Qt: what to run, and what to do with its outcome.

A :class:`Task` names a function to run away from the GUI thread and the handlers of its
outcome. A runner starts it: :class:`~napari_segany._napari.workers.QtRunner` in a napari
thread worker, its handlers called back in the GUI thread; :class:`InlineRunner` at once,
in the calling thread (scripts and tests without Qt). The handlers are the same either way.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "InlineRunner",
    "Progress",
    "Runner",
    "Task",
    "Timer",
]


@dataclass(eq=False)
class Task:
    """A function to run in the background and the handlers of its outcome.

    The handlers run in the GUI thread, in this order: ``yielded`` for each value a
    generator function yields, then ``returned`` with its result or ``errored`` with the
    exception it raised (an error goes to ``errored`` only), then ``finished`` in every
    case. After :meth:`quit`, a generator stops at its next value and ``returned`` is not
    called.

    Attributes
    ----------
    function, args, kwargs
        What runs: ``function(*args, **kwargs)``.
    yielded, returned, errored, finished
        The handlers (None: nothing to do).
    poll
        Called every :attr:`poll_ms` in the GUI thread while the task runs (progress that
        the function writes somewhere rather than yields). Stopped before ``returned``
        or ``errored`` is called.
    """

    function: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    yielded: Callable[[Any], None] | None = None
    returned: Callable[[Any], None] | None = None
    errored: Callable[[Exception], None] | None = None
    finished: Callable[[], None] | None = None
    poll: Callable[[], None] | None = None
    poll_ms: int = 200
    quit_requested: bool = False
    #: Set by the runner: asks its worker to stop (see :meth:`quit`).
    on_quit: Callable[[], None] | None = field(default=None, repr=False)

    def quit(self) -> None:
        """Ask the task to stop: a generator at its next value; ``returned`` is skipped."""
        self.quit_requested = True
        if self.on_quit is not None:
            self.on_quit()


class Timer(Protocol):
    """A restartable single-shot timer in the GUI thread (a ``QTimer`` is one)."""

    def start(self) -> None:
        """(Re)start the countdown; the function runs when it ends."""

    def stop(self) -> None:
        """Cancel the countdown."""

    def isActive(self) -> bool:
        """Whether a countdown runs."""


class Runner(Protocol):
    """Runs tasks away from the GUI thread and calls their handlers back in it."""

    def start(self, task: Task) -> None:
        """Run ``task``; its handlers are called in the GUI thread."""

    def timer(self, msecs: int, function: Callable[[], None]) -> Timer:
        """A single-shot timer that calls ``function`` ``msecs`` after its last start."""

    def wait(self, msecs: int) -> None:
        """Block until every running task has finished, ``msecs`` at most."""


class Progress:
    """How far a long task is, and its Cancel: shared by its worker thread and the GUI.

    The worker reports ``(done, total)`` through :meth:`report` and polls :meth:`cancelled`;
    the GUI reads :attr:`steps` (``total`` 0: not known yet) and shows :meth:`text`.

    Parameters
    ----------
    total
        The steps at most, as far as known before the task starts (0: not known).
    message
        The status for ``(done, total)``, e.g. ``"{} of {}".format``.
    """

    def __init__(self, total: int = 0, message: Callable[[int, int], str] = "{} of {}".format):
        self.steps = (0, total)  # one tuple: the GUI never reads a half-written pair
        self.message = message
        self.cancel = threading.Event()

    def report(self, done: int, total: int) -> None:
        """Record the progress (called in the worker thread)."""
        self.steps = (done, total)

    def cancelled(self) -> bool:
        """Whether Cancel was pressed (polled in the worker thread)."""
        return self.cancel.is_set()

    def text(self) -> str | None:
        """The status for the last progress reported; None while the total is unknown."""
        done, total = self.steps
        return self.message(done, total) if total else None


class _AtOnce:
    """The timer of :class:`InlineRunner`: starting it calls the function at once."""

    def __init__(self, function: Callable[[], None]) -> None:
        self._function = function

    def start(self) -> None:
        self._function()

    def stop(self) -> None:
        pass

    def isActive(self) -> bool:
        return False


class InlineRunner:
    """Runs each task to its end at once, in the calling thread; its timers fire at once.

    For scripts and tests without Qt: the handlers see what they would see from a worker,
    in the same order, with nothing running in between.
    """

    def start(self, task: Task) -> None:
        """Run ``task`` now, then its handlers (see :class:`Task`)."""
        try:
            result = task.function(*task.args, **task.kwargs)
            if inspect.isgenerator(result):
                for value in result:
                    if task.yielded is not None:
                        task.yielded(value)
                    if task.quit_requested:
                        break
                result = None
        except Exception as err:
            if task.errored is None:
                raise
            task.errored(err)
        else:
            if not task.quit_requested and task.returned is not None:
                task.returned(result)
        if task.finished is not None:
            task.finished()

    def timer(self, msecs: int, function: Callable[[], None]) -> Timer:
        """A timer whose :meth:`~Timer.start` calls ``function`` at once."""
        return _AtOnce(function)

    def wait(self, msecs: int) -> None:
        """Nothing to wait for: every task has finished already."""
