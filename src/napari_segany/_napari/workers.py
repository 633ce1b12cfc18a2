"""Tasks run in napari thread workers: the one place the widget's threads are wired.

:class:`QtRunner` is the runner (:class:`~napari_segany._napari.tasks.Runner`) of the dock
widget: each :class:`~napari_segany._napari.tasks.Task` gets a napari worker whose signals
call the task's handlers in the GUI thread, and a timer for its ``poll``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.qt.threading import FunctionWorker, create_worker
from qtpy.QtCore import QObject, QTimer

from .tasks import Task

__all__ = ["QtRunner"]


class QtRunner:
    """Runs tasks in napari thread workers; their handlers run in the GUI thread.

    Parameters
    ----------
    parent
        The widget whose timers these are (they go with it).
    """

    def __init__(self, parent: QObject | None = None) -> None:
        self._parent = parent

    def start(self, task: Task) -> None:
        """Start a worker for ``task`` (see :class:`~napari_segany._napari.tasks.Task`)."""
        # The poll timer has no parent: a task may end after the widget is gone.
        timer = QTimer() if task.poll is not None else None

        def stop_polling(*_: Any) -> None:  # before the outcome is shown: no tick after it
            if timer is not None:
                timer.stop()

        # Without an errored handler, napari raises the error again in the GUI thread.
        connect: dict[str, list[Callable[..., Any]]] = {}
        for name in ("yielded", "returned", "errored", "finished"):
            handler = getattr(task, name)
            if handler is not None or name == "finished":
                polling = [] if name == "yielded" else [stop_polling]
                connect[name] = [*polling, *([handler] if handler is not None else [])]
        worker = create_worker(
            task.function, *task.args, _connect=connect, _start_thread=False, **task.kwargs
        )
        task.on_quit = worker.quit
        if timer is not None and task.poll is not None:
            timer.setInterval(task.poll_ms)
            timer.timeout.connect(task.poll)
            timer.start()
        worker.start()

    def timer(self, msecs: int, function: Callable[[], None]) -> QTimer:
        """A single-shot ``QTimer`` (restarted by each ``start``) that calls ``function``."""
        timer = QTimer(self._parent)
        timer.setSingleShot(True)
        timer.setInterval(msecs)
        timer.timeout.connect(function)
        return timer

    def wait(self, msecs: int) -> None:
        """Block until every napari worker has finished, ``msecs`` at most."""
        FunctionWorker.await_workers(msecs=msecs)
