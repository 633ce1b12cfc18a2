"""How labels live on disk: OME-Zarr (NGFF 0.5, zarr v3) label images, their pyramid, colours.

A label image is a zarr group ``<root>/labels/<name>`` whose ``attributes["ome"]`` hold
``multiscales`` (axes z, y, x) and ``image-label``; its datasets ``0``, ``1``, ... are uint32
arrays. Beside an image the label image has as many levels as the image (NGFF requires it),
each sampled from level 0 by nearest neighbour at the image's scale factors, so labels and
image line up at every level. Writes go chunk by chunk and skip chunks whose content does
not change, so committing an object rewrites only the chunks it touches. Every chunk ends
in a CRC-32C checksum; a damaged chunk is named when read (:mod:`~napari_segany.damage`).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
import zarr.storage

from .. import damage
from ..ome import read_multiscale

__all__ = [
    "AXES",
    "DTYPE",
    "NGFF_VERSION",
    "Box",
    "ImageGeometry",
    "Level",
    "check_coarse_levels",
    "color",
    "create_label_group",
    "image_geometry",
    "json_attributes",
    "open_levels",
    "read_labels",
    "remove_partial_writes",
    "sample_index",
    "set_colors",
    "write_region",
]

NGFF_VERSION = "0.5"
AXES = ("z", "y", "x")
DTYPE = np.dtype(np.uint32)

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
"""A region of the volume: ``((z0, z1), (y0, y1), (x0, x1))``, stops exclusive."""

# Called after every chunk write. Tests set it to stop a child process between two chunk
# writes of one commit, so that a kill lands mid-commit deterministically.
_after_chunk_write: Callable[[], None] | None = None


@dataclass(frozen=True)
class ImageGeometry:
    """What labels beside an image copy from it: level shapes and spatial metadata (z, y, x)."""

    shapes: list[tuple[int, int, int]]
    transforms: list[list[dict[str, Any]]]
    global_transforms: list[dict[str, Any]] | None
    axes: list[dict[str, Any]]


@dataclass(frozen=True)
class Level:
    """One pyramid level of a label image: its array and its scale factors from level 0."""

    array: zarr.Array
    factors: tuple[float, float, float]

    def sources(self, box: Box) -> tuple[list[tuple[int, int]], list[np.ndarray]] | None:
        """This level's voxels sampled from inside ``box`` of level 0, or None if there are none.

        Returns the level's region (start, stop per axis) and, per axis, the level-0
        coordinates its voxels are sampled from, relative to the box's start.
        """
        region, offsets = [], []
        for (b0, b1), f, n in zip(box, self.factors, self.array.shape, strict=True):
            first = max(0, math.ceil(b0 / f) - 1)
            index = np.arange(first, min(n, math.ceil(b1 / f) + 1))
            source = sample_index(index, f)
            inside = index[(source >= b0) & (source < b1)]
            if inside.size == 0:
                return None
            region.append((int(inside[0]), int(inside[-1]) + 1))
            offsets.append(sample_index(inside, f) - b0)
        return region, offsets


def sample_index(index: np.ndarray, factor: float) -> np.ndarray:
    """Level-0 coordinate a coarser level's voxel takes its label from (nearest: no new ids)."""
    return np.floor(index * factor + 1e-9).astype(np.int64)


def json_attributes(group: zarr.Group) -> dict[str, Any]:
    """A copy of ``group``'s attributes: JSON, shaped as NGFF (or this package) says."""
    return group.attrs.asdict()


def image_geometry(image: Path) -> tuple[ImageGeometry, zarr.Group]:
    """Read the pyramid of the OME-Zarr image at ``image`` (NGFF 0.4 or 0.5)."""
    if not image.is_dir():
        raise FileNotFoundError(f"image={str(image)!r}: no such OME-Zarr directory")
    try:
        group = zarr.open_group(zarr.storage.LocalStore(image, read_only=True), mode="r")
    except (FileNotFoundError, ValueError, zarr.errors.GroupNotFoundError) as error:
        raise ValueError(f"image={str(image)!r} is not a zarr group: {error}") from None
    multiscale = read_multiscale(json_attributes(group), f"image={str(image)!r}")
    if multiscale is None:
        raise ValueError(f"image={str(image)!r} is not an OME-Zarr image (no multiscales)")
    names = list(multiscale.names)
    if "y" not in names or "x" not in names:
        raise ValueError(
            f"image={str(image)!r} has axes {names}: labels need an image with y and x axes"
        )
    keep = [names.index(a) if a in names else None for a in AXES]
    units = [None if i is None else multiscale.axes[i].unit for i in keep]
    axes = [
        {"name": a, "type": "space"} | ({"unit": unit} if unit is not None else {})
        for a, unit in zip(AXES, units, strict=True)
    ]
    shapes: list[tuple[int, int, int]] = []
    transforms = []
    for dataset in multiscale.datasets:
        level = group[dataset.path]
        if not isinstance(level, zarr.Array):
            raise ValueError(
                f"image={str(image)!r}: its dataset {dataset.path!r} is not a zarr array"
            )
        z, y, x = (1 if i is None else int(level.shape[i]) for i in keep)
        shapes.append((z, y, x))
        transforms.append(_spatial(dataset.scale, dataset.translation, keep))
    overall = _spatial(multiscale.scale, multiscale.translation, keep) or None
    return ImageGeometry(shapes, transforms, overall, axes), group


def _spatial(
    scale: Sequence[float] | None, translation: Sequence[float] | None, keep: list[int | None]
) -> list[dict[str, Any]]:
    """The z, y, x part of a scale and a translation (z of a 2D image: 1 and 0)."""
    out: list[dict[str, Any]] = []
    for kind, values, fill in (("scale", scale, 1.0), ("translation", translation, 0.0)):
        if values is not None:
            out.append({"type": kind, kind: [fill if i is None else values[i] for i in keep]})
    return out


def create_label_group(
    root: zarr.Group,
    name: str,
    shape: tuple[int, int, int],
    chunks: tuple[int, int, int],
    *,
    geometry: ImageGeometry | None,
    source: str | None,
) -> zarr.Group:
    """Write ``<root>/labels/<name>`` with empty levels, and list it in ``labels``."""
    labels = root.require_group("labels")
    ome = dict(json_attributes(labels).get("ome") or {})
    listed = [n for n in ome.get("labels", []) if n != name]
    labels.attrs["ome"] = {**ome, "version": NGFF_VERSION, "labels": [*listed, name]}
    group = labels.create_group(name)
    if geometry is None:
        shapes = [shape]
        transforms = [[{"type": "scale", "scale": [1.0, 1.0, 1.0]}]]
        axes = [{"name": a, "type": "space"} for a in AXES]
    else:
        shapes, transforms, axes = geometry.shapes, geometry.transforms, geometry.axes
    datasets = []
    for n, (level_shape, transform) in enumerate(zip(shapes, transforms, strict=True)):
        group.create_array(
            str(n),
            shape=level_shape,
            dtype=DTYPE,
            chunks=tuple(min(c, s) for c, s in zip(chunks, level_shape, strict=True)),
            compressors=damage.default_compressors(),  # zarr's default, then a checksum
            fill_value=0,
            dimension_names=list(AXES),
        )
        datasets.append({"path": str(n), "coordinateTransformations": transform})
    multiscale: dict[str, Any] = {"name": name, "axes": axes, "datasets": datasets}
    if geometry is not None and geometry.global_transforms:
        multiscale["coordinateTransformations"] = geometry.global_transforms
    image_label: dict[str, Any] = {"version": NGFF_VERSION, "colors": []}
    if source is not None:
        image_label["source"] = {"image": source}
    group.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": [multiscale],
        "image-label": image_label,
    }
    return group


def open_levels(group: zarr.Group, where: str) -> list[Level]:
    """The levels of the label image ``group``, checked to be (z, y, x) integer arrays."""
    multiscale = read_multiscale(json_attributes(group), where)
    if multiscale is None or not multiscale.nested:
        raise ValueError(f"{where} is not an OME-Zarr 0.5 label image (no ome.multiscales)")
    names = list(multiscale.names)
    if names != list(AXES):
        raise ValueError(f"{where} has axes {names}; LabelsStore handles (z, y, x) labels")
    levels: list[Level] = []
    base: Sequence[float] | None = None
    for dataset in multiscale.datasets:
        array = group[dataset.path]
        if not isinstance(array, zarr.Array) or array.dtype.kind not in "iu":
            raise ValueError(f"{where}/{dataset.path} is not an integer array")
        scale = dataset.scale or (1.0, 1.0, 1.0)
        base = base or scale
        fz, fy, fx = (_factor(s / b) for s, b in zip(scale, base, strict=True))
        levels.append(Level(array, (fz, fy, fx)))
    return levels


def _factor(ratio: float) -> float:
    # Scales like 0.65 * 2 are stored as 1.3000000000000003: snap to the integer meant.
    return float(round(ratio)) if abs(ratio - round(ratio)) < 1e-6 else ratio


def write_region(levels: Sequence[Level], box: Box, new: np.ndarray, old: np.ndarray) -> int:
    """Make ``box`` of level 0 hold ``new`` (it now holds ``old``) and follow in coarser levels.

    Returns the number of chunks written.
    """
    written = _write_changed(levels[0].array, [b[0] for b in box], new, old)
    for level in levels[1:]:
        sampled = level.sources(box)
        if sampled is None:
            continue
        region, offsets = sampled
        values = new[np.ix_(*offsets)]
        current = read_labels(level.array, tuple(slice(a, b) for a, b in region))
        written += _write_changed(level.array, [a for a, _ in region], values, current)
    return written


def read_labels(array: zarr.Array, selection: Any) -> np.ndarray:
    """``array[selection]`` of a label image; a damaged chunk is named (DamagedChunkError)."""
    root = damage.store_of(array)
    hint = f"`napari-segany check --repair {root}` rebuilds it from the store's journal"
    return np.asarray(damage.read(array, selection, store=root, hint=hint))


def check_coarse_levels(levels: Sequence[Level], box: Box) -> None:
    """Read ``box`` at every level but the first, so that a damaged chunk stops a change
    before it begins (callers read level 0's box themselves: it is what they change)."""
    for level in levels[1:]:
        sampled = level.sources(box)
        if sampled is not None:
            read_labels(level.array, tuple(slice(a, b) for a, b in sampled[0]))


def _write_changed(
    array: zarr.Array, start: Sequence[int], new: np.ndarray, old: np.ndarray
) -> int:
    """Write ``new`` at ``start``, skipping chunks that would not change.

    Chunks are written a slab (one chunk deep in z) at a time, in one call when every chunk
    of the slab changes (zarr then writes them concurrently), else one by one.
    """
    written = 0
    ranges = []
    for s, n, c in zip(start, new.shape, array.chunks, strict=True):
        first, last = s // c, (s + n - 1) // c
        ranges.append([(max(s, k * c), min(s + n, (k + 1) * c)) for k in range(first, last + 1)])
    for zrange in ranges[0]:
        cells = [(zrange, *rest) for rest in product(*ranges[1:])]
        changed = [cell for cell in cells if not _same(cell, start, new, old)]
        calls = changed
        if len(cells) > 1 and len(changed) == len(cells):
            calls = [(zrange, _span(ranges[1]), _span(ranges[2]))]
        for cell in calls:
            array[tuple(slice(a, b) for a, b in cell)] = new[_local(cell, start)]
            if _after_chunk_write is not None:
                _after_chunk_write()
        written += len(changed)
    return written


def _span(pieces: list[tuple[int, int]]) -> tuple[int, int]:
    return pieces[0][0], pieces[-1][1]


def _local(cell: Sequence[tuple[int, int]], start: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(a - s, b - s) for (a, b), s in zip(cell, start, strict=True))


def _same(
    cell: Sequence[tuple[int, int]], start: Sequence[int], new: np.ndarray, old: np.ndarray
) -> bool:
    local = _local(cell, start)
    return np.array_equal(new[local], old[local])


def remove_partial_writes(levels: Sequence[Level], box: Box) -> None:
    """Delete temporary files a killed chunk write left in the chunk folders of ``box``."""
    for level in levels:
        sampled = level.sources(box)
        if sampled is None:
            continue
        region = sampled[0]
        root = _array_dir(level.array)
        if root is None:
            continue
        (z0, z1), (y0, y1), _ = region
        cz, cy, _ = level.array.chunks
        for zc, yc in product(
            range(z0 // cz, (z1 - 1) // cz + 1), range(y0 // cy, (y1 - 1) // cy + 1)
        ):
            for leftover in (root / "c" / str(zc) / str(yc)).glob("*.partial"):
                leftover.unlink(missing_ok=True)


def _array_dir(array: zarr.Array) -> Path | None:
    store = array.store
    if isinstance(store, zarr.storage.LocalStore):
        return Path(store.root) / array.path
    return None


def color(label_id: int) -> list[int]:
    """A distinct, stable colour per id: hues spaced by the golden ratio, never dark."""
    hue = (label_id * 0.618033988749895) % 1.0
    saturation = 0.55 + 0.35 * ((label_id * 0.37) % 1.0)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, 0.95)
    return [round(r * 255), round(g * 255), round(b * 255), 255]


def set_colors(group: zarr.Group, live: Iterable[int], managed: set[int]) -> None:
    """List a colour for every live id; entries for ids this store never wrote are kept."""
    ome = dict(json_attributes(group)["ome"])
    image_label = dict(ome.get("image-label") or {})
    kept = [c for c in image_label.get("colors", []) if c.get("label-value") not in managed]
    ours = [{"label-value": int(i), "rgba": color(int(i))} for i in sorted(live)]
    if image_label.get("colors") == kept + ours:
        return
    image_label["colors"] = kept + ours
    ome["image-label"] = image_label
    group.attrs["ome"] = ome
