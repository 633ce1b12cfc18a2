"""What automatic segmentation reads from the image itself: blob seeds and the background.

Both are cheap (tens of milliseconds on a 512 x 512 slice) and both only steer where the
decoder is asked; what becomes an object is still decided by the decoder's masks and
their quality filters.

*Seeds.* Nuclei and cells in fluorescence, and the cell profiles of electron micrographs,
are brighter than what surrounds them. A blob of radius ``r`` answers most strongly to a
scale-normalised Laplacian of Gaussian of ``sigma = r / sqrt(2)``, at its centre: the
seeds are the maxima of that answer over position and scale. A click at an object's
centre is the best single prompt SAM can get; a seed on something that is not an object
costs one decoder pass and nothing else.

*Background.* The most common smoothed grey level of a microscopy image is its
background (the dark of a fluorescence image, the glass of a bright field), and the
background is flat: pixels within a few noise levels of that grey, away from anything
else, are a background estimate. It can be wrong (an electron micrograph's most common
grey is the inside of its cells), so it is only a hint, which
:mod:`napari_segany.automatic.plan` checks against the objects found before using it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["background_hint", "blob_seeds"]

#: A seed's answer must reach this share of the strongest in the image: weaker maxima
#: are noise, or texture inside objects.
MIN_RESPONSE_SHARE = 0.08
#: Scales tried per doubling of the radius.
SCALES_PER_OCTAVE = 3
#: Blobs are looked for on a copy of the image no finer than this many times the smallest
#: radius looked for, per octave of radii (a pyramid: large blobs on small copies).
PIXELS_PER_RADIUS = 3.0
#: Background: the grey of the background is this percentile of a neighbourhood of this
#: side in pixels (or 100 less it, when the background is bright) ...
BACKGROUND_PERCENTILE = 20
BACKGROUND_WINDOW = 128
#: ... and a pixel is background within this many noise levels of it ...
BACKGROUND_NOISE_LEVELS = 3.0
#: ... or this share of the image's grey range, whichever is wider ...
BACKGROUND_MIN_BAND = 0.04
#: ... and at least this many pixels from anything that is not.
BACKGROUND_MARGIN = 3


def _grey(image: np.ndarray) -> np.ndarray:
    """Grey levels in 0..1 between the 0.5th and 99.5th percentiles."""
    grey = np.asarray(image, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=-1)
    lo, hi = np.percentile(grey, (0.5, 99.5))
    if hi <= lo:
        return np.zeros(grey.shape, dtype=np.float32)
    return np.clip((grey - lo) / (hi - lo), 0.0, 1.0)


def _shrunk(grey: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each ``factor x factor`` block (edge blocks cut to what there is)."""
    if factor == 1:
        return grey
    h, w = grey.shape
    ph, pw = -h % factor, -w % factor
    padded = np.pad(grey, ((0, ph), (0, pw)), mode="edge")
    return padded.reshape((h + ph) // factor, factor, (w + pw) // factor, factor).mean(axis=(1, 3))


def blob_seeds(
    image: np.ndarray, radius: tuple[float, float] = (3.0, 64.0), *, bright: bool = True
) -> np.ndarray:
    """Centres of bright (or dark) blobs: ``(N, 2)`` ``(y, x)`` in image pixels, strongest
    first.

    Parameters
    ----------
    image
        ``(Y, X)`` or ``(Y, X, 3)``, any range.
    radius
        The smallest and largest radius of the objects looked for, in pixels.
    bright
        Blobs brighter than their surroundings (True) or darker (False).

    Returns
    -------
    numpy.ndarray
        float64 ``(N, 2)``. A blob answers at several scales and positions; it gives one
        seed, where it answers most, and seeds within three quarters of a stronger
        seed's radius are that blob again.
    """
    grey = _grey(image)
    if not bright:
        grey = 1.0 - grey
    h, w = grey.shape
    low, high = sorted(max(float(r), 1.0) for r in radius)
    count = max(1, int(np.ceil(np.log2(high / low) * SCALES_PER_OCTAVE)) + 1)
    radii = np.geomspace(low, high, count)
    best = np.full(grey.shape, -np.inf, dtype=np.float32)
    scale = np.zeros(grey.shape, dtype=np.int64)
    for i, r in enumerate(radii):
        # on the coarsest copy that keeps PIXELS_PER_RADIUS pixels per smallest radius
        factor = int(min(max(1.0, r / (low * PIXELS_PER_RADIUS)), max(1, min(h, w) // 16)))
        small = _shrunk(grey, factor)
        s = r / factor / np.sqrt(2)
        answer = -(s * s) * ndimage.gaussian_laplace(small, s)
        answer = np.repeat(np.repeat(answer, factor, axis=0), factor, axis=1)[:h, :w]
        better = answer > best
        best[better] = answer[better]
        scale[better] = i
    strongest = float(best.max())
    if strongest <= 0:
        return np.zeros((0, 2))
    size = max(3, int(2 * low) | 1)
    peaks = (best == ndimage.maximum_filter(best, size=size)) & (
        best >= MIN_RESPONSE_SHARE * strongest
    )
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-best[ys, xs], kind="stable")
    ys, xs = ys[order], xs[order]
    centres = np.stack([ys, xs], axis=1).astype(np.float64)
    return centres[_separate(centres, radii[scale[ys, xs]])]


def _separate(centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Indices of the seeds kept, strongest first: a seed within three quarters of a kept,
    stronger seed's radius (or of its own) is that blob again."""
    kept: list[int] = []
    for i in range(len(centres)):
        if kept:
            gap = np.hypot(*(centres[kept] - centres[i]).T)
            if np.any(gap < 0.75 * np.maximum(radii[kept], radii[i])):
                continue
        kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def background_hint(image: np.ndarray) -> np.ndarray:
    """Where the image looks like background: ``(Y, X)`` bool.

    The background's grey is taken per neighbourhood (:data:`BACKGROUND_WINDOW` pixels):
    a low percentile of it where the image's most common grey is dark (bright objects on
    a dark background, which may be uneven), a high one where it is bright. Pixels whose
    smoothed grey lies within :data:`BACKGROUND_NOISE_LEVELS` noise levels (or
    :data:`BACKGROUND_MIN_BAND` of the range) of it are background, less a margin of
    :data:`BACKGROUND_MARGIN` pixels along its border.
    """
    grey = _grey(image)
    h, w = grey.shape
    smooth = ndimage.gaussian_filter(grey, 2.0)
    noise = 1.4826 * float(np.median(np.abs(grey - ndimage.gaussian_filter(grey, 1.0))))
    counts, edges = np.histogram(smooth, bins=64, range=(0.0, 1.0))
    common = float(edges[counts.argmax()])
    percent = BACKGROUND_PERCENTILE if common < 0.5 else 100 - BACKGROUND_PERCENTILE
    factor = max(1, min(h, w) // 64)
    small = _shrunk(smooth, factor)
    size = max(3, int(BACKGROUND_WINDOW / factor) | 1)
    level = ndimage.percentile_filter(small, percent, size=size, mode="reflect")
    level = np.repeat(np.repeat(level, factor, axis=0), factor, axis=1)[:h, :w]
    level = ndimage.uniform_filter(level, factor)  # no steps at the blocks' edges
    band = max(BACKGROUND_NOISE_LEVELS * noise, BACKGROUND_MIN_BAND)
    flat = np.abs(smooth - level) < band
    return ndimage.binary_erosion(flat, iterations=BACKGROUND_MARGIN)
