"""Linked slices into a :class:`~napari_segany.labels.store.LabelsStore`, one object per commit.

Slices arrive in z order with volume-wide ids. An object is committed as soon as it has
ended (it is absent from the newest slice), less the slices beyond its ends in z where
its signal has faded (:mod:`napari_segany.object_ends`). Only the objects still running
are held in memory, each as crops of its slices, and a run stopped midway keeps every
object committed so far. Each object gets the store's next id and its record in the annotation
log; voxels already labelled (by hand, or by an earlier run) are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from ..object_ends import MIN_SIGNAL_RATIO, ends, standout_at

if TYPE_CHECKING:
    from ..labels.store import LabelsStore

__all__ = ["StoreWriter"]


@dataclass
class _Pieces:
    """An object's crops so far: ``(z, y0, x0, mask)`` per slice."""

    parts: list[tuple[int, int, int, np.ndarray]] = field(default_factory=list)


class StoreWriter:
    """Commits 3D objects to a labels store as they end in z.

    Parameters
    ----------
    store
        Open for writing; its shape is the volume's.
    record
        Put in the annotation log with every object (method, model, parameters).
    image_at
        ``image_at(z)``: slice ``z``'s intensities, to trim each object's slices beyond
        its ends in z (:func:`~napari_segany.object_ends.ends`); None keeps them all.
    min_signal_ratio
        The end rule's share of the strongest slice's signal.
    """

    def __init__(
        self,
        store: LabelsStore,
        record: dict[str, Any],
        *,
        image_at: Callable[[int], np.ndarray] | None = None,
        min_signal_ratio: float = MIN_SIGNAL_RATIO,
    ) -> None:
        self.store = store
        self.record = record
        self.image_at = image_at
        self.min_signal_ratio = min_signal_ratio
        self.committed: list[int] = []
        self._open: dict[int, _Pieces] = {}
        self._last_z: int | None = None
        self._buffer: np.ndarray | None = None

    def add(self, z: int, labels: np.ndarray) -> None:
        """Take slice ``z``'s linked labels; commit the objects that ended before it."""
        if self._last_z is not None and z != self._last_z + 1:
            self.finish()  # not the next slice: nothing continues across the gap
        ids, inverse = np.unique(labels, return_inverse=True)
        if ids[0] != 0:  # no background on this slice: keep 0 free for it
            ids, inverse = np.concatenate([[0], ids]), inverse + 1
        dense = inverse.reshape(labels.shape)
        present: set[int] = set()
        for k, where in enumerate(ndimage.find_objects(dense), start=1):
            if where is None:
                continue
            label = int(ids[k])
            present.add(label)
            crop = dense[where] == k
            self._open.setdefault(label, _Pieces()).parts.append(
                (z, where[0].start, where[1].start, crop)
            )
        for label in [i for i in self._open if i not in present]:
            self._commit(self._open.pop(label))
        self._last_z = z

    def finish(self) -> None:
        """Commit every object still open."""
        for label in sorted(self._open):
            self._commit(self._open.pop(label))
        self._last_z = None

    def _commit(self, pieces: _Pieces) -> None:
        parts = pieces.parts
        if self.image_at is not None and len(parts) > 1:
            measures = [standout_at(self.image_at(z), y, x, crop) for z, y, x, crop in parts]
            first, stop = ends(measures, self.min_signal_ratio)
            parts = parts[first:stop]
        if not self._adds_voxels(parts):
            return
        if len(parts) == 1:
            z, y, x, crop = parts[0]
            mask = np.zeros(self.store.shape[1:], dtype=bool)
            mask[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
            label = self.store.commit(mask, z=z, overlap="keep", record=self.record)
        else:
            # commit() takes slice- or volume-sized masks: a volume-sized buffer is kept
            # between objects (set, committed, cleared) rather than allocated per object
            if self._buffer is None:
                self._buffer = np.zeros(self.store.shape, dtype=bool)
            try:
                for z, y, x, crop in parts:
                    self._buffer[z, y : y + crop.shape[0], x : x + crop.shape[1]] = crop
                label = self.store.commit(self._buffer, overlap="keep", record=self.record)
            finally:
                for z, y, x, crop in parts:
                    self._buffer[z, y : y + crop.shape[0], x : x + crop.shape[1]] = False
        self.committed.append(label)

    def _adds_voxels(self, parts: list[tuple[int, int, int, np.ndarray]]) -> bool:
        """Whether the object reaches background: one wholly under labels already there
        (by hand, or from an earlier run) is skipped, as ``overlap="keep"`` would refuse it."""
        for z, y, x, crop in parts:
            ys, xs = slice(y, y + crop.shape[0]), slice(x, x + crop.shape[1])
            if (crop & (self.store.read_region(z, ys, xs) == 0)).any():
                return True
        return False
