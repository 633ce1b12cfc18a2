"""Which slice to embed next while the user moves through a volume in the napari widget.

The slice on screen first, then its neighbours nearest first, then (after "embed all") every
other slice. The queue is read from the GUI thread and the embedding worker alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .session import Session

__all__ = ["EmbeddingQueue", "prefetch_order"]


def prefetch_order(z: int, n_slices: int, radius: int = 2) -> list[int]:
    """Slice ``z`` first, then its neighbours nearest first (``z+1, z-1, z+2, ...``)."""
    order = [z]
    for step in range(1, radius + 1):
        order += [s for s in (z + step, z - step) if 0 <= s < n_slices]
    return order


class EmbeddingQueue:
    """Which slice to embed next, as the user moves through the volume (thread-safe).

    The slice on screen always comes first, then its neighbours, then (after "embed
    all") every other slice in order.
    """

    def __init__(self, n_slices: int, radius: int = 2) -> None:
        self.n_slices, self.radius = n_slices, radius
        self._lock = threading.Lock()
        self._current = 0
        self._everything = False

    def look_at(self, z: int) -> None:
        """The user is on slice ``z`` now."""
        with self._lock:
            self._current = min(max(int(z), 0), self.n_slices - 1)

    def want_all(self, wanted: bool = True) -> None:
        """Embed the whole volume (or go back to the neighbourhood only)."""
        with self._lock:
            self._everything = wanted

    def wanted(self) -> list[int]:
        """The slices wanted now, in order."""
        with self._lock:
            order = prefetch_order(self._current, self.n_slices, self.radius)
            if self._everything:
                order += [z for z in range(self.n_slices) if z not in order]
        return order

    def progress(self, done: Sequence[bool] | np.ndarray) -> tuple[int, int]:
        """How many of the wanted slices are done, and how many are wanted."""
        wanted = self.wanted()
        return int(sum(bool(done[z]) for z in wanted)), len(wanted)

    def next(self, done: Sequence[bool] | np.ndarray) -> int | None:
        """The next slice to embed, or None when every wanted slice is done."""
        return next((z for z in self.wanted() if not done[z]), None)

    def run(
        self, session: Session, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[tuple[int, int, int]]:
        """Embed wanted slices until none is left: yields ``(z, done, wanted)`` after each."""
        while should_stop is None or not should_stop():
            done = session.store.done()
            z = self.next(done)
            if z is None:
                return
            session.embed_slice(z)
            done[z] = True
            yield z, *self.progress(done)
