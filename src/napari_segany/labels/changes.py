"""Changing labels safely: one writer, every change journaled first, interrupted ones undone.

:class:`Changes` is the writing side of a labels store. It takes the writer lock, rolls back
a change a crash interrupted, and makes each change (commit, undo, redo) in the journal's
order: region saved, ``begin``, chunks, ``end`` (see :mod:`.journal`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .journal import History, Journal, JournalError, now
from .layout import (
    Box,
    Level,
    check_coarse_levels,
    read_labels,
    remove_partial_writes,
    set_colors,
    write_region,
)
from .lock import WriterLock

__all__ = [
    "Changes",
    "ids_in",
    "slices",
]


class Changes:
    """The journal, replayed state and (when writable) lock of one label image."""

    def __init__(
        self,
        group: zarr.Group,
        levels: list[Level],
        journal: Journal,
        *,
        lock: WriterLock | None,
        depth: int,
    ) -> None:
        self.group, self.levels, self.journal = group, levels, journal
        self.lock, self.depth = lock, depth
        self.history = History(journal.entries(repair=lock is not None) if journal.exists() else [])

    @classmethod
    def writer(
        cls,
        group: zarr.Group,
        levels: list[Level],
        directory: Path,
        *,
        depth: int,
        new: bool = False,
    ) -> Changes:
        """Take the lock, start a journal if there is none and roll back what a crash left.

        ``new``: the labels were just created empty, so there are no ids to look for.
        """
        directory.mkdir(exist_ok=True)
        lock = WriterLock(directory / "lock")
        try:
            journal = Journal(directory)
            if not journal.exists():
                # Labels written by another tool: the ids in them are never handed out.
                journal.start(existing_ids=[] if new else sorted(ids_in(levels[0].array)))
            journal.regions.mkdir(exist_ok=True)
            changes = cls(group, levels, journal, lock=lock, depth=depth)
            changes.settle()
            # A kill while zarr rewrote the group's metadata (the colours) leaves its
            # temporary file; with the lock held no other write can be in progress.
            for leftover in directory.parent.glob("zarr.*.partial"):
                leftover.unlink(missing_ok=True)
            set_colors(group, changes.history.live_ids(), changes.history.managed_ids())
            journal.prune(changes.history.needed_regions(depth))
        except BaseException:
            lock.release()
            raise
        return changes

    def current(self) -> History:
        """The state now: a reader re-reads the journal, which a writer elsewhere extends."""
        if self.lock is None and self.journal.exists():
            self.history = History(self.journal.entries(repair=False))
        return self.history

    def apply(self, begin: dict[str, Any], box: Box, new: np.ndarray, old: np.ndarray) -> None:
        """Journal ``begin``, write ``new`` over ``old`` in ``box``, journal the end.

        ``begin`` names the saved region that undoes it (its ``target``, else its ``seq``).
        On any error mid-write the region is put back before the error propagates.
        """
        self.journal.append(begin)
        self.history.feed(begin)
        try:
            write_region(self.levels, box, new, old)
        except BaseException:
            try:
                self.settle()  # put the region back now rather than at the next open
            except Exception:
                pass  # left for the next writer to open the store
            raise
        end = {"op": "end", "seq": begin["seq"]}
        self.journal.append(end)
        self.history.feed(end)
        set_colors(self.group, self.history.live_ids(), self.history.managed_ids())
        self.journal.prune(self.history.needed_regions(self.depth))

    def step(self, action: str) -> int | None:
        """Undo the last commit or redo the last undone one; the id, or None if none."""
        self.settle()
        if action == "undo":
            stack = self.history.live
            if not stack or not self.journal.has_region(stack[-1]):
                return None  # nothing left, or older than the undo history
        else:
            stack = self.history.redo
            if not stack:
                return None
        target = stack[-1]
        region = self.journal.load_region(target)
        expected, new = (region.after, region.before)
        if action == "redo":
            expected, new = region.before, region.after
        check_coarse_levels(self.levels, region.box)
        current = read_labels(self.levels[0].array, slices(region.box))
        if not np.array_equal(current, expected):
            raise RuntimeError(
                f"cannot {action}: the labels in the object's region changed since it was "
                "committed (written outside this LabelsStore?); nothing was changed"
            )
        label_id = int(self.history.commits[target]["id"])
        begin = {
            "op": "begin",
            "seq": self.history.last_seq + 1,
            "action": action,
            "target": target,
            "id": label_id,
            "time": now(),
        }
        self.apply(begin, region.box, new, current)
        return label_id

    def settle(self) -> None:
        """Roll back a change that began but did not end (a crash, or an error mid-write)."""
        pending = self.history.pending
        if pending is None:
            return
        target = pending.get("target", pending["seq"])
        if not self.journal.has_region(target):
            raise JournalError(
                f"an interrupted change (journal seq {pending['seq']}) cannot be rolled back: "
                f"its saved region is missing from {self.journal.regions}"
            )
        region = self.journal.load_region(target)
        prior = region.after if pending["action"] == "undo" else region.before
        current = read_labels(self.levels[0].array, slices(region.box))
        remove_partial_writes(self.levels, region.box)
        write_region(self.levels, region.box, prior, current)
        rollback = {"op": "rollback", "seq": pending["seq"], "time": now()}
        self.journal.append(rollback)
        self.history.feed(rollback)


def slices(box: Box) -> tuple[slice, slice, slice]:
    (z0, z1), (y0, y1), (x0, x1) = box
    return slice(z0, z1), slice(y0, y1), slice(x0, x1)


def ids_in(array: zarr.Array) -> set[int]:
    """The ids present in ``array``, read a few slices at a time."""
    ids: set[int] = set()
    step = array.chunks[0]
    for z in range(0, array.shape[0], step):
        slab = read_labels(array, slice(z, z + step))
        ids.update(int(i) for i in np.unique(slab[slab != 0]))
    return ids
