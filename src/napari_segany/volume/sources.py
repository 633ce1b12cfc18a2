"""Where a volume's pixels come from: arrays, zarr stores, OME-Zarr and TIFF files, opened lazily.

Each source becomes a :class:`RawSource`: an array-like that reads only what it is indexed
with (numpy, dask, zarr, or tifffile's zarr store over a TIFF file), the axes its metadata
declare, and a way to close the file behind it. Nothing here reads pixel data.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.storage
from zarr.abc.store import Store

from ..argument_errors import ArgumentError, Setting
from ..ome import Multiscale, ome_attributes, read_multiscale
from .axes import tiff_axes

if TYPE_CHECKING:
    import tifffile

__all__ = [
    "TIFF_SUFFIXES",
    "RawSource",
    "open_source",
    "open_tiff",
    "read",
]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_ZARR_METADATA = (".zarray", ".zgroup", "zarr.json")


@dataclass
class RawSource:
    """An opened source, one pyramid level chosen, before its axes are interpreted.

    Attributes
    ----------
    array
        Array-like with ``shape``, ``dtype`` and ``__getitem__`` over ints and slices
        (steps included) that reads only the indexed part.
    description
        What the user opened, for messages: the path, or e.g. ``numpy array (4, 5) uint8``.
    axes
        Axes declared by metadata in T/C/Z/Y/X letters (``?`` for a name we do not know),
        or None when the source declares none.
    axes_origin
        Where ``axes`` came from, for messages.
    rgba
        A C axis of size 4 holds RGBA samples (TIFF samples per pixel).
    close
        Releases file handles; safe to call twice.
    """

    array: Any
    description: str
    axes: str | None = None
    axes_origin: str = ""
    rgba: bool = False
    close: Callable[[], None] = field(default=lambda: None)


def read(array: Any, index: tuple[int | slice, ...]) -> np.ndarray:
    """Read ``array[index]`` into memory (dask and xarray results are computed)."""
    part = array[index]
    if hasattr(part, "compute"):
        part = part.compute()
    return np.asarray(part)


def open_source(source: Any, *, level: int = 0) -> RawSource:
    """Open ``source`` without reading pixels.

    Parameters
    ----------
    source
        A path (TIFF file, zarr or OME-Zarr directory), a zarr array, group or store, a
        numpy or dask array (or any array-like with ``shape``, ``dtype`` and slicing), or a
        list of such arrays forming a multiscale pyramid, largest first (as napari holds).
    level
        Pyramid level; 0 is full resolution.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        Unsupported file type, a zarr group that does not say which array to use, or a
        level out of range.
    TypeError
        A source of a kind we cannot read.
    """
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
        raise ValueError(
            f"level must be a non-negative integer (0 = full resolution), got {level!r}"
        )
    level = int(level)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), level)
    if isinstance(source, (zarr.Array, zarr.Group)):
        return _open_zarr_node(source, level, _zarr_where(source))
    if isinstance(source, Store):
        return _open_zarr_node(zarr.open(source, mode="r"), level, type(source).__name__)
    if isinstance(source, np.ndarray):
        _check_level(level, 1, _describe_array(source))
        return RawSource(source, _describe_array(source))
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)) and source:
        return _open_pyramid(list(source), level)
    if _is_array_like(source):
        _check_level(level, 1, _describe_array(source))
        return RawSource(source, _describe_array(source))
    raise TypeError(
        f"cannot open a {type(source).__name__} as a volume: pass a path (.tif, .tiff, .zarr, "
        ".ome.zarr), a numpy, dask or zarr array, or a zarr group"
    )


def _open_path(path: Path, level: int) -> RawSource:
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {str(path)!r}")
    if path.is_dir():
        if not any((path / name).exists() for name in _ZARR_METADATA):
            raise ValueError(
                f"{str(path)!r} is a directory but not a zarr store (no .zarray, .zgroup or "
                "zarr.json in it)"
            )
        try:
            node = zarr.open(zarr.storage.LocalStore(path, read_only=True), mode="r")
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            # zarr's own words (a JSON parser's, a missing key's) do not say which store.
            raise ValueError(
                f"{str(path)!r} is not a readable zarr store: its metadata cannot be read "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return _open_zarr_node(node, level, str(path))
    if path.name.lower().endswith(TIFF_SUFFIXES):
        return _open_tiff(path, level)
    if path.name.lower().endswith(".zarr"):
        raise ValueError(f"{str(path)!r} is a file, but a zarr store is a directory")
    raise ValueError(
        f"unsupported file type {''.join(path.suffixes) or '(no suffix)'!r} for {str(path)!r}: "
        "napari-segany opens TIFF files (.tif, .tiff, .ome.tif) and zarr / OME-Zarr "
        "directories (.zarr, .ome.zarr); read other formats into a numpy array first"
    )


def open_tiff(path: str | os.PathLike[str]) -> tifffile.TiffFile:
    """Open a TIFF file with tifffile; an error names the file.

    Returns
    -------
    tifffile.TiffFile
        Open: close it (or use it as a context manager).

    Raises
    ------
    ValueError
        The file is not a TIFF file (empty, another format) or its header is corrupt.
    OSError
        The file cannot be read (missing, a directory, permission denied).
    """
    import tifffile  # only TIFF sources pay for the import

    try:
        return tifffile.TiffFile(path)
    except (tifffile.TiffFileError, struct.error) as exc:
        raise ValueError(_not_tiff(Path(path), exc)) from exc


def _not_tiff(path: Path, error: Exception) -> str:
    """Why tifffile refused ``path``, in a line that names it."""
    import tifffile

    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        return f"{str(path)!r} is not a TIFF file: it is empty"
    if head[:2] not in (b"II", b"MM"):
        return f"{str(path)!r} is not a TIFF file (it starts with {head!r})"
    if isinstance(error, struct.error):  # a header cut short
        return f"{str(path)!r} is not a readable TIFF file: it ends within its header"
    what = str(error) if isinstance(error, tifffile.TiffFileError) else type(error).__name__
    return f"{str(path)!r} is not a readable TIFF file: {what}"


def _open_tiff(path: Path, level: int) -> RawSource:
    tiff = open_tiff(path)
    try:
        if not tiff.series:
            raise ValueError(f"{str(path)!r} holds no image")
        series = tiff.series[0]
        _check_level(level, len(series.levels), str(path))
        # tifffile's zarr store decodes one page (or tile) per chunk on demand, so indexing
        # the zarr array reads only the pages a slice touches.
        store = series.aszarr(level=level)
        array = zarr.open_array(store, mode="r")
    except BaseException:
        tiff.close()
        raise

    def close() -> None:
        store.close()
        tiff.close()

    kind = "OME-TIFF metadata" if tiff.is_ome else "tifffile"
    return RawSource(
        array,
        str(path),
        axes=tiff_axes(series.axes),
        axes_origin=f"{kind} (series axes {series.axes!r})",
        rgba="S" in series.axes.upper(),
        close=close,
    )


def _open_zarr_node(node: zarr.Array | zarr.Group, level: int, where: str) -> RawSource:
    if isinstance(node, zarr.Array):
        _check_level(level, 1, where)
        return RawSource(node, where)
    attrs = node.attrs.asdict()
    if "bioformats2raw.layout" in ome_attributes(attrs) and "0" in node:
        # bioformats2raw writes each series as an OME-Zarr image in a numbered subgroup.
        return _open_zarr_node(node["0"], level, f"{where}/0")
    multiscale = read_multiscale(attrs, where)
    if multiscale is not None:
        return _open_ome_zarr(node, multiscale, level, where)
    names = sorted(node.array_keys())
    if len(names) == 1:
        _check_level(level, 1, where)
        return RawSource(node[names[0]], f"{where}/{names[0]}")
    if not names:
        raise ValueError(f"zarr group {where} holds no array and no OME-Zarr image metadata")
    raise ValueError(
        f"zarr group {where} holds {len(names)} arrays ({', '.join(names)}) and no OME-Zarr "
        f"multiscales metadata: open one of them, e.g. {where}/{names[0]}"
    )


def _open_ome_zarr(group: zarr.Group, multiscale: Multiscale, level: int, where: str) -> RawSource:
    _check_level(level, len(multiscale.datasets), where)
    path = multiscale.datasets[level].path
    array = group[path]
    if not isinstance(array, zarr.Array):
        raise ValueError(f"OME-Zarr image {where}: dataset {path!r} is not an array")
    version = multiscale.version or "?"
    axes = multiscale.axes_for(array.ndim)
    if axes is None:
        return RawSource(array, where)
    if multiscale.axes:
        origin = f"OME-Zarr {version} metadata (axes {list(multiscale.names)})"
    else:
        origin = f"OME-Zarr {version} (implicit TCZYX)"
    return RawSource(array, where, axes="".join(a.letter for a in axes), axes_origin=origin)


def _open_pyramid(levels: list, level: int) -> RawSource:
    if not all(_is_array_like(a) for a in levels):
        raise TypeError(
            "a list is read as a multiscale pyramid (largest level first) and must hold arrays; "
            "for a stack of slices pass np.stack(...) instead"
        )
    shapes = [tuple(a.shape) for a in levels]
    if len(levels) > 1 and len(set(shapes)) == 1:
        raise ValueError(
            f"a list of {len(levels)} arrays of equal shape {shapes[0]} is not a pyramid: "
            "to open a stack of slices pass np.stack(...) instead"
        )
    description = f"pyramid of {len(levels)} levels, {_describe_array(levels[0])}"
    _check_level(level, len(levels), description)
    return RawSource(levels[level], description)


def _check_level(level: int, n_levels: int, where: str) -> None:
    if level >= n_levels:
        have = "1 level (0)" if n_levels == 1 else f"{n_levels} levels (0..{n_levels - 1})"
        raise ArgumentError(Setting("level", level), f" is out of range: {where} has {have}")


def _is_array_like(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in ("shape", "dtype", "__getitem__"))


def _describe_array(array: Any) -> str:
    kind = type(array).__module__.split(".")[0]
    name = {"numpy": "numpy array", "dask": "dask array", "zarr": "zarr array"}.get(
        kind, f"{type(array).__name__} array"
    )
    shape = tuple(int(n) for n in array.shape)
    return f"{name} {shape} {np.dtype(array.dtype)}"


def _zarr_where(node: zarr.Array | zarr.Group) -> str:
    """A path for zarr nodes on disk, else a short description (in-memory stores have none)."""
    store = node.store
    if isinstance(store, zarr.storage.LocalStore):
        return str(Path(store.root) / node.path) if node.path else str(store.root)
    if isinstance(node, zarr.Array):
        return _describe_array(node) + (f" at {node.path!r}" if node.path else "")
    return f"zarr group in {type(store).__name__}" + (f" at {node.path!r}" if node.path else "")
