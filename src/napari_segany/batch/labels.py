"""A volume's segmented slices linked into OME-Zarr labels with volume-wide ids (and a TIFF).

Linking walks through z one slice at a time (:class:`~napari_segany.SliceLinker`), so it
runs in the memory of a couple of slices whatever the volume's size, in the process that
gathers the results, once every slice of the volume is segmented. Given the image, a
first pass measures every linked object's signal on each of its slices and the labels
leave out the slices beyond each object's ends in z (:mod:`napari_segany.object_ends`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..automatic.segment import SliceLinker
from ..labels.store import LabelsStore
from ..object_ends import MIN_SIGNAL_RATIO, ends, standout_at
from .slices import SliceStore

__all__ = ["LinkedSlices", "export_tiff", "write_labels"]


class LinkedSlices:
    """A lazy ``(Z, Y, X)`` uint32 array: a slice store's slices with volume-wide ids.

    Slices are linked as they are read, in z order, keeping the last one; reading an
    earlier slice starts the linking over from slice 0. Given the image, each linked
    object's slices beyond its ends in z are left out: a first pass through the volume
    measures every object on each of its slices.

    Parameters
    ----------
    slices
        Every slice segmented.
    link
        False: every slice object gets an id of its own (2D stacks, time series).
    iou_threshold
        Least IoU with an object on the slice before to continue it.
    image_at
        ``image_at(z)``: slice ``z``'s intensities; None (or no linking) keeps every
        slice of every object.
    min_signal_ratio
        The end rule's share of an object's strongest slice's signal (0: keep all).
    """

    def __init__(
        self,
        slices: SliceStore,
        *,
        link: bool = True,
        iou_threshold: float = 0.3,
        image_at: Callable[[int], np.ndarray] | None = None,
        min_signal_ratio: float = MIN_SIGNAL_RATIO,
    ):
        self._slices = slices
        self._link, self._iou = link, iou_threshold
        self.shape = slices.shape
        self.dtype = np.dtype(np.uint32)
        self.ndim = 3
        self._restart()
        self._keep: dict[int, tuple[int, int]] = {}  # id -> first and last slice kept
        if image_at is not None and link and min_signal_ratio > 0:
            self._keep = self._ends(image_at, min_signal_ratio)

    def _ends(
        self, image_at: Callable[[int], np.ndarray], min_ratio: float
    ) -> dict[int, tuple[int, int]]:
        """The first and last slice to keep of each object that fades before its ends."""
        seen: dict[int, list[tuple[int, tuple[float, float]]]] = {}
        for z in range(self.shape[0]):
            labels, image = self._linked(z), image_at(z)
            for k, where in enumerate(ndimage.find_objects(labels), start=1):
                if where is not None:
                    crop = labels[where] == k
                    measure = standout_at(image, where[0].start, where[1].start, crop)
                    seen.setdefault(k, []).append((z, measure))
        keep = {}
        for k, runs in seen.items():
            first, stop = ends([m for _, m in runs], min_ratio)
            if (first, stop) != (0, len(runs)):
                keep[k] = (runs[first][0], runs[stop - 1][0])
        return keep

    def _restart(self) -> None:
        self._linker = SliceLinker(self._iou, link=self._link)
        self._z = -1
        self._current = np.zeros(self.shape[1:], dtype=np.uint32)

    @property
    def objects(self) -> int:
        """How many ids the slices read so far use (through z, an object counts once)."""
        return self._linker.next_id - 1

    def slice(self, z: int) -> np.ndarray:
        """Slice ``z`` with volume-wide ids (objects' faded ends left out)."""
        labels = self._linked(z)
        gone = [k for k, (lo, hi) in self._keep.items() if not lo <= z <= hi]
        if not gone:
            return labels
        return np.where(np.isin(labels, gone), 0, labels).astype(self.dtype, copy=False)

    def _linked(self, z: int) -> np.ndarray:
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
    image_at: Callable[[int], np.ndarray] | None = None,
    min_signal_ratio: float = MIN_SIGNAL_RATIO,
) -> int:
    """Link the slices and write them as OME-Zarr labels at ``path`` (replacing what was
    there only once the new labels are complete), and as a TIFF when ``tiff`` is given.
    With ``image_at`` (``image_at(z)``: slice ``z``'s intensities) and linking on, each
    object's slices beyond its ends in z are left out (``min_signal_ratio``, 0: none).

    Returns
    -------
    int
        How many objects (ids) the labels hold.

    Raises
    ------
    StoreLockedError
        The labels at ``path`` are open for writing elsewhere (e.g. in napari).
    """
    linked = LinkedSlices(
        slices,
        link=link,
        iou_threshold=iou_threshold,
        image_at=image_at,
        min_signal_ratio=min_signal_ratio,
    )
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
