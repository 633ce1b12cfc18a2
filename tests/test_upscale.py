"""Upscaling only the region a mask can occupy gives exactly the full upscaled mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_segany.upscale import upscale_mask, upscale_region


def full_upscale(low_res: torch.Tensor, resized: tuple[int, int], original: tuple[int, int]):
    """The reference's two-step upscale of the whole grid."""
    x = F.interpolate(low_res[None, None], (1024, 1024), mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    return F.interpolate(x, original, mode="bilinear", align_corners=False)[0, 0]


@pytest.mark.parametrize(
    ("resized", "original"),
    [((808, 1024), (303, 384)), ((1024, 1024), (512, 512)), ((1024, 770), (2048, 1540))],
)
def test_region_upscale_equals_the_full_upscale(resized, original) -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        low = torch.full((256, 256), -8.0)
        y, x = rng.integers(0, [resized[0] // 4 - 20, resized[1] // 4 - 20])
        h, w = rng.integers(2, 20, size=2)
        low[y : y + h, x : x + w] = torch.from_numpy(rng.uniform(-2, 6, (h, w)).astype(np.float32))
        full = full_upscale(low, resized, original)
        region, (y0, x0, y1, x1) = upscale_region(low, 1024, resized, original)
        torch.testing.assert_close(region, full[y0:y1, x0:x1], atol=5e-4, rtol=1e-4)
        outside = full.clone()
        outside[y0:y1, x0:x1] = -1
        assert (outside <= 0).all()  # nothing positive outside the region
        np.testing.assert_array_equal(
            upscale_mask(low, 1024, resized, original), (full > 0).numpy()
        )


def test_empty_mask_costs_nothing() -> None:
    logits, region = upscale_region(torch.full((256, 256), -3.0), 1024, (1024, 1024), (64, 64))
    assert logits is None and region == (0, 0, 0, 0)
    assert not upscale_mask(torch.full((256, 256), -3.0), 1024, (1024, 1024), (64, 64)).any()
