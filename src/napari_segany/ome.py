"""OME-Zarr (NGFF) image metadata, read by one set of rules: ``multiscales`` and their axes.

NGFF 0.5 (zarr v3) keeps its metadata under ``attributes["ome"]``, NGFF 0.4 and earlier
(zarr v2) at the top level of the attributes. :func:`read_multiscale` reads either into a
:class:`Multiscale`: the first ``multiscales`` entry, its axes, its datasets and their scale
and translation, all this package uses. Malformed metadata raise a ValueError of one line
naming the store. Plain dicts in: no zarr, so attributes may come from a group or a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "IMPLICIT_AXES",
    "Axis",
    "Dataset",
    "Multiscale",
    "has_multiscales",
    "ome_attributes",
    "read_multiscale",
]

IMPLICIT_AXES = ("t", "c", "z", "y", "x")
"""The axes of NGFF 0.1 and 0.2 images, which declare none: their arrays are always 5D."""

_LETTERS = "TCZYX"
_TYPE_LETTERS = {"time": "T", "channel": "C"}


@dataclass(frozen=True)
class Axis:
    """One axis: its ``name``, and its ``type`` (space, time, channel) and ``unit`` if given."""

    name: str
    type: str | None = None
    unit: str | None = None

    @property
    def letter(self) -> str:
        """The axis as T, C, Z, Y or X: its name if it is one, else by its type, else ``?``."""
        if len(self.name) == 1 and self.name.upper() in _LETTERS:
            return self.name.upper()
        return _TYPE_LETTERS.get(self.type or "", "?")


@dataclass(frozen=True)
class Dataset:
    """One pyramid level: its array's path in the group, its scale and translation if given."""

    path: str
    scale: tuple[float, ...] | None = None
    translation: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Multiscale:
    """The first ``multiscales`` entry of an OME-Zarr image or label image.

    Attributes
    ----------
    version
        The NGFF version (``"0.4"``, ``"0.5"``), ``""`` where none is given.
    nested
        Whether the metadata sit under ``attributes["ome"]`` (NGFF 0.5 and later), not at
        the top level (0.4 and earlier).
    name
        The entry's ``name``, ``""`` where none is given.
    axes
        The declared axes; empty where none are (NGFF 0.1 and 0.2, see :meth:`axes_for`).
    datasets
        The levels, largest first; at least one.
    scale, translation
        The transformation of the whole pyramid, applied after each dataset's own; None
        where not given.
    """

    version: str
    nested: bool
    name: str
    axes: tuple[Axis, ...]
    datasets: tuple[Dataset, ...]
    scale: tuple[float, ...] | None = None
    translation: tuple[float, ...] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The declared axes' names."""
        return tuple(axis.name for axis in self.axes)

    def axes_for(self, ndim: int) -> tuple[Axis, ...] | None:
        """The axes of levels of ``ndim`` dimensions.

        Parameters
        ----------
        ndim
            Dimensions of the level arrays.

        Returns
        -------
        tuple of Axis or None
            The declared axes; where none are declared, NGFF 0.1/0.2's implicit
            ``t, c, z, y, x`` for 5D arrays, else None.
        """
        if self.axes:
            return self.axes
        if ndim == len(IMPLICIT_AXES):
            return tuple(Axis(name) for name in IMPLICIT_AXES)
        return None


class _Malformed(ValueError):
    """A problem with the metadata, before the store is named."""


def ome_attributes(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The OME part of a group's attributes: ``attrs["ome"]`` (NGFF 0.5), else ``attrs`` (0.4).

    Parameters
    ----------
    attrs
        The zarr group's attributes.

    Returns
    -------
    Mapping
        Where ``multiscales``, ``labels``, ``image-label`` and ``omero`` are looked up.
    """
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def has_multiscales(attrs: Mapping[str, Any]) -> bool:
    """Whether a group's attributes declare ``multiscales``, well-formed or not.

    Parameters
    ----------
    attrs
        The zarr group's attributes.

    Returns
    -------
    bool
        True for an OME-Zarr image or label image (NGFF 0.5 or earlier): a group that
        must not be taken for anything else, even where its metadata cannot be read.
    """
    return "multiscales" in attrs or "multiscales" in ome_attributes(attrs)


def read_multiscale(attrs: Mapping[str, Any], where: str) -> Multiscale | None:
    """Read the first ``multiscales`` entry of a group's attributes (NGFF 0.5 or earlier).

    Parameters
    ----------
    attrs
        The zarr group's attributes.
    where
        The group, for messages (a path, ``"image='cells.ome.zarr'"``).

    Returns
    -------
    Multiscale or None
        The entry; None where the group declares no multiscales (or an empty list).

    Raises
    ------
    ValueError
        The metadata are malformed: no datasets, a dataset without a path, axes that are
        not a list of names or ``{"name": ...}`` objects, a scale or translation that is not
        one number per axis. One line: ``"<where>: malformed OME-Zarr metadata: ..."``.
    """
    ome = ome_attributes(attrs)
    entries = ome.get("multiscales")
    if entries is None or entries == []:
        return None
    try:
        return _multiscale(entries, ome, nested=ome is not attrs)
    except _Malformed as problem:
        raise ValueError(f"{where}: malformed OME-Zarr metadata: {problem}") from None


def _multiscale(entries: object, ome: Mapping[str, Any], *, nested: bool) -> Multiscale:
    if not isinstance(entries, list) or not isinstance(entries[0], dict):
        raise _Malformed(f"multiscales must be a list of objects, got {_short(entries)}")
    entry = entries[0]
    axes = _axes(entry.get("axes"))
    datasets = entry.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise _Malformed(f"multiscales[0] lists no datasets (datasets: {_short(datasets)})")
    levels = []
    for i, dataset in enumerate(datasets):
        path = dataset.get("path") if isinstance(dataset, dict) else None
        if not isinstance(path, str) or not path:
            raise _Malformed(f"datasets[{i}] has no path: {_short(dataset)}")
        levels.append(Dataset(path, *_transforms(dataset, f"datasets[{i}]", len(axes))))
    # NGFF 0.5 gives the version once, beside multiscales; 0.4 in each multiscales entry.
    first, second = (ome, entry) if nested else (entry, ome)
    version = str(first.get("version") or second.get("version") or "")
    scale, translation = _transforms(entry, "multiscales[0]", len(axes))
    return Multiscale(
        version=version,
        nested=nested,
        name=str(entry.get("name") or ""),
        axes=axes,
        datasets=tuple(levels),
        scale=scale,
        translation=translation,
    )


def _axes(value: object) -> tuple[Axis, ...]:
    if value is None:
        return ()  # NGFF 0.1, 0.2
    if not isinstance(value, list) or not value:
        raise _Malformed(
            f"axes must be a list of names or {{'name': ...}} objects, got {_short(value)}"
        )
    axes = []
    for i, axis in enumerate(value):
        if isinstance(axis, str):  # NGFF 0.3
            axes.append(Axis(axis))
            continue
        name = axis.get("name") if isinstance(axis, dict) else None
        if not isinstance(name, str):
            raise _Malformed(f"axes[{i}] is not a name or a {{'name': ...}} object: {_short(axis)}")
        kind, unit = axis.get("type"), axis.get("unit")
        axes.append(
            Axis(
                name,
                kind if isinstance(kind, str) else None,
                unit if isinstance(unit, str) else None,
            )
        )
    return tuple(axes)


def _transforms(
    node: dict[str, Any], what: str, n_axes: int
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The first scale and translation of ``node``'s ``coordinateTransformations``."""
    transforms = node.get("coordinateTransformations") or []
    if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
        raise _Malformed(
            f"{what} coordinateTransformations must be a list of objects, got {_short(transforms)}"
        )
    found: dict[str, tuple[float, ...]] = {}
    for t in transforms:
        kind = t.get("type")
        if kind not in ("scale", "translation") or kind not in t or kind in found:
            continue  # another type, one given by path, or a second one: not read
        values = t[kind]
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise _Malformed(f"{what} {kind} must be a list of numbers, got {_short(values)}")
        if n_axes and len(values) != n_axes:
            raise _Malformed(f"{what} {kind} has {len(values)} values for {n_axes} axes")
        found[kind] = tuple(float(v) for v in values)
    return found.get("scale"), found.get("translation")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
