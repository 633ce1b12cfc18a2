"""napari writer: a Labels layer saved as OME-Zarr (NGFF 0.5) labels, via :class:`LabelsStore`.

Where the labels go:

- a layer linked to a labels store at the path it is saved to (its
  ``metadata["napari_segany"]`` names ``labels_store`` and ``labels_name``, as the reader
  sets them) is written into that label image, inside its OME-Zarr image or its store: the
  image and other label images are not touched. When the layer holds what the store holds
  already (a layer opened from the store, or kept in step with its commits), nothing is
  written;
- otherwise ``path`` becomes a labels store of its own (one label image, ``segany``) with
  the layer's scale and translation. An existing path is replaced only if it is such a
  store, made by napari-segany and holding nothing else; anything else is refused.

Data is read and written a band of chunks at a time (dask and zarr layers larger than
memory work) and built beside ``path`` before it replaces anything (see
:mod:`napari_segany.labels.from_array`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
import zarr.storage

from ..labels.files import SIDECAR, check_shape
from ..labels.from_array import check_dtype
from ..labels.store import LabelsStore
from .reader import METADATA_KEY

__all__ = ["write_labels"]

DEFAULT_NAME = "segany"
DEFAULT_CHUNKS = (1, 256, 256)


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer's data as OME-Zarr labels at ``path`` (npe2 writer).

    Parameters
    ----------
    path
        The OME-Zarr to write (``.zarr`` or ``.ome.zarr``).
    data
        The layer's data: a ``(Z, Y, X)`` or ``(Y, X)`` integer array (numpy, dask, zarr),
        or a multiscale list of them, largest first (level 0 is written).
    meta
        The layer's attributes; ``scale``, ``translate`` and ``metadata`` are used.

    Returns
    -------
    list of str
        ``[path]``.

    Raises
    ------
    FileExistsError
        ``path`` exists and is not a napari-segany labels store, nor the store the layer is
        linked to.
    TypeError
        The data is not integer (or bool).
    ValueError
        Negative ids, ids above ``2**32 - 1``, or data that is not 2D or 3D.
    StoreLockedError
        The labels are open for writing elsewhere (e.g. by the Segment Anything widget).
    """
    target = Path(path).expanduser().absolute()
    array = _level0(data)
    if getattr(array, "ndim", 0) not in (2, 3):
        raise ValueError(
            f"OME-Zarr labels are (Z, Y, X) or (Y, X): got {getattr(array, 'ndim', 0)}D data "
            f"of shape {tuple(getattr(array, 'shape', ()))}"
        )
    check_dtype(array)
    scale = _spatial(meta.get("scale"), array.ndim)
    translation = _spatial(meta.get("translate"), array.ndim)
    link = _link(meta, target)
    if link is not None:
        name, image = link
        if _holds(target, name, array):
            return [path]
        chunks = _chunks(target / "labels" / name)
        if image is not None and _same_path(image, target):
            # Labels inside their image: only this label image is replaced.
            store = LabelsStore.from_array(
                target, array, name=name, chunks=chunks, image=image, overwrite=True
            )
        else:
            _check_replaceable(target, only=name)
            store = LabelsStore.from_array(
                target,
                array,
                name=name,
                chunks=chunks,
                image=image,
                scale=None if image is not None else scale,
                translation=None if image is not None else translation,
                overwrite=True,
            )
    else:
        exists = target.exists() and (not target.is_dir() or any(target.iterdir()))
        if exists:
            _check_replaceable(target, only=None)
        store = LabelsStore.from_array(
            target,
            array,
            name=DEFAULT_NAME,
            scale=scale,
            translation=translation,
            overwrite=exists,
        )
    store.close()
    return [path]


def _check_replaceable(path: Path, *, only: str | None) -> None:
    """Refuse to replace ``path`` unless it is our labels store (holding only ``only``)."""
    if not is_labels_store(path):
        raise FileExistsError(
            f"{str(path)!r} exists and is not a napari-segany labels store: not replacing "
            "it; choose a new path"
        )
    names = (_attributes(path / "labels") or {}).get("labels")
    if only is not None and names != [only]:
        raise FileExistsError(
            f"{str(path)!r} holds other label images besides {only!r} ({names}): saving "
            "would replace them all; choose a new path"
        )


def is_labels_store(path: Path) -> bool:
    """Whether ``path`` is a labels store of its own made by napari-segany, holding only that.

    Its root group has no image, its folder only ``zarr.json`` and ``labels``, which holds
    only the label images it lists, each with napari-segany's journal.
    """
    root, labels = _attributes(path), _attributes(path / "labels")
    if root is None or labels is None or "multiscales" in root:
        return False
    names = labels.get("labels")
    if not isinstance(names, list) or not names:
        return False
    if {p.name for p in path.iterdir()} != {"zarr.json", "labels"}:
        return False
    if {p.name for p in (path / "labels").iterdir()} != {"zarr.json", *names}:
        return False
    return all((path / "labels" / n / SIDECAR / "journal.jsonl").is_file() for n in names)


def _attributes(path: Path) -> dict[str, Any] | None:
    """The NGFF 0.5 ``ome`` attributes of the zarr v3 group at ``path``, or None."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    ome = (meta.get("attributes") or {}).get("ome")
    return ome if isinstance(ome, dict) else None


def _level0(data: Any) -> Any:
    """Level 0 of a multiscale layer's data, or the data itself."""
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) > 0:
        first = data[0]
        if hasattr(first, "shape") and hasattr(first, "dtype"):
            return first
    return data


def _link(meta: dict[str, Any], target: Path) -> tuple[str, Path | None] | None:
    """The label image name and image of the store the layer is linked to at ``target``."""
    info = (meta.get("metadata") or {}).get(METADATA_KEY)
    if not isinstance(info, dict):
        return None
    store, name = info.get("labels_store"), info.get("labels_name")
    if not isinstance(store, (str, os.PathLike)) or not isinstance(name, str):
        return None
    if not target.exists() or not _same_path(Path(store), target):
        return None
    if not (target / "labels" / name / "zarr.json").is_file():
        return None
    image = info.get("image")
    image_path = Path(image) if isinstance(image, (str, os.PathLike)) else None
    if image_path is not None and not image_path.is_dir():
        image_path = None
    return name, image_path


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.expanduser().resolve() == b.resolve()
    except OSError:
        return False


def _holds(root: Path, name: str, array: Any) -> bool:
    """Whether the labels ``root/labels/name`` hold ``array`` already (compared by bands)."""
    try:
        store = LabelsStore.open(root, name=name, read_only=True)
    except (FileNotFoundError, ValueError):
        return False
    try:
        if store.shape != check_shape(array.shape):
            return False
        nz, ny, _ = store.shape
        cz, cy, _ = store.chunks
        for z0 in range(0, nz, cz):
            for y0 in range(0, ny, cy):
                zs, ys = slice(z0, z0 + cz), slice(y0, y0 + cy)
                part = array[ys] if array.ndim == 2 else array[zs, ys]
                part = np.asarray(part.compute() if hasattr(part, "compute") else part)
                if array.ndim == 2:
                    part = part[np.newaxis]
                if not np.array_equal(store.read_region(zs, ys, slice(None)), part):
                    return False
        return True
    finally:
        store.close()


def _chunks(label_dir: Path) -> tuple[int, ...]:
    """The chunks of the labels being replaced (their level 0), kept for the new ones."""
    try:
        chunks = tuple(zarr.open_array(zarr.storage.LocalStore(label_dir / "0"), mode="r").chunks)
    except (OSError, ValueError, LookupError, zarr.errors.BaseZarrError):
        chunks = ()
    return chunks if len(chunks) == 3 else DEFAULT_CHUNKS


def _spatial(values: Any, ndim: int) -> list[float] | None:
    """The last ``ndim`` entries of a layer's scale or translate (those of the labels)."""
    if values is None:
        return None
    values = [float(v) for v in np.asarray(values, dtype=float).ravel()]
    return values[-ndim:] if len(values) >= ndim else None
