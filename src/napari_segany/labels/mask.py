"""What a commit is given, checked before anything is written: the object mask and its record."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt

from .layout import Box

__all__ = [
    "check_z",
    "object_region",
    "record_to_json",
]


def object_region(mask: Any, z: int | None, shape: tuple[int, int, int]) -> tuple[Box, np.ndarray]:
    """The object's bounding box in the volume and the boolean mask cropped to it (3D).

    Parameters
    ----------
    mask
        bool ``(Y, X)`` for slice ``z`` or bool ``(Z, Y, X)`` with ``z=None``; integer and
        float arrays holding only 0 and 1 are accepted.
    z
        Slice of a 2D mask; optional when the volume has one slice.
    shape
        The volume's ``(Z, Y, X)``.

    Raises
    ------
    TypeError
        Not an array of numbers or booleans; z not an integer.
    ValueError
        Wrong shape, values other than 0 and 1 (NaN included), z out of range or given
        with a 3D mask, or an empty mask.
    """
    try:
        array = np.asarray(mask)
    except (TypeError, ValueError):  # ragged nested lists
        raise TypeError(
            f"mask must be a boolean array, got a ragged {type(mask).__name__}"
        ) from None
    depth, height, width = shape
    if array.ndim == 2:
        if array.shape != (height, width):
            raise ValueError(
                f"mask shape {array.shape} does not match the slice shape {(height, width)}"
            )
        if z is None:
            if depth != 1:
                raise ValueError(
                    f"a (Y, X) mask needs z= (the volume has {depth} slices), or pass a "
                    "(Z, Y, X) mask"
                )
            z = 0
        z = check_z(z, depth)
        array = _as_bool(array)[None]
        offset = z
    elif array.ndim == 3:
        if z is not None:
            raise ValueError("z= goes with a (Y, X) mask; a (Z, Y, X) mask covers every slice")
        if array.shape != shape:
            raise ValueError(f"mask shape {array.shape} does not match the volume shape {shape}")
        array = _as_bool(array)
        offset = 0
    else:
        raise ValueError(
            f"mask must be (Y, X) or (Z, Y, X), got {array.ndim} dimensions {array.shape}"
        )
    z_span, y_span, x_span = (_span(array.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1)))
    if z_span is None or y_span is None or x_span is None:  # one empty: all empty
        raise ValueError("mask is empty: no voxel is set, nothing to commit")
    (z0, z1), (y0, y1), (x0, x1) = z_span, y_span, x_span
    box = ((z0 + offset, z1 + offset), (y0, y1), (x0, x1))
    return box, array[z0:z1, y0:y1, x0:x1]


def check_z(z: Any, depth: int) -> int:
    """``z`` as a slice index of a volume with ``depth`` slices."""
    if isinstance(z, bool) or not isinstance(z, (int, np.integer)):
        raise TypeError(f"z must be an integer slice index, got {type(z).__name__}")
    if not 0 <= z < depth:
        raise ValueError(
            f"z={int(z)} is out of range: the volume has {depth} slices (0..{depth - 1})"
        )
    return int(z)


def _as_bool(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array
    if array.dtype.kind not in "iuf":
        raise TypeError(f"mask must be a boolean array, got dtype {array.dtype}")
    if not np.all((array == 0) | (array == 1)):
        bad = array[(array != 0) & (array != 1)].flat[0]
        raise ValueError(
            f"mask must be boolean or hold only 0 and 1; it holds {bad!r} (pass mask > 0 "
            "or a thresholded mask instead)"
        )
    return array != 0


def _span(flags: npt.ArrayLike) -> tuple[int, int] | None:
    where = np.flatnonzero(flags)
    return (int(where[0]), int(where[-1]) + 1) if where.size else None


def record_to_json(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """``record`` as plain JSON values (NumPy scalars and arrays become numbers and lists).

    Raises
    ------
    TypeError
        Not a dict, or holding values JSON cannot hold.
    ValueError
        NaN or infinity in it.
    """
    if record is None:
        return None
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict (or None), got {type(record).__name__}")
    try:
        return json.loads(json.dumps(record, default=_plain, allow_nan=False))
    except TypeError as error:
        raise TypeError(f"record must be JSON-able: {error}") from None
    except ValueError as error:
        raise ValueError(f"record must be JSON-able: {error}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-able")
