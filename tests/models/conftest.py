"""Fixtures for the model tests: the reference outputs and the real MobileSAM weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ._reference import DATA


@pytest.fixture(scope="session")
def coins_reference() -> dict[str, np.ndarray]:
    """Outputs of the reference MobileSAM on ``skimage.data.coins()`` (see tests/data/README.md)."""
    with np.load(DATA / "mobile_sam_coins.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def mobile_sam_checkpoint() -> Path:
    """The official MobileSAM checkpoint, fetched through the registry and verified."""
    from napari_segany.weights import fetch

    return fetch("mobile_sam", progress=False)
