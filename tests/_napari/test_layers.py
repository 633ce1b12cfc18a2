"""The layers the widget draws (:mod:`napari_segany._napari.layers`), without a viewer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_segany._napari.layers import outline


def _whole_slice_outline(labels: np.ndarray) -> np.ndarray:
    """The outline filtered over the whole slice: what the box-only outline must equal."""
    width = max(1, round(min(labels.shape) / 256))
    around = {"size": 2 * width + 1, "mode": "constant", "cval": 0}
    border = ndimage.maximum_filter(labels, **around) != ndimage.minimum_filter(labels, **around)
    return np.where(border, labels, 0)


@pytest.mark.parametrize("size", [64, 700])
@pytest.mark.parametrize("seed", range(4))
def test_the_outline_is_the_objects_border_as_over_the_whole_slice(size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.uint16)
    for label in range(1, 4):  # discs anywhere, some cut by the slice's edge
        cy, cx = rng.integers(0, size, 2)
        radius = rng.integers(2, size // 4)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = label
    drawn = outline(labels)
    assert drawn.dtype == labels.dtype
    np.testing.assert_array_equal(drawn, _whole_slice_outline(labels))
    width = max(1, round(size / 256))
    for label in np.unique(labels[labels > 0]):  # a border, not the filled objects
        inside = ndimage.binary_erosion(labels == label, np.ones((3, 3)), iterations=width)
        assert (drawn == label).any() and not drawn[inside].any()


def test_an_empty_slice_has_no_outline() -> None:
    assert not outline(np.zeros((40, 50), np.uint8)).any()
