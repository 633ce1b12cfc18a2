"""Lazy volumes: one (Y, X) slice at a time from arrays, zarr, OME-Zarr and TIFF files.

A :class:`Volume` never holds the whole array: slices (or windows of a slice) are read when
asked for. Its intensity limits are decided once for the whole volume, from a bounded
sample of slices, so that a value means the same thing on every slice the model sees; its
fingerprint signs the content cheaply so an embedding cache can tell a changed source.

Where the pixels come from is :mod:`napari_segany.volume.sources`; what the axes mean is
:mod:`napari_segany.volume.axes`.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import weakref
from typing import Any

import numpy as np

from ..argument_errors import ArgumentError, Blank, Fix, Setting
from .axes import Layout, resolve_layout
from .intensity import MIN_RANGE, percentile_limits, scale_to_model
from .options import VolumeOptions
from .sources import RawSource, open_source, read

__all__ = [
    "FINGERPRINT_PIXELS",
    "LIMIT_PIXELS",
    "LIMIT_SLICES",
    "PERCENTILES",
    "Volume",
    "open_volume",
]

PERCENTILES = (0.5, 99.5)
"""Default robust limits: these percentiles of the sampled values."""
LIMIT_SLICES = 8
"""At most this many evenly spaced slices are sampled to choose the limits."""
LIMIT_PIXELS = 1_000_000
"""Each sampled slice is strided down to at most this many values."""
FINGERPRINT_PIXELS = 65_536
"""Each fingerprinted slice (first, middle, last) is strided down to at most this many values."""
_FINGERPRINT_VERSION = 1


class Volume:
    """A lazy ``(Z, Y, X)`` or ``(Z, Y, X, 3)`` view of an image source; see :func:`open_volume`.

    Attributes
    ----------
    source : str
        What was opened: the path, or e.g. ``"numpy array (16, 256, 256) uint16"``.
    axes : str
        The source array's axes as read, e.g. ``"TCZYX"``, ``"ZYX"``, ``"YXC"`` (tifffile's
        page axes ``Q``/``I`` are reported as ``Z``, samples ``S`` as ``C``).
    shape : tuple of int
        ``(Z, Y, X)`` once T and C are chosen; a 2D image has ``Z == 1``.
    dtype : numpy.dtype
        The source's data type (raw values, before scaling).
    rgb : bool
        Slices are ``(Y, X, 3)``.
    level, time, channel : int or None
        The pyramid level read, and the chosen T and C indices (None where not chosen).
    options : VolumeOptions or None
        The options it was opened with (None: not made by :func:`open_volume`).
    """

    def __init__(
        self,
        raw: RawSource,
        layout: Layout,
        limits: tuple[float, float] | None,
        *,
        level: int = 0,
        opened_with: tuple[Any, VolumeOptions] | None = None,
    ) -> None:
        self._raw = raw
        self._opened_with = opened_with
        self._layout = layout
        self.source: str = raw.description
        self.axes: str = layout.axes
        self.shape: tuple[int, int, int] = layout.shape
        self.dtype: np.dtype = np.dtype(raw.array.dtype)
        self.rgb: bool = layout.rgb
        self.level: int = level
        self.time: int | None = layout.time
        self.channel: int | None = layout.channel
        self._explicit = limits is not None
        self._limits = limits
        self._limits_lock = threading.Lock()
        # Files behind the volume close when it is closed or garbage-collected, whichever
        # comes first, so a forgotten volume does not leak a handle.
        self._finalizer = weakref.finalize(self, raw.close)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        """Raw values, NumPy style: ``vol[z]`` one slice, ``vol[-1]`` the last,
        ``vol[2:5]`` a stack of slices, ``vol[z, 10:50, 20:60]`` part of a slice.

        Only the slices asked for are read.
        """
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            if not key:
                raise IndexError("index the volume by slice first: vol[z] or vol[z0:z1]")
            key, rest = key[0], key[1:]
        if isinstance(key, slice):
            planes = [self.read_slice(z) for z in range(*key.indices(len(self)))]
            empty = np.empty((0, *self.shape[1:], *((3,) if self.rgb else ())), self.dtype)
            stack = np.stack(planes) if planes else empty
            return stack[(slice(None), *rest)]
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"slice index z must be an integer or a slice, got {key!r}")
        z = int(key) + len(self) if key < 0 else int(key)
        if not 0 <= z < len(self):
            raise IndexError(
                f"slice z={key} is outside {self.source}, which has {len(self)} slice(s)"
            )
        return self.read_slice(z)[rest] if rest else self.read_slice(z)

    def __reduce__(self) -> tuple:
        # Batch workers (dask.distributed) get the same view and the limits already decided:
        # the source is reopened there (a path reopens its file), and nothing is re-sampled.
        if self._opened_with is None:
            raise TypeError("only volumes made by open_volume can be pickled")
        source, options = self._opened_with
        return (_reopen, (source, options, self._limits, self._explicit))

    @property
    def options(self) -> VolumeOptions | None:
        """The options :func:`open_volume` was given (None for a volume made otherwise)."""
        return self._opened_with[1] if self._opened_with is not None else None

    @property
    def opened_from(self) -> Any:
        """What :func:`open_volume` was given to open: a path, an array, a store (or None)."""
        return self._opened_with[0] if self._opened_with is not None else None

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}={value}"
            for name, value in (
                ("level", self.level or None),
                ("time", self.time),
                ("channel", self.channel),
            )
            if value is not None
        )
        return (
            f"Volume({self.source!r}, axes={self.axes!r}, shape={self.shape}, "
            f"dtype={self.dtype}, rgb={self.rgb}{extra})"
        )

    def close(self) -> None:
        """Release the file behind the volume (TIFF); reading afterwards is an error."""
        self._finalizer()

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def slice_shape(self) -> tuple[int, int]:
        """``(Y, X)`` of every slice."""
        return self.shape[1], self.shape[2]

    def read_slice(self, z: int, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Raw values of slice ``z``, or of a window of it.

        Parameters
        ----------
        z
            Slice index, ``0 <= z < len(self)``.
        region
            ``(y0, x0, y1, x1)``, half-open, inside the slice: only this window is read
            (tiles of huge slices). None reads the whole slice.

        Returns
        -------
        numpy.ndarray
            ``(Y, X)``, or ``(Y, X, 3)`` for RGB, in the source's dtype.

        Raises
        ------
        IndexError
            ``z`` outside the volume.
        ValueError
            A region that is empty or reaches outside the slice.
        """
        rows, cols = self._window(region)
        return self._read(self._check_z(z), rows, cols)

    @property
    def limits(self) -> tuple[float, float]:
        """Intensity limits mapped to 0 and 255 for the model, decided once per volume.

        The explicit ``limits`` given to :func:`open_volume`, else the 0.5 and 99.5
        percentiles of the finite values in a bounded sample: at most
        :data:`LIMIT_SLICES` evenly spaced slices, each strided to at most
        :data:`LIMIT_PIXELS` values. Computed on first access, then cached.

        Raises
        ------
        ArgumentError
            A ValueError: the sample holds no finite value (pass explicit ``limits``).
        """
        if self._limits is None:
            with self._limits_lock:  # GUI workers may ask at once; sample only once
                if self._limits is None:
                    self._limits = self._sample_limits()
        return self._limits

    @property
    def normalisation(self) -> dict[str, Any]:
        """How :attr:`limits` were decided, JSON-ready, for signing embedding caches."""
        if self._explicit:
            return {"method": "explicit", "limits": list(self.limits)}
        return {
            "method": "percentiles",
            "percentiles": list(PERCENTILES),
            "limits": list(self.limits),
        }

    def model_slice(self, z: int, region: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Slice ``z`` (or a window of it) scaled by :attr:`limits` to float32 in 0..255.

        Raises
        ------
        ValueError
            The slice holds NaN or infinite values (the model cannot see them).
        """
        image = self.read_slice(z, region)
        if image.dtype.kind == "f":
            bad = np.count_nonzero(~np.isfinite(image))
            if bad:
                raise ValueError(
                    f"slice z={z} of {self.source} holds {bad} NaN or infinite value(s); "
                    "replace them (e.g. numpy.nan_to_num) before segmenting"
                )
        return scale_to_model(image, self.limits)

    def fingerprint(self) -> str:
        """A cheap signature of the content: sha256 hex digest.

        It covers the shape, dtype, axes and the T/C choice, and the values of the first,
        middle and last slices strided to at most :data:`FINGERPRINT_PIXELS` values each.
        It changes when any sampled value changes; edits elsewhere are not seen (the
        price of never reading the whole volume).
        """
        header = {
            "version": _FINGERPRINT_VERSION,
            "shape": list(self.shape),
            "dtype": self.dtype.newbyteorder("<").str,
            "axes": self.axes,
            "source_shape": list(self._layout.source_shape),
            "time": self.time,
            "channel": self.channel,
            "rgb": self.rgb,
        }
        digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
        depth = len(self)
        for z in sorted({0, depth // 2, depth - 1}):
            sample = self._strided(z, FINGERPRINT_PIXELS)
            digest.update(f"z={z}:{sample.shape}".encode())
            # Little-endian bytes: the same values sign the same whatever the file's order.
            digest.update(
                np.ascontiguousarray(sample, dtype=sample.dtype.newbyteorder("<")).tobytes()
            )
        return digest.hexdigest()

    def _sample_limits(self) -> tuple[float, float]:
        depth = len(self)
        zs = np.unique(np.linspace(0, depth - 1, num=min(LIMIT_SLICES, depth)).round().astype(int))
        sample = np.concatenate([self._strided(int(z), LIMIT_PIXELS).ravel() for z in zs])
        try:
            return percentile_limits(sample, *PERCENTILES)
        except ValueError as error:
            raise ArgumentError(
                f"cannot choose intensity limits for {self.source}: the {len(zs)} sampled "
                "slice(s) hold no finite value",
                fix=Fix((Setting("limits", Blank("(low, high)", "LOW HIGH")),), to="open_volume"),
            ) from error

    def _strided(self, z: int, budget: int) -> np.ndarray:
        """Slice ``z`` with rows and columns strided so that at most ``budget`` values remain."""
        height, width = self.slice_shape
        channels = 3 if self.rgb else 1
        step = max(1, math.ceil(math.sqrt(height * width * channels / budget)))
        while math.ceil(height / step) * math.ceil(width / step) * channels > budget:
            step += 1  # rounding up the strided sizes can leave a few values over the budget
        return self._read(z, slice(0, height, step), slice(0, width, step))

    def _read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        if not self._finalizer.alive:
            raise ValueError(f"the volume {self.source} is closed")
        block = read(self._raw.array, self._layout.index(z, rows, cols))
        return self._layout.arrange(block)

    def _check_z(self, z: int) -> int:
        if isinstance(z, bool) or not isinstance(z, (int, np.integer)):
            raise TypeError(f"slice index z must be an integer, got {z!r}")
        if not 0 <= z < len(self):
            raise IndexError(
                f"slice z={z} is outside {self.source}, which has {len(self)} slice(s) "
                f"(0..{len(self) - 1})"
            )
        return int(z)

    def _window(self, region: tuple[int, int, int, int] | None) -> tuple[slice, slice]:
        height, width = self.slice_shape
        if region is None:
            return slice(0, height), slice(0, width)
        try:
            y0, x0, y1, x1 = (int(v) for v in region)
        except (TypeError, ValueError):
            raise ValueError(
                f"region must be four integers (y0, x0, y1, x1), got {region!r}"
            ) from None
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise ValueError(
                f"region (y0, x0, y1, x1) = {(y0, x0, y1, x1)} must be a non-empty window inside "
                f"the slice of shape (Y, X) = {(height, width)}"
            )
        return slice(y0, y1), slice(x0, x1)


def open_volume(
    source: Any,
    *,
    axes: str | None = None,
    level: int = 0,
    channel: int | None = None,
    time: int | None = None,
    limits: tuple[float, float] | None = None,
) -> Volume:
    """Open an image or a volume lazily.

    Parameters
    ----------
    source
        A path to a TIFF file (``.tif``, ``.tiff``, ``.ome.tif``; multi-page and OME-TIFF),
        a zarr (v2 or v3) or OME-Zarr (NGFF 0.4 or 0.5) directory; a zarr array, group or
        store; a numpy or dask array; or a list of arrays forming a pyramid, largest first.
    axes
        The source's axes in the letters T, C, Z, Y, X, e.g. ``"TCZYX"``. Overrides the
        metadata; needed when neither metadata nor the shape say (see ``docs/volumes.md``).
    level
        Pyramid level of OME-Zarr, pyramidal TIFF or a list of arrays; 0 is full resolution.
    channel
        Index on the C axis. Without it, 3 channels are read as RGB, 1 is dropped, and any
        other count is an error.
    time
        Index on the T axis; required when the T axis is longer than 1.
    limits
        Intensity ``(low, high)`` mapped to 0 and 255 for the model, e.g. a napari layer's
        contrast limits. Default: robust percentiles of a sample (:attr:`Volume.limits`).

    Returns
    -------
    Volume
        Lazy: nothing but metadata has been read.

    Raises
    ------
    FileNotFoundError
        A path that does not exist.
    ValueError
        Unsupported file type, a file that is not the TIFF or zarr store it is named as,
        wrong number of dimensions, invalid or ambiguous axes, an empty axis, a level, time
        or channel out of range, a bool/complex/non-numeric dtype, or invalid limits. Those
        about an argument are :class:`~napari_segany.argument_errors.ArgumentError`, which
        names it apart from the words (``time=3`` in Python, ``--time 3`` on the command
        line).
    TypeError
        A source of a kind that cannot be read.
    """
    checked_limits = _check_limits(limits)
    raw = open_source(source, level=level)
    try:
        dtype = np.dtype(raw.array.dtype)
        if dtype.kind not in "uif":
            raise ValueError(
                f"{raw.description} has dtype {dtype}: expected integer or floating-point "
                "intensities (bool, complex and object arrays cannot be segmented)"
            )
        layout = resolve_layout(
            tuple(int(n) for n in raw.array.shape),
            axes=axes,
            declared=raw.axes,
            declared_origin=f"{raw.description}: {raw.axes_origin}",
            rgba=raw.rgba,
            time=time,
            channel=channel,
            source=raw.description,
        )
    except BaseException:
        raw.close()
        raise
    options = VolumeOptions(
        axes=axes,
        level=int(level),
        channel=None if channel is None else int(channel),
        time=None if time is None else int(time),
    )
    return Volume(raw, layout, checked_limits, level=int(level), opened_with=(source, options))


def _reopen(
    source: Any, options: VolumeOptions, limits: tuple[float, float] | None, explicit: bool
) -> Volume:
    volume = open_volume(source, **options.keywords(), limits=limits if explicit else None)
    volume._limits = limits  # sampled limits travel with the volume: never decided twice
    return volume


def _check_limits(limits: tuple[float, float] | None) -> tuple[float, float] | None:
    if limits is None:
        return None
    try:
        low, high = (float(v) for v in limits)
    except (TypeError, ValueError):
        raise ValueError(f"limits must be two numbers (low, high), got {limits!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"limits must be finite with low < high, got {limits!r}")
    if not MIN_RANGE < high - low < math.inf:
        raise ValueError(
            f"limits must span a range between 1e-30 and the largest float, got {limits!r}"
        )
    return low, high
