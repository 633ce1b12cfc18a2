"""Labels from a whole array: written aside a band of chunks at a time, then moved into place.

:meth:`LabelsStore.from_array` builds the complete labels in a hidden folder beside their
destination (``.<name>.<token>.partial``), reading the array one band of chunks (one chunk
deep in z and y, the whole width in x) at a time, so arrays larger than memory work. Nothing
at the destination changes until the new labels are complete: a value that is not a label
(negative, too large), an error of the array's own, or a killed process leaves what was there
as it was (and at most the hidden folder). Then the labels they replace are renamed aside,
the new ones renamed in, and the old ones deleted.
"""

from __future__ import annotations

import math
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.storage

from ..staging import remove_leftovers, staging_path
from .files import (
    SIDECAR,
    check_replaceable_labels,
    check_replaceable_store,
    check_shape,
    make_labels,
)
from .journal import Journal
from .layout import (
    DTYPE,
    NGFF_VERSION,
    Box,
    Level,
    create_label_group,
    image_geometry,
    json_attributes,
    open_levels,
    write_region,
)

__all__ = [
    "MAX_ID",
    "check_dtype",
    "fill_levels",
    "import_labels",
    "spatial_transforms",
]

MAX_ID = int(np.iinfo(DTYPE).max)


def import_labels(
    path: Path,
    data: Any,
    *,
    name: str,
    chunks: tuple[int, int, int],
    image: Path | None,
    scale: Sequence[float] | None,
    translation: Sequence[float] | None,
    overwrite: bool,
) -> None:
    """Write ``data`` as labels at ``path`` as :meth:`LabelsStore.from_array` describes."""
    shape = check_shape(getattr(data, "shape", ()))
    check_dtype(data)
    transforms = spatial_transforms(scale, translation)
    if transforms is not None and image is not None:
        raise ValueError("scale and translation come from the image when image= is given")
    inside = image is not None and path.exists() and path.resolve() == image.resolve()
    if inside:
        label_dir = path / "labels" / name
        what = f"labels {name!r} in {str(path)!r}"
        check_replaceable_labels(label_dir, overwrite, what=what)
    elif path.exists() and (not path.is_dir() or any(path.iterdir())):
        check_replaceable_store(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    staging = staging_path(path)
    try:
        if inside:
            assert image is not None
            group = _image_label_group(staging, image, shape, name=name, chunks=chunks)
        else:
            _, group = make_labels(
                staging, shape, name=name, chunks=chunks, image=image, overwrite=False
            )
            if transforms is not None:
                _set_transforms(group, transforms)
        built = staging / "labels" / name
        ids = fill_levels(open_levels(group, str(built)), data, shape)
        Journal(built / SIDECAR).start(existing_ids=sorted(ids))
        if inside:
            _move_label_image(built, path, name, overwrite=overwrite)
        else:
            _move_store(staging, path, overwrite=overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_dtype(data: Any) -> None:
    """Refuse arrays whose type cannot hold label ids (floats, complex, strings...)."""
    dtype = np.dtype(getattr(data, "dtype", None))
    if dtype.kind not in "biu":
        raise TypeError(
            f"labels must be integers (or booleans), got {dtype} data; round and cast it to "
            "an integer type first"
        )


def spatial_transforms(
    scale: Sequence[float] | None, translation: Sequence[float] | None
) -> list[dict[str, Any]] | None:
    """NGFF scale (and translation) transforms for (z, y, x); a 2D pair gets z 1 (or 0)."""
    if scale is None and translation is None:
        return None
    values = _zyx(scale, 1.0, "scale")
    if not all(v > 0 for v in values):
        raise ValueError(f"scale must be positive, got {scale!r}")
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": values}]
    offset = _zyx(translation, 0.0, "translation")
    if any(offset):
        transforms.append({"type": "translation", "translation": offset})
    return transforms


def _zyx(values: Sequence[float] | None, fill: float, what: str) -> list[float]:
    if values is None:
        return [fill] * 3
    out = [float(v) for v in values]
    if len(out) == 2:
        out = [fill, *out]
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} must be 2 or 3 finite numbers (z, y, x), got {values!r}")
    return out


def fill_levels(levels: list[Level], data: Any, shape: tuple[int, int, int]) -> set[int]:
    """Write ``data`` into the empty ``levels``, a band of chunks at a time; the ids found.

    Raises ValueError at the first band holding a negative id or one above ``2**32 - 1``.
    """
    nz, ny, nx = shape
    cz, cy, _ = levels[0].array.chunks
    ids: set[int] = set()
    for z0 in range(0, nz, cz):
        for y0 in range(0, ny, cy):
            box: Box = ((z0, min(z0 + cz, nz)), (y0, min(y0 + cy, ny)), (0, nx))
            band = _checked(_read_band(data, box), box)
            # Empty arrays read as zeros: chunks of background are not written at all.
            write_region(levels, box, band, np.zeros_like(band))
            ids.update(int(i) for i in np.unique(band[band != 0]))
    return ids


def _read_band(data: Any, box: Box) -> np.ndarray:
    (z0, z1), (y0, y1), _ = box
    part = data[y0:y1] if data.ndim == 2 else data[z0:z1, y0:y1]
    if hasattr(part, "compute"):
        part = part.compute()
    part = np.asarray(part)
    return part[np.newaxis] if data.ndim == 2 else part


def _checked(band: np.ndarray, box: Box) -> np.ndarray:
    if band.size and band.dtype.kind in "iu":
        low, high = band.min(), band.max()
        where = f"in z {box[0][0]}..{box[0][1] - 1}, y {box[1][0]}..{box[1][1] - 1}"
        if low < 0:
            raise ValueError(f"labels must not be negative: found {low} ({where})")
        if high > MAX_ID:
            raise ValueError(f"label ids must be at most {MAX_ID} (uint32): found {high} ({where})")
    return band.astype(DTYPE, copy=False)


def _set_transforms(group: zarr.Group, transforms: list[dict[str, Any]]) -> None:
    ome = dict(json_attributes(group)["ome"])
    (multiscale,) = ome["multiscales"]
    (dataset,) = multiscale["datasets"]
    dataset["coordinateTransformations"] = transforms
    group.attrs["ome"] = ome


def _image_label_group(
    staging: Path,
    image: Path,
    shape: tuple[int, int, int],
    *,
    name: str,
    chunks: tuple[int, int, int],
) -> zarr.Group:
    """A label image for inside ``image`` (its pyramid), built in a root of its own."""
    geometry, image_group = image_geometry(image)
    if image_group.metadata.zarr_format != 3:
        raise ValueError(
            f"{str(image)!r} is OME-Zarr 0.4 (zarr v2): NGFF 0.5 labels cannot go inside it; "
            "give another path for a separate labels store"
        )
    if geometry.shapes[0] != shape:
        raise ValueError(
            f"shape {shape} does not match the image's (z, y, x) size {geometry.shapes[0]} "
            f"({str(image)!r})"
        )
    root = zarr.open_group(zarr.storage.LocalStore(staging), mode="w", zarr_format=3)
    root.attrs["ome"] = {"version": NGFF_VERSION}
    return create_label_group(root, name, shape, chunks, geometry=geometry, source="../../")


def _move_store(staging: Path, path: Path, *, overwrite: bool) -> None:
    """Put the complete store ``staging`` at ``path``, replacing what is there if allowed."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        check_replaceable_store(path, overwrite)  # again: a writer may have come meanwhile
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.replaced")
        path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(path)  # onto nothing, or an empty folder


def _move_label_image(built: Path, root: Path, name: str, *, overwrite: bool) -> None:
    """Put the label image ``built`` at ``root/labels/name`` and list it in ``labels``."""
    label_dir = root / "labels" / name
    image = zarr.open_group(zarr.storage.LocalStore(root), mode="r+")
    labels = image.require_group("labels")
    old = None
    if check_replaceable_labels(label_dir, overwrite, what=f"labels {name!r} in {str(root)!r}"):
        old = root.parent / f".{root.name}.{name}.{uuid.uuid4().hex[:12]}.replaced"
        label_dir.rename(old)
    built.rename(label_dir)
    ome = dict(json_attributes(labels).get("ome") or {})
    listed = list(ome.get("labels", []))
    if name not in listed or ome.get("version") != NGFF_VERSION:
        names = listed if name in listed else [*listed, name]
        labels.attrs["ome"] = {**ome, "version": NGFF_VERSION, "labels": names}
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
