"""What the axes of a source array mean, and how one (Y, X) slice is cut out of it.

Every source is described with the letters T, C, Z, Y, X (time, channel, depth, rows,
columns). The caller's ``axes=`` wins; otherwise the file's metadata decides; otherwise a
short rule on the shape does (see :func:`infer_axes`), and anything the rule cannot settle
is asked for instead of guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..argument_errors import ArgumentError, Blank, Fix, Setting

__all__ = [
    "AXIS_LETTERS",
    "Layout",
    "check_axes",
    "infer_axes",
    "plan_layout",
    "resolve_layout",
    "tiff_axes",
]

AXIS_LETTERS = "TCZYX"

# tifffile's series axes use more codes than OME's five; these two mean "a stack of
# pages" and "samples per pixel" (interleaved or planar RGB), which is all we need.
_TIFF_CODES = {"Q": "Z", "I": "Z", "S": "C"}

# The fix for axes that metadata got wrong, and axes to suggest, by ndim, for arrays
# without metadata that the shape cannot settle.
_SAY_AXES = Fix((Setting("axes", Blank("'...'", "AXES")),), then=" to say what the dimensions are")
_EXAMPLES = {4: ("TZYX", "CZYX"), 5: ("TCZYX", "TZCYX")}


def check_axes(axes: str, ndim: int, *, origin: str, given: bool = False) -> str:
    """Validate an axes string for an array of ``ndim`` dimensions; returns it upper-cased.

    Parameters
    ----------
    axes
        One letter per dimension, from T, C, Z, Y, X, each at most once; Y and X required.
    ndim
        Dimensions of the array the axes describe.
    origin
        What the axes describe and where they came from, to start the error message
        (``"stack.tif"``, ``"stack.tif: tifffile series axes 'RYX'"``).
    given
        The axes are the caller's ``axes=``: the message names that argument; otherwise
        (metadata) it says to pass ``axes=``.

    Raises
    ------
    ArgumentError
        A ValueError, if the string is not a valid description of the array.
    """
    if not isinstance(axes, str):
        raise ValueError(f"{origin}: axes must be a string such as 'ZYX', got {axes!r}")
    letters = axes.upper()

    def error(problem: str) -> ArgumentError:
        if given:  # the caller's own axes: name them, in the caller's words
            return ArgumentError(Setting("axes", axes), f" does not fit {origin}: {problem}")
        return ArgumentError(f"{origin}: {problem}", fix=_SAY_AXES)

    if "?" in letters:  # metadata named an axis we have no letter for
        raise error("an axis is not one of T, C, Z, Y, X")
    unknown = sorted({a for a in letters if a not in AXIS_LETTERS})
    if unknown:
        raise error(
            f"unknown axes letter(s) {', '.join(map(repr, unknown))}; "
            "use T (time), C (channel), Z, Y, X"
        )
    repeated = sorted({a for a in letters if letters.count(a) > 1})
    if repeated:
        raise error(f"axes repeat {', '.join(repeated)}")
    if "Y" not in letters or "X" not in letters:
        raise error("axes must include both Y and X")
    if len(letters) != ndim:
        raise error(f"axes name {len(letters)} dimensions but the array has {ndim}")
    return letters


def infer_axes(shape: tuple[int, ...], *, source: str = "the array") -> str:
    """Axes for an array that carries no metadata.

    2D is ``YX``; 3D is ``YXC`` when the last dimension is 3 or 4 (RGB, RGBA), else ``ZYX``;
    4D is ``ZYXC`` when the last dimension is 3 or 4. Anything else is ambiguous.

    Parameters
    ----------
    shape
        The array's shape.
    source
        What the array is, for messages (a path, ``numpy array (2, 5, 6, 7) uint8``).

    Raises
    ------
    ArgumentError
        A ValueError asking for ``axes=`` (with examples of the array's length) and
        showing the shape, when the rule cannot tell.
    """
    ndim = len(shape)
    if ndim < 2 or ndim > 5:
        raise ValueError(
            f"{source}: expected an image with 2 to 5 dimensions (YX, ZYX, YXC, ZYXC, "
            f"TCZYX, ...), got {ndim}D with shape {tuple(shape)}"
        )
    interleaved = shape[-1] in (3, 4)
    if ndim == 2:
        return "YX"
    if ndim == 3:
        return "YXC" if interleaved else "ZYX"
    if ndim == 4 and interleaved:
        return "ZYXC"
    raise ArgumentError(
        f"{source}: cannot tell the axes of a {ndim}D array of shape {tuple(shape)}",
        fix=Fix(
            tuple(Setting("axes", example) for example in _EXAMPLES[ndim]),
            then=" (one of T, C, Z, Y, X per dimension, in the array's order)",
        ),
    )


def tiff_axes(codes: str) -> str:
    """tifffile series axes (``QYX``, ``TZCYXS``, ...) in our letters; unknown codes give ``?``."""
    letters = (_TIFF_CODES.get(code, code) for code in codes.upper())
    return "".join(letter if letter in AXIS_LETTERS else "?" for letter in letters)


@dataclass(frozen=True)
class Layout:
    """How slices are cut from a source array whose axes are known and T/C are chosen.

    Attributes
    ----------
    axes
        The source's axes, e.g. ``"TCZYX"``.
    source_shape
        The source array's shape.
    time, channel
        The chosen index on the T and C axes, or None where that axis is absent, of size 1
        (then index 0 is used), or (for C) read as RGB.
    rgb
        Slices are ``(Y, X, 3)``: the first three entries of the C axis.
    """

    axes: str
    source_shape: tuple[int, ...]
    time: int | None
    channel: int | None
    rgb: bool

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``; Z is 1 when the source has no Z axis."""
        size = dict(zip(self.axes, self.source_shape, strict=True))
        return (size.get("Z", 1), size["Y"], size["X"])

    def index(self, z: int, rows: slice, cols: slice) -> tuple[int | slice, ...]:
        """The source index that reads slice ``z`` restricted to ``rows`` and ``cols``."""
        pick: dict[str, int | slice] = {
            "T": self.time or 0,
            "C": slice(0, 3) if self.rgb else (self.channel or 0),
            "Z": z,
            "Y": rows,
            "X": cols,
        }
        return tuple(pick[a] for a in self.axes)

    def arrange(self, block: np.ndarray) -> np.ndarray:
        """Put what :meth:`index` read in ``(Y, X)`` or ``(Y, X, 3)`` order (a view)."""
        kept = [a for a in self.axes if a in ("Y", "X") or (a == "C" and self.rgb)]
        order = [kept.index(a) for a in "YXC" if a in kept]
        return block if order == list(range(len(order))) else np.transpose(block, order)


def plan_layout(
    shape: tuple[int, ...],
    axes: str,
    *,
    time: int | None,
    channel: int | None,
    rgba: bool,
    source: str,
) -> Layout:
    """Choose T and C for a source of known axes.

    Parameters
    ----------
    shape, axes
        The source array's shape and its (validated) axes.
    time, channel
        The caller's choice, or None.
    rgba
        A C axis of size 4 is RGB plus alpha (interleaved samples of an image without
        metadata, TIFF samples); otherwise four channels need ``channel=``.
    source
        The source's description, for error messages.

    Raises
    ------
    ValueError
        A T axis longer than 1 without ``time=``, channels that are not RGB without
        ``channel=``, a choice out of range, or a choice for an axis the source lacks.
    """
    size = dict(zip(axes, shape, strict=True))
    time = _choose("time", "T", size.get("T"), time, source)
    if time is None and size.get("T", 1) > 1:
        raise ArgumentError(
            f"{source} has {size['T']} time points (axes {axes!r}, shape {tuple(shape)})",
            fix=Fix((Setting("time", range(size["T"])),), verb="pick one with"),
        )
    channel = _choose("channel", "C", size.get("C"), channel, source)
    n_channels = size.get("C", 1)
    rgb = channel is None and (n_channels == 3 or (n_channels == 4 and rgba))
    if channel is None and n_channels > 1 and not rgb:
        raise ArgumentError(
            f"{source} has {n_channels} channels (axes {axes!r}, shape {tuple(shape)})",
            fix=Fix(
                (Setting("channel", range(n_channels)),),
                verb="pick one with",
                then=" (3 channels are read as RGB)",
            ),
        )
    return Layout(axes, tuple(int(n) for n in shape), time, channel, rgb)


def resolve_layout(
    shape: tuple[int, ...],
    *,
    axes: str | None,
    declared: str | None,
    declared_origin: str,
    rgba: bool,
    time: int | None,
    channel: int | None,
    source: str,
) -> Layout:
    """Decide the axes of a source (caller, then metadata, then the shape) and choose T and C.

    Parameters
    ----------
    shape
        The source array's shape.
    axes
        The caller's ``axes=``, or None.
    declared, declared_origin
        Axes the source's metadata declare (None if none) and where they come from.
    rgba
        Whether a declared C axis of size 4 is RGBA (see :func:`plan_layout`); inferred
        interleaved samples always are, the caller's C never is.
    time, channel, source
        As for :func:`plan_layout`.

    Raises
    ------
    ValueError
        Fewer than 2 or more than 5 dimensions, a zero-length axis, or any axes problem.
    """
    if not 2 <= len(shape) <= 5:
        raise ValueError(
            f"{source}: expected an image with 2 to 5 dimensions (YX, ZYX, YXC, ZYXC, "
            f"TCZYX, ...), got {len(shape)}D with shape {shape}"
        )
    if 0 in shape:
        raise ValueError(f"{source} is empty: shape {shape} has a zero-length axis")
    if axes is not None:
        letters, rgba = check_axes(axes, len(shape), origin=source, given=True), False
    elif declared is not None:
        letters = check_axes(declared, len(shape), origin=declared_origin)
    else:
        letters, rgba = infer_axes(shape, source=source), True
    return plan_layout(shape, letters, time=time, channel=channel, rgba=rgba, source=source)


def _choose(name: str, letter: str, size: int | None, value: int | None, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}= must be an integer, got {value!r}")
    if size is None:
        raise ArgumentError(Setting(name, int(value)), f" given but {source} has no {letter} axis")
    if not 0 <= value < size:
        raise ArgumentError(
            Setting(name, int(value)),
            f" is out of range: {source} has {size} along {letter} (valid: 0..{size - 1})",
        )
    return int(value)
