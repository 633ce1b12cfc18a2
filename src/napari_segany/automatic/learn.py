"""Automatic segmentation that follows the user's own objects: parameters learnt from them.

After a user has drawn or committed some objects, "segment the rest" should look for
objects like those: of their size, as bright or as dark against their surroundings as
they are. :func:`learn_params` measures the objects given and returns
:class:`~napari_segany.automatic.segment.AutomaticParams` for the seeded mode:

* ``seed_radius`` spans the objects' radii (the radius of a disc of the same area), from
  0.6 times the smallest to 1.5 times the largest: seeds are looked for at their scale;
* ``seed_polarity`` is ``"bright"`` or ``"dark"``: the objects' mean grey against a ring
  of 3 pixels around each, by majority;
* ``points_per_side`` puts the finest grid's points no further apart than the smaller
  objects are wide (three quarters of the 10th percentile of their diameters), between
  8 and 64 points per side of the largest window;
* ``min_area`` is a quarter of the smallest object's area (at least the default's 16);
  ``max_area_fraction`` allows four times the largest object (at least the default's).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .params import AutomaticParams

if TYPE_CHECKING:
    from ..volume.volume import Volume

__all__ = ["learn_params"]

#: Fewest objects to learn from.
MIN_EXAMPLES = 3
#: The ring around an object whose grey it is compared with, in pixels.
RING = 3


def learn_params(
    volume: Volume | np.ndarray,
    labels: np.ndarray,
    params: AutomaticParams | None = None,
    *,
    window: int | None = None,
) -> AutomaticParams:
    """Automatic-segmentation parameters for objects like the labelled ones.

    Parameters
    ----------
    volume
        The image: a :class:`~napari_segany.Volume`, or an array of the labels' shape
        (opened with :func:`~napari_segany.open_volume`'s defaults).
    labels
        ``(Y, X)`` or ``(Z, Y, X)`` instance labels of the examples (0: not labelled);
        every slice's pieces of an id count as objects of that slice.
    params
        The parameters to start from (default :class:`AutomaticParams`); the fields
        learnt are replaced, ``mode`` becomes ``"seeded"``.
    window
        The side in pixels of the windows segmented (default: the slice's longer side,
        at most 1024), for ``points_per_side`` and ``max_area_fraction``.

    Returns
    -------
    AutomaticParams

    Raises
    ------
    ValueError
        Fewer than :data:`MIN_EXAMPLES` objects, or labels of another shape than the image.
    """
    from ..volume.volume import Volume, open_volume

    params = AutomaticParams() if params is None else params
    vol = volume if isinstance(volume, Volume) else open_volume(np.asarray(volume))
    labels = np.asarray(labels)
    stack = labels[None] if labels.ndim == 2 else labels
    if stack.ndim != 3 or stack.shape != (len(vol), *vol.shape[-2:]):
        raise ValueError(
            f"the labels have shape {labels.shape}, the image {tuple(vol.shape)}: "
            "give labels of the image's shape"
        )
    areas: list[int] = []
    brighter = darker = 0
    for z in np.flatnonzero(stack.reshape(len(stack), -1).any(axis=1)):
        image = vol.model_slice(int(z))
        grey = image.mean(axis=-1) if image.ndim == 3 else image
        for where in ndimage.find_objects(stack[z]):
            if where is None:
                continue
            label = stack[z][where].max()
            ys = slice(max(where[0].start - RING, 0), where[0].stop + RING)
            xs = slice(max(where[1].start - RING, 0), where[1].stop + RING)
            inside = stack[z][ys, xs] == label
            ring = ndimage.binary_dilation(inside, iterations=RING) & (stack[z][ys, xs] == 0)
            areas.append(int(inside.sum()))
            if ring.any():
                if grey[ys, xs][inside].mean() >= grey[ys, xs][ring].mean():
                    brighter += 1
                else:
                    darker += 1
    if len(areas) < MIN_EXAMPLES:
        raise ValueError(
            f"{len(areas)} labelled object(s) to learn from; label at least {MIN_EXAMPLES}"
        )
    radii = np.sqrt(np.asarray(areas) / np.pi)
    side = window or min(max(vol.shape[-2:]), 1024)
    spacing = 0.75 * 2 * float(np.percentile(radii, 10))
    default = AutomaticParams()
    return dataclasses.replace(
        params,
        mode="seeded",
        seed_radius=(max(1.0, 0.6 * float(radii.min())), 1.5 * float(radii.max())),
        seed_polarity="bright" if brighter >= darker else "dark",
        points_per_side=int(np.clip(np.ceil(side / spacing), 8, 64)),
        min_area=max(default.min_area, int(min(areas) // 4)),
        max_area_fraction=float(min(1.0, max(default.max_area_fraction, 4 * max(areas) / side**2))),
    )
