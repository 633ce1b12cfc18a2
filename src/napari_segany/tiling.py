"""Tiles of large slices: overlapping windows, and which window serves a prompt.

A slice whose longer side exceeds ``threshold * tile_size`` is covered by square
windows of ``tile_size`` pixels that overlap by ``2 * halo``; each window is embedded
on its own at (nearly) full resolution. A prompt is decoded on the window in which it
lies deepest, so that an object reaching up to ``halo`` pixels from the prompt is
entirely inside that window and never cut at a window border.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "TileGrid",
    "Window",
    "tile_grid",
]

Window = tuple[int, int, int, int]  # (y0, x0, y1, x1), half-open


def _starts(n: int, tile: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride`` pixels, the last flush with the end."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, stride))
    return [*starts, n - tile]


@dataclass(frozen=True)
class TileGrid:
    """The windows that cover one slice.

    Attributes
    ----------
    slice_shape
        ``(height, width)`` of the slice.
    tile_size
        Side of a window in pixels (0: the slice is not tiled).
    halo
        Context each window gives beyond the part it is chosen for.
    windows
        ``(y0, x0, y1, x1)`` of each window, row by row.
    """

    slice_shape: tuple[int, int]
    tile_size: int
    halo: int
    windows: tuple[Window, ...]

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def tiled(self) -> bool:
        """Whether the slice is covered by more than one window."""
        return len(self.windows) > 1

    def depth(self, index: int, y: float, x: float) -> float:
        """How far ``(y, x)`` lies inside window ``index`` (negative: outside).

        Window edges on the slice border do not count: nothing lies beyond them.
        """
        y0, x0, y1, x1 = self.windows[index]
        h, w = self.slice_shape
        far = float(max(h, w))
        return min(
            y - y0 if y0 > 0 else far,
            y1 - y if y1 < h else far,
            x - x0 if x0 > 0 else far,
            x1 - x if x1 < w else far,
        )

    def window_for_point(self, y: float, x: float) -> int:
        """The window in which the point lies deepest."""
        return max(range(len(self.windows)), key=lambda i: self.depth(i, y, x))

    def window_for_box(self, box: tuple[float, float, float, float]) -> int:
        """The window that holds the whole box with the most room around it.

        If no window holds it whole, the one in which the box's centre lies deepest.
        """
        y0, x0, y1, x1 = box
        room = [min(self.depth(i, y0, x0), self.depth(i, y1, x1)) for i in range(len(self.windows))]
        best = max(range(len(self.windows)), key=room.__getitem__)
        if room[best] >= 0:
            return best
        return self.window_for_point((y0 + y1) / 2, (x0 + x1) / 2)

    def to_attrs(self) -> dict[str, Any]:
        """A JSON-able description (stored in the embedding store's signature)."""
        return {
            "slice_shape": list(self.slice_shape),
            "tile_size": self.tile_size,
            "halo": self.halo,
            "windows": [list(w) for w in self.windows],
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TileGrid:
        """Inverse of :meth:`to_attrs`."""
        return cls(
            slice_shape=(int(attrs["slice_shape"][0]), int(attrs["slice_shape"][1])),
            tile_size=int(attrs["tile_size"]),
            halo=int(attrs["halo"]),
            windows=tuple((int(a), int(b), int(c), int(d)) for a, b, c, d in attrs["windows"]),
        )


def tile_grid(
    slice_shape: tuple[int, int],
    *,
    tile_size: int = 1024,
    halo: int = 128,
    threshold: float = 1.5,
) -> TileGrid:
    """Cover a slice with windows, or with one window when it is small enough.

    Parameters
    ----------
    slice_shape
        ``(height, width)``.
    tile_size
        Window side; 1024 embeds windows at full resolution with the SAM encoders.
    halo
        Overlap on each side: neighbouring windows share ``2 * halo`` pixels.
    threshold
        Slices whose longer side is at most ``threshold * tile_size`` are not tiled
        (they are resized to the model input as a whole).
    """
    h, w = (int(slice_shape[0]), int(slice_shape[1]))
    if h < 1 or w < 1:
        raise ValueError(f"cannot tile an empty slice of shape {slice_shape}")
    if tile_size <= 2 * halo or halo < 0:
        raise ValueError(f"tile_size ({tile_size}) must exceed twice the halo ({halo})")
    if max(h, w) <= threshold * tile_size:
        return TileGrid((h, w), 0, 0, ((0, 0, h, w),))
    stride = tile_size - 2 * halo
    windows = tuple(
        (y, x, min(y + tile_size, h), min(x + tile_size, w))
        for y in _starts(h, tile_size, stride)
        for x in _starts(w, tile_size, stride)
    )
    return TileGrid((h, w), tile_size, halo, windows)
