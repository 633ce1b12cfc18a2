"""Where an object ends in z: the slice where its signal falls to half.

Out of focus, an object's blurred light still looks like an object to SAM, on the slices
above and below it, so a mask found there is no proof that the object is there. What
ends it is its signal: the mean intensity inside its mask less the mean in a ring
around it. An outline in y and x is drawn where the intensity falls halfway from the
object to its surroundings; the same half-maximum edge in z puts the end where the
signal falls below about half of the object's strongest slice. Propagation
(:mod:`napari_segany.propagate`) stops there, and automatic segmentation trims the slices
of each linked 3D object beyond it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["MIN_CONTRAST", "MIN_SIGNAL_RATIO", "ends", "standout", "standout_at"]

MIN_SIGNAL_RATIO = 0.4
"""Least signal of an object's slice relative to its strongest (or annotated) slice.

Set on the development volumes (real confocal nuclei and the synthetic sample): 0.4 puts
no labels on the synthetic sample's empty slices; 0.3 to 0.5 move the real nuclei's ends
by about a slice either way."""

MIN_CONTRAST = 0.25
"""Least contrast (signal over the pooled standard deviation) on an object's reference
slice for its signal to say anything: an object that does not stand out from its
surroundings by intensity (a texture) is never ended by it. Real nuclei and EM profiles
stand out by 0.4 to 1.4 (5th percentile to median), the synthetic nuclei by about 5."""

GAP, RING = 3, 5
"""The ring around a mask starts ``GAP`` pixels out and is ``RING`` pixels wide, so that a
mask a little smaller than its object does not count the object's own rim as
surroundings."""


def standout(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """How much a mask stands out from a ring around it: ``(contrast, signal)``.

    Parameters
    ----------
    image
        ``(Y, X)`` intensities.
    mask
        Boolean, the same shape (only a crop around it is read).

    Returns
    -------
    contrast, signal
        Signal: the mean intensity inside less the mean in the ring. Contrast: the
        signal's size over the pooled standard deviation of the two. Both 0 for an
        empty mask or one with no ring (it fills the image).
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return 0.0, 0.0
    reach = GAP + RING + 1
    y0, x0 = max(int(ys.min()) - reach, 0), max(int(xs.min()) - reach, 0)
    y1, x1 = int(ys.max()) + reach + 1, int(xs.max()) + reach + 1
    mask, image = mask[y0:y1, x0:x1], image[y0:y1, x0:x1]
    near = ndimage.binary_dilation(mask, iterations=GAP)
    around = ndimage.binary_dilation(near, iterations=RING) & ~near
    inside, outside = image[mask], image[around]
    if outside.size == 0:
        return 0.0, 0.0
    signal = float(inside.mean() - outside.mean())
    spread = np.sqrt((inside.var() + outside.var()) / 2) + 1e-3
    return float(abs(signal) / spread), signal


def standout_at(image: np.ndarray, y: int, x: int, crop: np.ndarray) -> tuple[float, float]:
    """:func:`standout` of a mask given as a crop at ``(y, x)`` of ``image``; only the
    crop and the ring around it are read."""
    reach = GAP + RING + 1
    y0, x0 = max(y - reach, 0), max(x - reach, 0)
    y1, x1 = y + crop.shape[0] + reach, x + crop.shape[1] + reach
    window = image[y0:y1, x0:x1]
    mask = np.zeros(window.shape, dtype=bool)
    mask[y - y0 : y - y0 + crop.shape[0], x - x0 : x - x0 + crop.shape[1]] = crop
    return standout(window, mask)


def ends(
    measures: Sequence[tuple[float, float]], min_ratio: float = MIN_SIGNAL_RATIO
) -> tuple[int, int]:
    """Where an object that runs through consecutive slices begins and ends.

    Parameters
    ----------
    measures
        The object's ``(contrast, signal)`` on each of its slices, in z order
        (:func:`standout`).
    min_ratio
        The first slice from either side whose signal reaches this share of the
        strongest slice's is the object's end there.

    Returns
    -------
    (first, stop)
        The object is on ``slices[first:stop]``; all of them when there is no signal to
        judge by (no slice stands out by :data:`MIN_CONTRAST`). A dark object (most
        signals negative) is judged by its darkness.
    """
    if not measures:
        return 0, 0
    contrasts, values = np.asarray(measures, dtype=np.float64).T
    if contrasts.max() < MIN_CONTRAST:
        return 0, values.size
    if np.median(values) < 0:
        values = -values
    strongest = values.max(initial=0.0)
    if strongest <= 0:
        return 0, values.size
    strong = np.flatnonzero(values >= min_ratio * strongest)
    return int(strong[0]), int(strong[-1]) + 1
