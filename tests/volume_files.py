"""Real image files for tests: TIFF, OME-TIFF, zarr v2/v3 and OME-Zarr (NGFF 0.4 and 0.5).

Each writer puts a real file on disk the way a microscope pipeline or a converter would,
and returns what it wrote so tests can compare reads against it. OME-Zarr is written with
plain zarr, following the NGFF specification (https://ngff.openmicroscopy.org), so the
reader is checked against the spec rather than against one writer's habits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tifffile
import zarr

NGFF_VERSIONS = ("0.4", "0.5")
"""OME-Zarr versions written here: 0.4 lives in zarr v2, 0.5 in zarr v3."""


def ramp(shape: Sequence[int], dtype: npt.DTypeLike = np.uint16, seed: int = 0) -> np.ndarray:
    """Deterministic, varied content (no constant slices), the same for the same seed."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 1000, size=tuple(shape))
    data += np.arange(shape[-1]) * 3
    return data.astype(dtype)


def write_tiff_stack(path: Path, data: np.ndarray, **kwargs) -> Path:
    """A multi-page TIFF: one page per leading index (tifffile reports axes ``QYX``)."""
    tifffile.imwrite(path, data, photometric="minisblack", **kwargs)
    return path


def write_ome_tiff(path: Path, data: np.ndarray, axes: str) -> Path:
    """An OME-TIFF whose OME-XML declares ``axes`` (e.g. ``"TCZYX"``)."""
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata={"axes": axes})
    return path


def write_rgb_tiff(path: Path, data: np.ndarray) -> Path:
    """An RGB(A) TIFF: interleaved samples, ``(..., Y, X, 3 or 4)``."""
    extras = {"extrasamples": ["unassalpha"]} if data.shape[-1] == 4 else {}
    tifffile.imwrite(path, data, photometric="rgb", **extras)
    return path


def write_zarr_array(
    path: Path, data: np.ndarray, *, zarr_format: int, chunks: Sequence[int] | None = None
) -> Path:
    """A bare zarr array (no OME metadata), chunked one slice per chunk by default."""
    if chunks is None:
        chunks = (1,) * (data.ndim - 2) + data.shape[-2:]
    array = zarr.create_array(
        path, shape=data.shape, dtype=data.dtype, chunks=tuple(chunks), zarr_format=zarr_format
    )
    array[...] = data
    return path


def write_ome_zarr(
    path: Path | zarr.abc.store.Store,
    data: np.ndarray,
    *,
    axes: str,
    version: str = "0.5",
    levels: int = 2,
) -> list[np.ndarray]:
    """An OME-Zarr image with a pyramid halving Y and X per level; returns the levels written.

    NGFF 0.4 goes to zarr v2 with ``multiscales`` in ``.zattrs`` and ``/``-separated chunk
    keys; NGFF 0.5 goes to zarr v3 with ``attributes["ome"]`` and ``dimension_names``.
    """
    if version not in NGFF_VERSIONS:
        raise ValueError(f"NGFF version must be one of {NGFF_VERSIONS}, got {version!r}")
    zarr_format = 2 if version == "0.4" else 3
    axes = axes.lower()
    kinds = {"t": "time", "c": "channel"}
    units = {
        "t": {"unit": "second"},
        "z": {"unit": "micrometer"},
        "y": {"unit": "micrometer"},
        "x": {"unit": "micrometer"},
    }
    axes_meta = [{"name": a, "type": kinds.get(a, "space"), **units.get(a, {})} for a in axes]
    pyramid = [data]
    for _ in range(levels - 1):
        index = tuple(slice(None, None, 2) if a in "yx" else slice(None) for a in axes)
        pyramid.append(np.ascontiguousarray(pyramid[-1][index]))
    datasets = []
    group = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    for n, level in enumerate(pyramid):
        scale = [2.0**n if a in "yx" else 1.0 for a in axes]
        datasets.append(
            {"path": str(n), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
        chunks = tuple(1 if a in "tcz" else s for a, s in zip(axes, level.shape, strict=True))
        extra = (
            {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
            if zarr_format == 2
            else {"dimension_names": list(axes)}
        )
        array = group.create_array(
            str(n), shape=level.shape, dtype=level.dtype, chunks=chunks, **extra
        )
        array[...] = level
    multiscale = {"name": "image", "axes": axes_meta, "datasets": datasets}
    if version == "0.4":
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    return pyramid


def write_large_tiff(path: Path, shape: tuple[int, int, int]) -> Path:
    """A uint16 multi-page BigTIFF written one page at a time (contiguous), never whole in memory.

    Page ``z`` is :func:`large_page`.
    """
    base = large_page(0, shape[1:])
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for z in range(shape[0]):
            tif.write(base + np.uint16(z), contiguous=True, photometric="minisblack")
    return path


def write_large_zarr(path: Path, shape: tuple[int, int, int]) -> Path:
    """A uint16 zarr v3 array written one slice at a time (page ``z`` is :func:`large_page`)."""
    half = (shape[1] + 1) // 2, (shape[2] + 1) // 2
    array = zarr.create_array(path, shape=shape, dtype=np.uint16, chunks=(1, *half))
    base = large_page(0, shape[1:])
    for z in range(shape[0]):
        array[z] = base + np.uint16(z)
    return path


def large_page(z: int, shape: Sequence[int]) -> np.ndarray:
    """Page ``z`` of the large files: a diagonal ramp plus ``z`` (uint16, wrapping)."""
    rows = np.arange(shape[0], dtype=np.uint16)[:, None]
    cols = np.arange(shape[1], dtype=np.uint16)[None, :]
    return (rows * np.uint16(3) + cols) + np.uint16(z)
