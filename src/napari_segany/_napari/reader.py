"""napari reader: OME-Zarr images (NGFF 0.4 and 0.5) with their labels, and labels stores.

What opens (anything else gets None, so other readers get their chance):

- an OME-Zarr image: one image layer (a channel axis ``c`` is split into one layer per
  channel) and one labels layer per label image listed in ``<image>/labels``;
- a labels store of its own (``LabelsStore.create(path, shape)``: a root group holding only
  ``labels``): one labels layer per label image;
- a ``labels`` group, or one label image group, inside either;
- a bioformats2raw layout: its first image (``0``).

Nothing is read into memory: image layers hold dask arrays over the zarr arrays, every
pyramid level (``multiscale=True`` when there are several); labels layers hold the zarr
arrays themselves, opened read-only, so a layer refreshed after a :class:`LabelsStore` commit
shows it, and painting into them is refused (commit through the store instead). Scale and
translation come from the NGFF ``coordinateTransformations``; contrast limits, colours,
channel names and visibility from ``omero`` where present.

Every layer carries ``metadata["napari_segany"]``, a dict with:

``"image"``
    Absolute path of the OME-Zarr image the layer shows or labels; None for labels that
    name no image (or whose image is not there).
``"labels_store"``
    Labels layers only: absolute path of the OME-Zarr holding ``labels/<labels_name>``, so
    ``LabelsStore.open(labels_store, name=labels_name)`` opens the layer's labels.
``"labels_name"``
    Labels layers only: the label image's name.
``"ngff_version"``
    The NGFF version of the metadata read (``"0.4"``, ``"0.5"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zarr
import zarr.storage

from ..ome import Multiscale, ome_attributes, read_multiscale

if TYPE_CHECKING:
    from napari.types import LayerDataTuple

__all__ = ["METADATA_KEY", "get_reader", "read_ome_zarr"]

METADATA_KEY = "napari_segany"
"""Key of the layer metadata dict that links a layer to its OME-Zarr and labels store."""

ReaderFunction = Callable[[str | Sequence[str]], list["LayerDataTuple"]]


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """The reader for ``path`` if it is an OME-Zarr image or labels, else None.

    Parameters
    ----------
    path
        A path, or a list of paths that must all be OME-Zarr images or labels.

    Returns
    -------
    callable or None
        :func:`read_ome_zarr`, or None for anything else (files, plain zarr arrays and
        groups, missing paths, remote URLs).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(_kind(Path(p)) is not None for p in paths):
        return None
    return read_ome_zarr


def read_ome_zarr(path: str | Sequence[str]) -> list[LayerDataTuple]:
    """The layers of the OME-Zarr images and labels at ``path`` (see the module docstring).

    Raises
    ------
    ValueError
        ``path`` is not an OME-Zarr image or labels.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerDataTuple] = []
    for p in paths:
        where = Path(p).expanduser().absolute()
        kind = _kind(where)
        if kind == "image":
            layers.extend(_image_layers(where))
            layers.extend(_labels_of(where, standalone=False))
        elif kind == "bioformats2raw":
            layers.extend(_image_layers(where / "0"))
            layers.extend(_labels_of(where / "0", standalone=False))
        elif kind == "labels store":
            layers.extend(_labels_of(where, standalone=True))
        elif kind == "labels group":
            layers.extend(_labels_of(where.parent, standalone=not _is_image(where.parent)))
        elif kind == "label image":
            root = where.parent.parent
            layers.append(_label_layer(root, where.name, standalone=not _is_image(root)))
        else:
            raise ValueError(f"{str(where)!r} is not an OME-Zarr image or labels store")
    return layers


# -- what a path holds ----------------------------------------------------------------------


def _kind(path: Path) -> str | None:
    """What ``path`` holds: an image, labels (several forms), or None if neither."""
    attrs = _attributes(path)
    if attrs is None:
        return None
    ome = ome_attributes(attrs)
    if _multiscale(path, attrs) is not None:
        return "label image" if "image-label" in ome else "image"
    if "bioformats2raw.layout" in ome and _is_image(path / "0"):
        return "bioformats2raw"
    if isinstance(ome.get("labels"), list):
        return "labels group"
    labels = _attributes(path / "labels")
    if labels is not None and isinstance(ome_attributes(labels).get("labels"), list):
        return "labels store"
    return None


def _is_image(path: Path) -> bool:
    attrs = _attributes(path)
    return (
        attrs is not None
        and _multiscale(path, attrs) is not None
        and "image-label" not in ome_attributes(attrs)
    )


def _attributes(path: Path) -> dict[str, Any] | None:
    """A zarr group's attributes (NGFF 0.5 ``zarr.json``, 0.4 ``.zattrs``), None if no group.

    Read from the metadata files themselves: no group listing, so non-zarr folders beside
    the arrays (a labels store's journal) do not matter.
    """
    try:
        if (path / "zarr.json").is_file():
            meta = json.loads((path / "zarr.json").read_text())
            if meta.get("node_type") != "group":
                return None
            attrs = meta.get("attributes") or {}
            return attrs if isinstance(attrs, dict) else None
        if (path / ".zgroup").is_file():
            attrs_file = path / ".zattrs"
            attrs = json.loads(attrs_file.read_text()) if attrs_file.is_file() else {}
            return attrs if isinstance(attrs, dict) else None
    except (OSError, ValueError, AttributeError):
        return None
    return None


def _multiscale(path: Path, attrs: dict[str, Any]) -> Multiscale | None:
    """The group's multiscales; None where it has none or they are malformed (not ours)."""
    try:
        return read_multiscale(attrs, str(path))
    except ValueError:
        return None


def _read(path: Path) -> tuple[Mapping[str, Any], Multiscale]:
    """The OME metadata and multiscales of a group :func:`_kind` found to be an image."""
    attrs = _attributes(path) or {}
    multiscale = _multiscale(path, attrs)
    if multiscale is None:
        raise ValueError(f"{str(path)!r} is not an OME-Zarr image or label image")
    return ome_attributes(attrs), multiscale


# -- image layers ---------------------------------------------------------------------------


def _image_layers(path: Path) -> list[LayerDataTuple]:
    import dask.array as da

    ome, multiscale = _read(path)
    arrays = _levels(path, multiscale)
    scale, translate = _scale_translate(multiscale, arrays[0].ndim)
    channel_axis = _channel_axis(multiscale, arrays[0].ndim)
    data = [da.from_zarr(a) for a in arrays]
    name = multiscale.name.strip() or _stem(path)
    info = {"image": str(path), "ngff_version": multiscale.version}
    kwargs: dict[str, Any] = {
        "multiscale": len(data) > 1,
        "rgb": False,
        "scale": scale,
        "translate": translate,
    }
    channels = _omero_channels(ome)
    if channel_axis is None:
        kwargs |= {"name": name, "metadata": {METADATA_KEY: info}}
        if len(channels) == 1 and _window(channels[0]) is not None:
            kwargs["contrast_limits"] = _window(channels[0])
    else:
        count = arrays[0].shape[channel_axis]
        del scale[channel_axis], translate[channel_axis]
        channels = channels if len(channels) == count else [{}] * count
        kwargs |= {
            "channel_axis": channel_axis,
            "name": [_channel_name(name, c, i) for i, c in enumerate(channels)],
            "metadata": [{METADATA_KEY: dict(info, channel=i)} for i in range(count)],
            "visible": [bool(c.get("active", True)) for c in channels],
            "contrast_limits": [_window(c) for c in channels],
        }
        colors = [_color(c) for c in channels]
        if all(colors):
            kwargs["colormap"] = colors
    return [(data if len(data) > 1 else data[0], kwargs, "image")]


def _omero_channels(ome: Mapping[str, Any]) -> list[dict[str, Any]]:
    omero = ome.get("omero")
    channels = omero.get("channels") if isinstance(omero, dict) else None
    if isinstance(channels, list) and all(isinstance(c, dict) for c in channels):
        return channels
    return []


def _window(channel: dict[str, Any]) -> list[float] | None:
    window = channel.get("window")
    if not isinstance(window, dict):
        return None
    try:
        start, end = float(window["start"]), float(window["end"])
    except (KeyError, TypeError, ValueError):
        return None
    return [start, end] if end > start else None


def _color(channel: dict[str, Any]) -> str | None:
    color = channel.get("color")
    if isinstance(color, str) and len(color) == 6:
        try:
            int(color, 16)
        except ValueError:
            return None
        return f"#{color.lower()}"
    return None


def _channel_name(name: str, channel: dict[str, Any], index: int) -> str:
    label = channel.get("label")
    return str(label) if isinstance(label, str) and label.strip() else f"{name} c{index}"


def _channel_axis(multiscale: Multiscale, ndim: int) -> int | None:
    axes = multiscale.axes_for(ndim)
    if axes is None or len(axes) != ndim:
        return None
    for i, axis in enumerate(axes):
        if axis.type == "channel":
            return i
    names = [axis.name for axis in axes]
    return names.index("c") if "c" in names else None


# -- labels layers --------------------------------------------------------------------------


def _labels_of(root: Path, *, standalone: bool) -> list[LayerDataTuple]:
    """A labels layer per label image listed in ``root/labels`` (missing ones skipped)."""
    ome = ome_attributes(_attributes(root / "labels") or {})
    names = [n for n in ome.get("labels") or [] if isinstance(n, str)]
    found = [n for n in names if _kind(root / "labels" / n) == "label image"]
    if standalone and len(found) == 1:
        return [_label_layer(root, found[0], standalone=True, alone=True)]
    return [_label_layer(root, n, standalone=standalone) for n in found]


def _label_layer(root: Path, name: str, *, standalone: bool, alone: bool = False) -> LayerDataTuple:
    where = root / "labels" / name
    ome, multiscale = _read(where)
    arrays = _levels(where, multiscale)
    scale, translate = _scale_translate(multiscale, arrays[0].ndim)
    if not standalone:
        image: Path | None = root
    else:
        image = _source_image(where, ome)
    info = {
        "image": None if image is None else str(image),
        "labels_store": str(root),
        "labels_name": name,
        "ngff_version": multiscale.version,
    }
    if not standalone:
        layer_name = name
    else:
        layer_name = _stem(root) if alone else f"{_stem(root)} {name}"
    kwargs = {
        "name": layer_name,
        "multiscale": len(arrays) > 1,
        "scale": scale,
        "translate": translate,
        "metadata": {METADATA_KEY: info},
    }
    return (arrays if len(arrays) > 1 else arrays[0], kwargs, "labels")


def _source_image(label_dir: Path, ome: Mapping[str, Any]) -> Path | None:
    """The image ``image-label.source`` names, if it is there."""
    source = (ome.get("image-label") or {}).get("source")
    relative = source.get("image") if isinstance(source, dict) else None
    if not isinstance(relative, str) or not relative:
        return None
    image = Path(os.path.normpath(label_dir / relative))
    return image if _is_image(image) else None


# -- shared ---------------------------------------------------------------------------------


def _levels(path: Path, multiscale: Multiscale) -> list[zarr.Array]:
    store = zarr.storage.LocalStore(path, read_only=True)
    return [zarr.open_array(store, path=d.path, mode="r") for d in multiscale.datasets]


def _scale_translate(multiscale: Multiscale, ndim: int) -> tuple[list[float], list[float]]:
    """World = global scale * (level-0 scale * index + level-0 translation) + global shift."""
    level0 = multiscale.datasets[0]
    scale, translate = _values(level0.scale, ndim, 1.0), _values(level0.translation, ndim, 0.0)
    overall_scale = _values(multiscale.scale, ndim, 1.0)
    overall_shift = _values(multiscale.translation, ndim, 0.0)
    return (
        [g * s for g, s in zip(overall_scale, scale, strict=True)],
        [g * t + o for g, t, o in zip(overall_scale, translate, overall_shift, strict=True)],
    )


def _values(values: tuple[float, ...] | None, ndim: int, fill: float) -> list[float]:
    """A scale or translation of ``ndim`` values; none, or of another length: ``fill``."""
    return list(values) if values is not None and len(values) == ndim else [fill] * ndim


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name
