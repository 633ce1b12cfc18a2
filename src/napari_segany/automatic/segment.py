"""Automatic segmentation: every object of a slice or volume, without prompts.

Per slice, and per tile window of a tiled slice (:mod:`.masks`): point prompts
where nothing is explained yet (:mod:`.plan`: grids coarse to fine, perhaps
seeds from the image) decoded in batches sized by memory, candidates kept by predicted
IoU and stability. Then
duplicates are removed (:mod:`.nms`: box NMS per window, mask NMS across
windows), islands and holes cleaned, and the candidates painted into instance labels,
best first, so that each pixel belongs to at most one object. Through z, slice labels
are linked into 3D objects with volume-wide ids (:mod:`.link`).

The per-slice step (:func:`segment_slice`) and the linking (:class:`SliceLinker`,
:func:`link_slices`) are separate so that slices can be segmented anywhere, in any
order, and linked afterwards in one cheap pass.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from ..object_ends import ends, standout_at
from .link import SliceLinker, link_slices
from .masks import Candidate, SegmentationCancelled, clean_mask, window_candidates
from .nms import box_nms, mask_nms
from .params import AutomaticParams, with_overrides

if TYPE_CHECKING:
    from ..embeddings import EmbeddingStore
    from ..labels.store import LabelsStore
    from ..model import SamModel
    from ..segmenter import Segmenter
    from ..volume.volume import Volume

__all__ = [
    "SegmentationCancelled",
    "SliceLinker",
    "link_slices",
    "segment_automatic",
    "segment_slice",
]

#: A candidate left with less than this fraction of its pixels once better objects are
#: painted mostly duplicates them (e.g. the union of two nuclei): it is dropped.
MIN_KEPT_FRACTION = 0.5


def segment_slice(
    segmenter: Segmenter,
    z: int = 0,
    params: AutomaticParams | None = None,
    *,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """All objects on one slice, as instance labels with slice-local ids.

    Parameters
    ----------
    segmenter
        The volume's segmenter (its store computes a missing embedding on demand when
        it knows the volume).
    z
        The slice.
    params
        Default :class:`AutomaticParams`.
    cancel
        Polled between batches of point prompts.

    Returns
    -------
    numpy.ndarray
        ``(Y, X)`` uint32: 0 background, objects ``1..n`` in order of decreasing
        predicted IoU.

    Raises
    ------
    IndexError
        ``z`` outside the volume.
    SegmentationCancelled
        ``cancel`` returned True.
    """
    params = AutomaticParams() if params is None else params
    if not isinstance(params, AutomaticParams):
        raise TypeError(f"params must be AutomaticParams, got {type(params).__name__}")
    z = _check_slice(z, len(segmenter.store))
    shape = segmenter.slice_shape
    grid = segmenter.store.grid
    volume = segmenter.store.volume
    kept: list[Candidate] = []
    for tile, window in enumerate(grid.windows):
        if cancel is not None and cancel():  # before an embedding is perhaps computed
            raise SegmentationCancelled("automatic segmentation was cancelled")
        image = None
        if params.mode != "grid" and volume is not None:
            image = volume.model_slice(z, window)
        found = window_candidates(
            segmenter.model, segmenter.embedding(z, tile), window, shape, params, cancel, image
        )
        boxes = np.array([c.box for c in found]).reshape(-1, 4)
        order = box_nms(boxes, np.array([c.score for c in found]), params.nms_threshold)
        kept += [found[i] for i in order]
    if grid.tiled:  # the same object found whole in two overlapping windows
        order = mask_nms(
            np.array([c.box for c in kept]).reshape(-1, 4),
            [c.mask for c in kept],
            np.array([c.score for c in kept]),
            params.nms_threshold,
        )
        kept = [kept[i] for i in order]
    return paint(_cleaned(kept, params), shape, params.min_area)


def _cleaned(candidates: list[Candidate], params: AutomaticParams) -> list[Candidate]:
    out = []
    for c in candidates:
        mask = clean_mask(c.mask, params.min_area, params.max_hole_area)
        if np.count_nonzero(mask) >= max(params.min_area, 1):
            out.append(dataclasses.replace(c, mask=mask))
    return out


def paint(candidates: Sequence[Candidate], shape: tuple[int, int], min_area: int = 0) -> np.ndarray:
    """Instance labels from candidates, the best-scored first: each pixel gets at most one id.

    A candidate keeps only the pixels no better one took, less islands smaller than
    ``min_area``; it is dropped when that leaves fewer than ``min_area`` pixels or less
    than :data:`MIN_KEPT_FRACTION` of it.

    Returns
    -------
    numpy.ndarray
        ``(Y, X)`` uint32, ids ``1..n`` in painting order.
    """
    labels = np.zeros(shape, dtype=np.uint32)
    order = np.argsort([-c.score for c in candidates], kind="stable")
    next_id = 1
    for i in order:
        c = candidates[i]
        y0, x0, y1, x1 = c.box
        region = labels[y0:y1, x0:x1]
        taken = c.mask & (region != 0)
        free = c.mask & ~taken
        if min_area > 1 and taken.any():  # what better objects left may be in pieces
            free = clean_mask(free, min_area, 0)
        n_free = int(np.count_nonzero(free))
        if n_free < max(min_area, 1) or n_free < MIN_KEPT_FRACTION * c.area:
            continue
        region[free] = next_id
        next_id += 1
    return labels


def _check_slice(z: object, depth: int) -> int:
    if isinstance(z, bool) or not isinstance(z, int | np.integer):
        raise TypeError(f"z must be an integer slice index, got {z!r}")
    if not -depth <= z < depth:
        raise IndexError(f"slice {z} is outside the volume's {depth} slices (0..{depth - 1})")
    return int(z) % depth


def _slices(z: int | range | Sequence[int] | None, depth: int) -> list[int]:
    if z is None:
        return list(range(depth))
    if isinstance(z, int | np.integer) and not isinstance(z, bool):
        return [_check_slice(z, depth)]
    if isinstance(z, str) or not isinstance(z, range | Sequence | np.ndarray):
        raise TypeError(f"z must be None, a slice index, a range or a list of them, got {z!r}")
    zs = [_check_slice(v, depth) for v in z]
    if not zs:
        raise ValueError("z selects no slice")
    if any(b <= a for a, b in itertools.pairwise(zs)):
        raise ValueError(f"z must list slices in increasing order without repeats, got {list(z)}")
    return zs


def _segmenter(source: Any, model: Any) -> Segmenter:
    """A segmenter from what the user gave: a segmenter; or data and a model (either order)."""
    from ..embeddings import EmbeddingStore, embed
    from ..model import SamModel, load_model
    from ..segmenter import Segmenter
    from ..volume.volume import Volume, open_volume

    data_second = model is not None and not isinstance(model, SamModel | str)
    if isinstance(source, SamModel) or (isinstance(source, str) and data_second):
        source, model = model, source  # (model, data): the order need not be remembered
    if source is None:
        raise ValueError("give the data to segment (a volume, an array, a path or a store)")
    if isinstance(source, Segmenter):
        if model is not None and model is not source.model:
            raise ValueError("give a Segmenter alone, or data and a model, not both")
        return source
    if isinstance(model, str):
        model = load_model(model)
    if isinstance(source, EmbeddingStore):
        model = model if model is not None else source.model
        if model is None:
            raise ValueError("this embedding store was opened without its model: pass model=")
        return Segmenter(model, source)
    if model is None:
        raise ValueError("pass the model (a SamModel or a model name) with the data")
    if not isinstance(model, SamModel):
        raise TypeError(f"model must be a SamModel or a model name, got {type(model).__name__}")
    if not isinstance(source, Volume):
        source = open_volume(source)
    return Segmenter(model, embed(source, model, compute=False, progress=False))


def segment_automatic(
    source: Segmenter | EmbeddingStore | Volume | np.ndarray | str | os.PathLike[str] | SamModel,
    model: SamModel | str | EmbeddingStore | Volume | np.ndarray | None = None,
    *,
    z: int | range | Sequence[int] | None = None,
    params: AutomaticParams | None = None,
    link: bool = True,
    out: LabelsStore | str | os.PathLike[str] | None = None,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **overrides: Any,
) -> np.ndarray | LabelsStore:
    """Segment every object of a volume's slices without prompts.

    Parameters
    ----------
    source
        A :class:`~napari_segany.Segmenter`; or the data (a
        :class:`~napari_segany.Volume`, an array, a path that
        :func:`~napari_segany.open_volume` opens, or an embedding store) with ``model``.
        A volume, array or path is embedded in memory, slice by slice as needed.
    model
        A :class:`~napari_segany.SamModel` or a model name (``"mobile_sam"``). The data
        and the model may come in either order.
    z
        The slices: None (all), an index, or a range or list of indices in increasing
        order.
    params
        :class:`AutomaticParams`; keyword ``overrides`` (e.g. ``points_per_side=16``)
        replace single fields.
    link
        True: objects overlapping on neighbouring slices (IoU at least
        ``params.link_iou``) are one 3D object with one id. False: each slice's objects
        keep ids of their own (2D stacks, time series); ids stay unique across slices.
    out
        None: return the labels as an array. A :class:`~napari_segany.LabelsStore` open
        for writing (the volume's shape), or a path where a new one is created: each
        object is committed as soon as it has ended in z (with the parameters in the
        annotation log), voxels already labelled are kept, and objects get the store's
        next ids.
    progress
        Show a progress bar over slices.
    callback
        Called as ``callback(done, total)`` after each slice.
    cancel
        Polled between batches of point prompts; when it returns True, stop: the slices
        finished so far are kept (and, with ``out``, committed), the rest stay 0.

    Returns
    -------
    numpy.ndarray or LabelsStore
        Without ``out``: uint32 ``(Z, Y, X)`` over the chosen slices (``(Y, X)`` when ``z``
        is an index), 0 background, ids ``1..n`` unique over the volume. With ``out``: the
        labels store (for a path, closed: readable, and free for others to open).

    Raises
    ------
    IndexError
        A slice outside the volume.
    ValueError, TypeError
        Bad parameters, an empty or unordered z, an output of the wrong shape, a
        segmenter given together with a model.
    """
    params = with_overrides(params, overrides)
    segmenter = _segmenter(source, model)
    depth = len(segmenter.store)
    zs = _slices(z, depth)
    shape = (depth, *segmenter.slice_shape)
    store, created = _output(out, shape)
    volume = segmenter.store.volume
    trims = link and params.min_signal_ratio > 0 and volume is not None
    image_at = volume.model_slice if trims and volume is not None else None
    writer = None
    if store is not None:
        from .write import StoreWriter

        record = {
            "method": "automatic",
            "model": {"name": segmenter.model.name, "sha256": segmenter.model.sha256},
            "params": params.to_dict(),
            "link": link,
        }
        writer = StoreWriter(
            store, record, image_at=image_at, min_signal_ratio=params.min_signal_ratio
        )
    result = None if store is not None else np.zeros((len(zs), *shape[1:]), dtype=np.uint32)
    linker = SliceLinker(params.link_iou, link=link)
    bar = tqdm(total=len(zs), desc="automatic segmentation", unit="slice", disable=not progress)
    try:
        for i, zi in enumerate(zs):
            try:
                local = segment_slice(segmenter, zi, params, cancel=cancel)
            except SegmentationCancelled:
                break  # the slice in progress is left out; the finished ones stay
            labels = linker.add(local, zi)
            if writer is not None:
                writer.add(zi, labels)
            else:
                assert result is not None  # no store, no writer: the labels are returned
                result[i] = labels
            bar.update(1)
            if callback is not None:
                callback(i + 1, len(zs))
            if cancel is not None and cancel():
                break
    finally:
        bar.close()
        try:
            if writer is not None:
                writer.finish()  # also after an error: the slices done so far are kept
        finally:
            if created and store is not None:
                store.close()
    if store is not None:
        return store
    assert result is not None
    if image_at is not None:
        _trim_ends(result, zs, image_at, params.min_signal_ratio)
    return result[0] if isinstance(z, int | np.integer) else result


def _trim_ends(
    labels: np.ndarray,
    zs: Sequence[int],
    image_at: Callable[[int], np.ndarray],
    min_ratio: float,
) -> None:
    """Drop, in place, each linked object's slices beyond its ends in z.

    ``labels[i]`` is slice ``zs[i]``; an object's slices are consecutive (linking
    continues only from the slice directly before).
    """
    for label, where in enumerate(ndimage.find_objects(labels), start=1):
        if where is None or where[0].stop - where[0].start < 2:
            continue
        rows, ys, xs = where
        measures = []
        for i in range(rows.start, rows.stop):
            crop = labels[i, ys, xs] == label
            measures.append(standout_at(image_at(zs[i]), ys.start, xs.start, crop))
        first, stop = ends(measures, min_ratio)
        for i in [*range(rows.start, rows.start + first), *range(rows.start + stop, rows.stop)]:
            labels[i, ys, xs][labels[i, ys, xs] == label] = 0


def _output(
    out: LabelsStore | str | os.PathLike[str] | None, shape: tuple[int, int, int]
) -> tuple[LabelsStore | None, bool]:
    """The labels store to write (and whether it was made here), or None for an array."""
    if out is None:
        return None, False
    from ..labels.store import LabelsStore

    if isinstance(out, LabelsStore):
        if out.shape != shape:
            raise ValueError(f"the labels store has shape {out.shape}, the volume is {shape}")
        if out.read_only:
            raise PermissionError(f"the labels store at {str(out.path)!r} is open read-only")
        return out, False
    if isinstance(out, str | os.PathLike):
        return LabelsStore.create(Path(out), shape), True
    raise TypeError(f"out must be None, a LabelsStore or a path, got {type(out).__name__}")
