"""A volume's segmented slices linked into OME-Zarr labels with volume-wide ids (and a TIFF).

Linking walks through z one slice at a time (:class:`~napari_segany.SliceLinker`), so it
runs in the memory of a couple of slices whatever the volume's size, in the process that
gathers the results, once every slice of the volume is segmented.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .automatic import SliceLinker
from .batch_slices import SliceStore
from .labels import LabelsStore

__all__ = ["LinkedSlices", "export_tiff", "write_labels"]


class LinkedSlices:
    """A lazy ``(Z, Y, X)`` uint32 array: a slice store's slices with volume-wide ids.

    Slices are linked as they are read, in z order, keeping the last one; reading an
    earlier slice starts the linking over from slice 0.

    Parameters
    ----------
    slices
        Every slice segmented.
    link
        False: every slice object gets an id of its own (2D stacks, time series).
    iou_threshold
        Least IoU with an object on the slice before to continue it.
    """

    def __init__(self, slices: SliceStore, *, link: bool = True, iou_threshold: float = 0.3):
        self._slices = slices
        self._link, self._iou = link, iou_threshold
        self.shape = slices.shape
        self.dtype = np.dtype(np.uint32)
        self.ndim = 3
        self._restart()

    def _restart(self) -> None:
        self._linker = SliceLinker(self._iou, link=self._link)
        self._z = -1
        self._current = np.zeros(self.shape[1:], dtype=np.uint32)

    @property
    def objects(self) -> int:
        """How many ids the slices read so far use (through z, an object counts once)."""
        return self._linker.next_id - 1

    def slice(self, z: int) -> np.ndarray:
        """Slice ``z`` with volume-wide ids."""
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"slice {z} is outside the volume's {self.shape[0]} slices")
        if z < self._z:
            self._restart()
        while self._z < z:
            self._z += 1
            self._current = self._linker.add(self._slices.read(self._z), self._z)
        return self._current

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        zkey, rest = key[0], key[1:]
        if isinstance(zkey, int | np.integer):
            return self.slice(int(zkey) % self.shape[0])[rest]
        if not isinstance(zkey, slice):
            raise TypeError(f"index z with an integer or a slice, got {zkey!r}")
        zs = range(*zkey.indices(self.shape[0]))
        parts = [self.slice(z)[rest] for z in zs]
        if parts:
            return np.stack(parts)
        return np.zeros((0, *self.shape[1:]), dtype=self.dtype)[(slice(None), *rest)]


def write_labels(
    slices: SliceStore,
    path: str | os.PathLike[str],
    *,
    link: bool = True,
    iou_threshold: float = 0.3,
    tiff: str | os.PathLike[str] | None = None,
) -> int:
    """Link the slices and write them as OME-Zarr labels at ``path`` (replacing what was
    there only once the new labels are complete), and as a TIFF when ``tiff`` is given.

    Returns
    -------
    int
        How many objects (ids) the labels hold.

    Raises
    ------
    StoreLockedError
        The labels at ``path`` are open for writing elsewhere (e.g. in napari).
    """
    linked = LinkedSlices(slices, link=link, iou_threshold=iou_threshold)
    store = LabelsStore.from_array(Path(path), linked, overwrite=True)
    try:
        if tiff is not None:
            store.to_tiff(tiff)
    finally:
        store.close()
    return linked.objects


def export_tiff(labels: str | os.PathLike[str], tiff: str | os.PathLike[str]) -> Path:
    """Write existing OME-Zarr labels to a TIFF, one slice at a time."""
    store = LabelsStore.open(labels, read_only=True)
    try:
        return store.to_tiff(tiff)
    finally:
        store.close()
