"""napari sample-data contributions: the engine's sample arrays as napari layers.

The arrays come from :mod:`napari_segany.sample_data`; this module only names
and styles the layers, so it needs neither napari nor Qt at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..sample_data import coins, nuclei_volume

if TYPE_CHECKING:
    from napari.types import LayerDataTuple

__all__ = ["coins_sample", "nuclei_sample"]


def coins_sample() -> list[LayerDataTuple]:
    """The scikit-image coins photograph as one image layer, named "coins"."""
    return [(coins(), {"name": "coins"}, "image")]


def nuclei_sample() -> list[LayerDataTuple]:
    """The synthetic nuclei volume and its ground truth.

    Returns an image layer "nuclei" and a hidden labels layer
    "nuclei ground truth" with one id per nucleus.
    """
    image, labels = nuclei_volume()
    low, high = np.percentile(image, [0.1, 99.9])
    return [
        (
            image,
            {"name": "nuclei", "colormap": "gray", "contrast_limits": [float(low), float(high)]},
            "image",
        ),
        (labels, {"name": "nuclei ground truth", "visible": False}, "labels"),
    ]
