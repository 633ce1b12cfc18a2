"""Where automatic segmentation prompts, and where it need not.

SAM's automatic mask generator decodes every point of a dense grid, although most points
fall in an object already found or in the background and only repeat an answer already
had. Here the points come in rounds, coarse to fine: the seeds (if any), then grids of
``n/4``, ``n/2`` and ``n`` points per side. Each batch is made when it is due, leaving
out the points whose pixel is already *explained*:

* inside an object found: the smallest mask that passed every quality filter, of each
  point decoded so far (a point in it gives the object again, or a part of it; the
  smallest, so that a mask of two neighbours does not hide the second);
* inside the background, where the image's own estimate of it
  (:func:`~napari_segany.automatic.image.background_hint`) is trusted: only once the
  objects found keep out of it, so that an image whose most common grey is not its
  background (an electron micrograph) is decoded in full; or, on a slice where a round
  finds nothing, once several of its points decoded in the estimate found nothing
  there (the empty slices beyond a volume's objects);
* in a gap between those narrower than half the finest grid's spacing: the seams that
  blur leaves around objects.

A point on an object not yet found lies in none of these, so it is still decoded: the
objects of the full grid are found, for a fraction of its decoder passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from .image import background_hint, blob_seeds

if TYPE_CHECKING:
    from .params import AutomaticParams

__all__ = ["Plan", "grid_points", "grid_rounds"]

#: The coarsest grid of a coarse-to-fine schedule, in points per side.
COARSEST = 4
#: The image's background hint is trusted when at most this share of the objects found
#: (their pixels) lies in it.
HINT_MAX_OVERLAP = 0.1
#: ... or, while no object is found, once this many points decoded in it found nothing.
HINT_EMPTY_EVIDENCE = 8


def grid_points(points_per_side: int, shape: tuple[int, int]) -> np.ndarray:
    """``(n * n, 2)`` ``(y, x)`` points at the centres of an ``n x n`` grid of cells.

    Row by row, as SAM places them, stretched to the window's height and width.
    """
    n = int(points_per_side)
    centres = (np.arange(n) + 0.5) / n
    ys, xs = np.meshgrid(centres * shape[0], centres * shape[1], indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], axis=1)


def grid_rounds(points_per_side: int, shape: tuple[int, int]) -> list[np.ndarray]:
    """The grids of a coarse-to-fine schedule: ``n/4``, ``n/2``, ``n`` points per side
    (those of at least :data:`COARSEST`), coarsest first."""
    sides = [points_per_side // 4, points_per_side // 2, points_per_side]
    sides = sorted({s for s in sides if s >= COARSEST} | {points_per_side})
    return [grid_points(s, shape) for s in sides]


def _summed(mask: np.ndarray) -> np.ndarray:
    """Summed-area table of ``mask``, with a leading row and column of zeros."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=table[1:, 1:])
    return table


def in_opening(mask: np.ndarray, size: int, pixels: np.ndarray) -> np.ndarray:
    """Whether each ``(y, x)`` pixel lies in ``mask`` opened by a ``size x size`` square:
    in some ``size x size`` square that lies wholly in ``mask`` (and in the image).

    Two summed-area tables instead of the opening itself: which squares are full, then
    whether any full square covers each pixel (7 ms for a 512 x 512 mask and a thousand
    pixels on the development CPU, against 16 ms for the opening).
    """
    h, w = mask.shape
    if size > min(h, w):
        return np.zeros(len(pixels), dtype=bool)
    t = _summed(mask)
    full = (t[size:, size:] - t[:-size, size:] - t[size:, :-size] + t[:-size, :-size]) == size**2
    f = _summed(full)  # full[i, j]: the square whose top-left corner is (i, j)
    ys, xs = pixels[:, 0], pixels[:, 1]
    # the squares covering (y, x) have corners in [y - size + 1, y] x [x - size + 1, x]
    y0 = np.clip(ys - size + 1, 0, full.shape[0])
    y1 = np.clip(ys + 1, 0, full.shape[0])
    x0 = np.clip(xs - size + 1, 0, full.shape[1])
    x1 = np.clip(xs + 1, 0, full.shape[1])
    return (f[y1, x1] - f[y0, x1] - f[y1, x0] + f[y0, x0]) > 0


def _pixels(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The ``(N, 2)`` integer pixel of each ``(y, x)`` point, inside ``shape``."""
    pixels = points.astype(np.int64)
    return np.clip(pixels, 0, np.asarray(shape) - 1)


class Plan:
    """The points of one window, in rounds, and what the answers so far explain.

    Parameters
    ----------
    rounds
        ``(N, 2)`` ``(y, x)`` points in window pixels per round, decoded in order.
    shape
        ``(h, w)`` of the window.
    skip
        Leave out the points already explained (False: decode every point, as SAM).
    hint
        ``(h, w)`` bool background estimate from the image, or None; it is used once
        the objects found overlap it by at most :data:`HINT_MAX_OVERLAP` of their area.
    thinnest
        Unexplained gaps narrower than this many pixels count as explained. Half the
        finest grid's spacing: an object that narrow is found only if a point happens
        to fall on it, by the full grid as by this one.
    """

    def __init__(
        self,
        rounds: list[np.ndarray],
        shape: tuple[int, int],
        *,
        skip: bool = True,
        hint: np.ndarray | None = None,
        thinnest: int = 1,
    ) -> None:
        self.rounds = rounds
        self.skip = skip
        self.thinnest = int(thinnest)
        self.objects = np.zeros(shape, dtype=bool)
        self.hint = hint
        self.background: np.ndarray | None = None  # the hint, once it is trusted
        self.decoded = 0
        self.decoded_in_hint = 0  # points decoded inside the hint, found objects or not

    @classmethod
    def for_window(
        cls, params: AutomaticParams, shape: tuple[int, int], image: np.ndarray | None
    ) -> Plan:
        """The plan of ``params.mode`` for a window of ``shape`` with its ``image``."""
        if params.mode == "grid":
            return cls([grid_points(params.points_per_side, shape)], shape, skip=False)
        rounds = grid_rounds(params.points_per_side, shape)
        hint = None
        if image is not None:
            hint = background_hint(image)
            if params.mode == "seeded":  # the strongest, as many as the middle grid
                bright = params.seed_polarity == "bright"
                seeds = blob_seeds(image, params.seed_radius, bright=bright)
                rounds.insert(0, seeds[: (params.points_per_side // 2) ** 2])
        spacing = min(shape) / params.points_per_side
        return cls(rounds, shape, hint=hint, thinnest=max(1, int(spacing // 2)))

    def found(self, box: tuple[int, int, int, int], crop: np.ndarray) -> None:
        """A kept mask, ``crop`` at ``box`` in window pixels: its pixels are explained."""
        y0, x0, y1, x1 = box
        self.objects[y0:y1, x0:x1] |= crop

    def unexplained(self, points: np.ndarray) -> np.ndarray:
        """Which of ``(N, 2)`` ``(y, x)`` points lie in no explained pixel: ``(N,)`` bool.

        Unexplained gaps narrower than :attr:`thinnest` pixels (the seams between found
        objects and the background, which blur makes wide) count as explained.
        """
        ys, xs = _pixels(points, self.objects.shape).T
        open_ = ~self.objects
        if self.background is not None:
            open_ &= ~self.background
        if self.thinnest > 1:
            return in_opening(open_, self.thinnest, np.stack([ys, xs], axis=1))
        return open_[ys, xs]

    def _check_hint(self) -> None:
        """Trust the background hint if the objects found so far keep out of it; with no
        object found yet, if :data:`HINT_EMPTY_EVIDENCE` points decoded in it found none
        (a slice beyond the objects of a volume)."""
        if self.hint is None or self.background is not None:
            return
        area = np.count_nonzero(self.objects)
        if area == 0:
            if self.decoded_in_hint >= HINT_EMPTY_EVIDENCE:
                self.background = self.hint
                self.hint = None
            return  # else nothing to check it against yet
        if np.count_nonzero(self.objects & self.hint) <= HINT_MAX_OVERLAP * area:
            self.background = self.hint
        self.hint = None  # decided

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Batches of at most ``size`` points, round after round, each made when it is
        due (points explained by then left out); the hint is checked after each round,
        until a round has found objects to check it against."""
        for points in self.rounds:
            start = 0
            while start < len(points):
                rest = points[start:]
                if self.skip:
                    rest = rest[self.unexplained(rest)]
                if len(rest) == 0:
                    break
                batch = rest[:size]
                self.decoded += len(batch)
                if self.hint is not None:
                    inside = self.hint[tuple(_pixels(batch, self.hint.shape).T)]
                    self.decoded_in_hint += int(np.count_nonzero(inside))
                yield batch
                # the next batch starts after the last point taken, in the round's order
                last = np.flatnonzero((points == batch[-1]).all(axis=1))[0]
                start = int(last) + 1
            self._check_hint()
