"""Slices of 2D instance labels linked into 3D instances with volume-wide ids.

Each slice is segmented on its own, with ids that mean something on that slice only.
Walking through z, every object on a slice is matched to the object it overlaps most on
the slice before (IoU of the two masks), one to one, best pairs first; a matched object
takes its partner's id, an unmatched one a new id. Ids are never reused, so two objects
that do not touch in z never share an id, and with linking off every 2D object gets an
id of its own.

Linking needs only the previous slice, so a whole volume streams through in the memory
of two slices; the slices themselves may have been segmented anywhere (another process,
another machine) in any order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

__all__ = ["SliceLinker", "link_slices", "match_objects"]


def match_objects(
    previous: np.ndarray, current: np.ndarray, iou_threshold: float
) -> dict[int, int]:
    """One-to-one matches ``{current id: previous id}`` of objects overlapping with IoU at
    least ``iou_threshold``, best pairs first (ties: lower ids first)."""
    both = (previous != 0) & (current != 0)
    if not both.any():
        return {}
    stride = int(current.max()) + 1
    keys, inter = np.unique(
        previous[both].astype(np.int64) * stride + current[both], return_counts=True
    )
    prev_ids, cur_ids = keys // stride, keys % stride
    ids_p, area_p = np.unique(previous[previous != 0], return_counts=True)
    ids_c, area_c = np.unique(current[current != 0], return_counts=True)
    union = (
        area_p[np.searchsorted(ids_p, prev_ids)] + area_c[np.searchsorted(ids_c, cur_ids)] - inter
    )
    iou = inter / union
    matches: dict[int, int] = {}
    taken: set[int] = set()
    for k in np.lexsort((cur_ids, prev_ids, -iou)):
        if iou[k] < iou_threshold:
            break
        p, c = int(prev_ids[k]), int(cur_ids[k])
        if c not in matches and p not in taken:
            matches[c] = p
            taken.add(p)
    return matches


class SliceLinker:
    """Gives the objects of consecutive slices volume-wide ids, one slice at a time.

    Parameters
    ----------
    iou_threshold
        Least IoU with an object on the previous slice to continue it.
    link
        False: every object on every slice gets a new id (2D stacks, time series).
    next_id
        The first id to hand out.
    """

    def __init__(self, iou_threshold: float = 0.3, *, link: bool = True, next_id: int = 1) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if next_id < 1:
            raise ValueError(f"next_id must be at least 1, got {next_id}")
        self.iou_threshold = iou_threshold
        self.link = link
        self.next_id = int(next_id)
        self._previous: np.ndarray | None = None
        self._previous_z: int | None = None

    def add(self, local: np.ndarray, z: int | None = None) -> np.ndarray:
        """The slice's labels with volume-wide ids (uint32, 0 stays background).

        Parameters
        ----------
        local
            ``(Y, X)`` integer labels with slice-local ids.
        z
            The slice's index. Objects continue only from the slice directly before
            (``z - 1``); None: from whatever slice was added last.
        """
        local = np.asarray(local)
        if local.ndim != 2 or local.dtype.kind not in "ui":
            raise ValueError(
                f"slice labels must be a 2D integer array, got {local.dtype} {local.shape}"
            )
        ids = np.unique(local[local != 0])
        adjacent = z is None or self._previous_z is None or z == self._previous_z + 1
        matches: dict[int, int] = {}
        if self.link and adjacent and self._previous is not None:
            if self._previous.shape != local.shape:
                raise ValueError(f"slice shape {local.shape} differs from {self._previous.shape}")
            matches = match_objects(self._previous, local, self.iou_threshold)
        lookup = np.zeros(int(ids.max(initial=0)) + 1, dtype=np.uint32)
        for i in ids.tolist():
            if i in matches:
                lookup[i] = matches[i]
            else:
                if self.next_id > np.iinfo(np.uint32).max:
                    raise OverflowError("more objects than uint32 labels can number")
                lookup[i] = self.next_id
                self.next_id += 1
        linked = lookup[local]
        self._previous, self._previous_z = linked, z
        return linked


def link_slices(
    slices: Iterable[np.ndarray],
    *,
    iou_threshold: float = 0.3,
    link: bool = True,
    next_id: int = 1,
) -> Iterator[np.ndarray]:
    """Volume-wide ids for consecutive slices of slice-local labels, streamed.

    Parameters
    ----------
    slices
        ``(Y, X)`` integer labels of consecutive slices, in z order.
    iou_threshold
        Least IoU for an object to continue one on the slice before.
    link
        False: unique ids per slice object, no linking (2D stacks).
    next_id
        The first id to hand out.

    Yields
    ------
    numpy.ndarray
        ``(Y, X)`` uint32 labels of each slice.
    """
    linker = SliceLinker(iou_threshold, link=link, next_id=next_id)
    for local in slices:
        yield linker.add(local)
