"""What fine-tuning learns from: the user's objects, in the decoder's own frame.

Every label id on every slice is one object, as in the interactive evaluation. Objects are
split by label id (all slices of an id on one side), a share held back for validation.
Each training object keeps, in the model frame of the window its embedding belongs to:
the mask's covered fraction on the decoder's ``256 x 256`` logit grid (the target), its
tight box, its deepest point and a set of interior points to click. Prompts are placed as
the evaluation's simulated user places them (:mod:`~napari_segany.evaluate.prompts`), so what
is learnt
is what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..evaluate.prompts import deepest_point, tight_box
from ..models import input_size
from ..prompts import boxes_to_model, mask_fraction, points_to_model
from ..tiling import TileGrid

MIN_OBJECTS = 10
"""Fewest objects (label ids) fine-tuning accepts: enough to hold some back."""

MAX_EXAMPLES = 600
"""Training objects on slices kept at most (a random sample of the rest is left out)."""

INTERIOR_POINTS = 16
"""Click positions kept per object, drawn from its deeper half."""


@dataclass
class Example:
    """One object on one slice, in its window's model frame (``(x, y)`` pixels).

    Attributes
    ----------
    pair, z, tile, label
        Which image pair, slice, embedding window and label id.
    target
        ``(256, 256)`` float32: the share of each logit cell the object covers.
    box
        ``(4,)`` tight box ``(x0, y0, x1, y1)``.
    clicks
        ``(K, 2)`` click positions; the first is the deepest point.
    valid
        ``(rows, cols)`` of the logit grid that lie on the image (the rest is padding).
    """

    pair: int
    z: int
    tile: int
    label: int
    target: torch.Tensor
    box: np.ndarray
    clicks: np.ndarray
    valid: tuple[int, int]


def split_ids(
    labels: list[np.ndarray], share: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each pair's label ids for training and for validation.

    Raises
    ------
    ValueError
        Fewer than :data:`MIN_OBJECTS` objects in all, or a ``share`` outside (0, 1).
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"the validation share must lie between 0 and 1, got {share}")
    ids = [np.unique(stack[stack > 0]) for stack in labels]
    total = sum(len(i) for i in ids)
    if total < MIN_OBJECTS:
        raise ValueError(
            f"fine-tuning needs at least {MIN_OBJECTS} labelled objects (some are held "
            f"back to check it), found {total}: label {MIN_OBJECTS - total} more"
        )
    held_total = max(2, round(share * total))
    order = [(p, int(i)) for p, pair_ids in enumerate(ids) for i in pair_ids]
    chosen = rng.choice(len(order), size=held_total, replace=False)
    held = {order[k] for k in chosen}
    train = [
        np.array([i for i in pair_ids if (p, int(i)) not in held], dtype=np.int64)
        for p, pair_ids in enumerate(ids)
    ]
    val = [
        np.array([i for i in pair_ids if (p, int(i)) in held], dtype=np.int64)
        for p, pair_ids in enumerate(ids)
    ]
    return train, val


def examples_of(
    pair: int,
    labels: np.ndarray,
    ids: np.ndarray,
    grid: TileGrid,
    rng: np.random.Generator,
) -> list[Example]:
    """The training examples of one pair: each of ``ids`` on each slice it is on."""
    out = []
    for z in range(labels.shape[0]):
        found = ndimage.find_objects(labels[z])
        for label in ids:
            if label > len(found) or found[label - 1] is None:
                continue
            out.append(_example(pair, z, int(label), labels[z], found[label - 1], grid, rng))
    return out


def _example(
    pair: int,
    z: int,
    label: int,
    plane: np.ndarray,
    where: tuple[slice, slice],
    grid: TileGrid,
    rng: np.random.Generator,
) -> Example:
    ys, xs = where
    crop = plane[where] == label
    box = tight_box(crop) + np.array([ys.start, xs.start, ys.start, xs.start], dtype=np.float64)
    y0, x0, y1, x1 = (float(v) for v in box)
    tile = grid.window_for_box((y0, x0, y1, x1))
    wy0, wx0, wy1, wx1 = grid.windows[tile]
    original = (wy1 - wy0, wx1 - wx0)
    resized = input_size(original)
    mask = plane[wy0:wy1, wx0:wx1] == label
    target = torch.from_numpy(mask_fraction(mask, resized))
    origin = np.array([wy0, wx0], dtype=np.float64)
    clicks = [np.array(deepest_point(crop), dtype=np.float64)]
    depth = ndimage.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    deep = np.argwhere(depth >= max(1.0, 0.5 * depth.max()))
    picked = rng.choice(len(deep), size=min(INTERIOR_POINTS - 1, len(deep)), replace=False)
    clicks.extend(deep[picked].astype(np.float64))
    clicks_yx = np.stack(clicks) + np.array([ys.start, xs.start]) - origin
    return Example(
        pair=pair,
        z=z,
        tile=tile,
        label=label,
        target=target,
        box=boxes_to_model(box - np.concatenate([origin, origin]), original, resized),
        clicks=points_to_model(clicks_yx, original, resized),
        valid=((resized[0] + 3) // 4, (resized[1] + 3) // 4),
    )


def held_back_labels(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``labels`` with every id but ``ids`` set to background."""
    return np.where(np.isin(labels, ids), labels, 0).astype(labels.dtype, copy=False)


__all__ = [
    "INTERIOR_POINTS",
    "MAX_EXAMPLES",
    "MIN_OBJECTS",
    "Example",
    "examples_of",
    "held_back_labels",
    "split_ids",
]
