"""Sample data that works offline: a real 2D image and a synthetic 3D nuclei volume.

Nothing here touches the network. ``coins`` is read from the file that ships
inside scikit-image's wheel; ``nuclei_volume`` is generated from a seed.
Plain numpy arrays come out; the napari wrappers live in ``_sample_data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np
from scipy import ndimage

__all__ = ["coins", "nuclei_volume"]

# Nucleus geometry in voxels. Microscopy volumes are sampled more coarsely in z
# than in y/x, so the nuclei are flatter in voxel units than in microns.
_RADIUS_YX = (9.0, 17.0)
_MAX_ASPECT_YX = 1.5
_RADIUS_Z = (3.0, 4.6)
# Nuclei of adherent cells are flattened: the ellipsoids are cut off at this fraction
# of their z radius, which also keeps the first and last slice of each nucleus from
# being a speck a few pixels wide.
_CAP_Z = 0.85
_GAP_YX = 6.0  # minimum free space between two nuclei, seen from above
_MARGIN_YX = 3.0  # minimum distance of a nucleus to the volume's y/x border
_MIN_SHAPE = (8, 48, 48)


def coins() -> np.ndarray:
    """The greyscale "coins" photograph shipped with scikit-image.

    It is read from the file inside the installed scikit-image package, never
    downloaded, and it is the image our numerical-parity reference data was
    computed on.

    Returns
    -------
    numpy.ndarray
        A ``(303, 384)`` ``uint8`` array.

    Raises
    ------
    FileNotFoundError
        If the installed scikit-image does not ship ``coins.png``.
    """
    from skimage.io import imread

    path = resources.files("skimage.data") / "coins.png"
    if not path.is_file():
        raise FileNotFoundError(
            "scikit-image does not ship 'coins.png' in this installation; "
            "reinstall scikit-image from its wheel"
        )
    with resources.as_file(path) as file:
        image = np.asarray(imread(file))
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"unexpected coins image: shape {image.shape}, dtype {image.dtype}")
    return image


@dataclass(frozen=True)
class _Nucleus:
    center: tuple[float, float, float]  # z, y, x
    radii: tuple[float, float, float]  # z, and the two in-plane semi-axes
    angle: float  # in-plane rotation of the first in-plane semi-axis, radians
    brightness: float  # relative, 0..1


def nuclei_volume(
    shape: tuple[int, int, int] = (16, 256, 256), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic fluorescence volume of cell nuclei and its ground-truth labels.

    The volume looks like a nuclear stain (DAPI, Hoechst) imaged on a widefield
    or confocal microscope: flattened ellipsoidal nuclei of varied size,
    orientation and brightness, with a chromatin-like texture and one to three
    darker nucleoli each, blurred by an anisotropic point-spread function, on
    a dim, unevenly lit background, with photon (Poisson) and camera
    (Gaussian) noise. Every nucleus lies fully inside the volume, spans
    several z slices, and is separated from every other one by a gap of at
    least six pixels in y/x on every slice, so instance segmentation and
    propagation through z are well posed.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(Z, Y, X)`` size of the volume, at least ``(8, 48, 48)``. The nuclei
        have a fixed size in voxels; larger volumes hold more of them.
    seed : int, optional
        Seed of the random generator; the same seed gives the same arrays.

    Returns
    -------
    image : numpy.ndarray
        ``uint16`` array of ``shape``: the fluorescence intensities.
    labels : numpy.ndarray
        ``uint32`` array of ``shape``: 0 for background and ``1..N`` for the
        ``N`` nuclei, one id per nucleus, the same id on every slice it spans.

    Raises
    ------
    ValueError
        If ``shape`` is not three integers at least ``(8, 48, 48)``.
    """
    shape = _check_shape(shape)
    rng = np.random.default_rng(seed)
    nuclei = _place_nuclei(shape, rng)

    labels = np.zeros(shape, dtype=np.uint32)
    signal = np.zeros(shape, dtype=np.float32)
    # Chromatin texture: smooth noise shared by the whole volume, ~20 % contrast.
    texture = ndimage.gaussian_filter(
        rng.standard_normal(shape, dtype=np.float32), sigma=(0.8, 1.6, 1.6)
    )
    texture *= 0.2 / max(float(texture.std()), 1e-6)

    for label, nucleus in enumerate(nuclei, start=1):
        box, r2, dz = _ellipsoid(nucleus, shape)
        inside = (r2 <= 1.0) & (np.abs(dz) <= _CAP_Z)
        labels[box][inside] = label
        # Slightly brighter towards the centre, darker nucleoli, textured chromatin.
        value = nucleus.brightness * (0.8 + 0.2 * (1.0 - r2)) * (1.0 + texture[box])
        value *= _nucleoli(nucleus, box, rng)
        signal[box][inside] = value[inside]

    # The microscope's point-spread function, wider along the optical axis.
    blurred = ndimage.gaussian_filter(signal, sigma=(0.9, 1.1, 1.1))
    # Out-of-focus haze around bright objects and an unevenly lit field.
    haze = ndimage.gaussian_filter(signal, sigma=(2.0, 12.0, 12.0))
    y, x = np.ogrid[-1.0 : 1.0 : shape[1] * 1j, -1.0 : 1.0 : shape[2] * 1j]
    field = (0.05 + 0.02 * np.exp(-((y - 0.3) ** 2 + (x + 0.2) ** 2))).astype(np.float32)
    expected = blurred + 0.25 * haze + field[np.newaxis]

    # Photon noise at ~2500 photons for the brightest nuclei, then the camera's
    # offset and read noise.
    counts = rng.poisson(expected * 2500.0).astype(np.float32)
    counts += rng.normal(100.0, 6.0, size=shape).astype(np.float32)
    image = np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return image, labels


def _check_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(shape) != 3 or not all(isinstance(n, int | np.integer) for n in shape):
        raise ValueError(f"shape must be three integers (Z, Y, X), got {shape!r}")
    z, y, x = (int(n) for n in shape)
    if z < _MIN_SHAPE[0] or y < _MIN_SHAPE[1] or x < _MIN_SHAPE[2]:
        raise ValueError(f"shape must be at least {_MIN_SHAPE} to hold a nucleus, got {shape!r}")
    return z, y, x


def _place_nuclei(shape: tuple[int, int, int], rng: np.random.Generator) -> list[_Nucleus]:
    """Random sequential placement: keep a candidate only if it is clear of the others."""
    depth, height, width = shape
    # About a third of the field covered by nuclei, as in a moderately dense culture.
    target = max(1, round(0.3 * height * width / (np.pi * np.mean(_RADIUS_YX) ** 2)))
    max_rz = min(_RADIUS_Z[1], (depth - 3) / 2)
    placed: list[_Nucleus] = []
    for _ in range(50 * target):
        if len(placed) == target:
            break
        r_major = rng.uniform(*_RADIUS_YX)
        r_minor = max(_RADIUS_YX[0] * 0.8, r_major / rng.uniform(1.0, _MAX_ASPECT_YX))
        rz = rng.uniform(min(_RADIUS_Z[0], max_rz), max_rz)
        reach = r_major + _MARGIN_YX
        if 2 * reach >= min(height, width):
            continue
        cy = rng.uniform(reach, height - 1 - reach)
        cx = rng.uniform(reach, width - 1 - reach)
        # Keep one clear slice above and below so every nucleus ends inside the volume.
        cz = rng.uniform(rz + 1.0, depth - 2.0 - rz)
        clear = all(
            np.hypot(cy - other.center[1], cx - other.center[2])
            >= r_major + max(other.radii[1:]) + _GAP_YX
            for other in placed
        )
        if clear:
            placed.append(
                _Nucleus(
                    center=(cz, cy, cx),
                    radii=(rz, r_major, r_minor),
                    angle=rng.uniform(0.0, np.pi),
                    brightness=rng.uniform(0.35, 1.0),
                )
            )
    return placed


def _ellipsoid(
    nucleus: _Nucleus, shape: tuple[int, int, int]
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray]:
    """The nucleus's bounding box, and there its normalised squared radius and z offset.

    The squared radius is <= 1 inside the full ellipsoid; the z offset is in units of
    the z radius and broadcasts against it.
    """
    reach = (nucleus.radii[0], max(nucleus.radii[1:]), max(nucleus.radii[1:]))
    bz, by, bx = (
        slice(max(0, int(np.floor(c - r)) - 1), min(n, int(np.ceil(c + r)) + 2))
        for c, r, n in zip(nucleus.center, reach, shape, strict=True)
    )
    box = (bz, by, bx)
    z, y, x = np.ogrid[box]
    dz = (z - nucleus.center[0]) / nucleus.radii[0]
    dy = y - nucleus.center[1]
    dx = x - nucleus.center[2]
    cos, sin = np.cos(nucleus.angle), np.sin(nucleus.angle)
    along = (cos * dy + sin * dx) / nucleus.radii[1]
    across = (-sin * dy + cos * dx) / nucleus.radii[2]
    r2 = (dz**2 + along**2 + across**2).astype(np.float32)
    return box, r2, dz


def _nucleoli(
    nucleus: _Nucleus, box: tuple[slice, slice, slice], rng: np.random.Generator
) -> np.ndarray:
    """A multiplicative factor < 1 at one to three nucleoli inside the nucleus."""
    z, y, x = np.ogrid[box]
    factor = np.ones(np.broadcast_shapes(z.shape, y.shape, x.shape), dtype=np.float32)
    for _ in range(int(rng.integers(1, 4))):
        # A point well inside the nucleus: at most half its radius from the centre.
        offset = rng.uniform(-0.5, 0.5, size=3) * np.asarray(
            [nucleus.radii[0], min(nucleus.radii[1:]), min(nucleus.radii[1:])]
        )
        center = np.asarray(nucleus.center) + offset
        radius = rng.uniform(1.8, 3.2)
        d2 = (
            ((z - center[0]) * 2.5) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2
        ) / radius**2
        factor *= 1.0 - 0.45 * np.exp(-d2).astype(np.float32)
    return factor
