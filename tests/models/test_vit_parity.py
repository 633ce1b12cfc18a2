"""The ViT encoder (the vit_b / vit_l / vit_h code path) against the reference outputs.

``vit_small_random.pt`` holds a small random-weight ViT of the same design and the
reference implementation's output for a fixed input.
"""

from __future__ import annotations

import pytest
import torch

from napari_segany.models import ImageEncoderViT
from napari_segany.models.fast import set_fused_attention

from ._reference import DATA


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(DATA / "vit_small_random.pt", weights_only=True)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_small_random_vit_matches_reference(reference: dict, fused: bool) -> None:
    config = dict(reference["config"])
    config["global_attn_indexes"] = tuple(config["global_attn_indexes"])
    encoder = ImageEncoderViT(**config).eval()
    encoder.load_state_dict(reference["state_dict"], strict=True)
    set_fused_attention(encoder, fused)
    with torch.inference_mode():
        out = encoder(reference["input"].float())
    expected = reference["output"]
    assert out.shape == expected.shape == (1, 256, 64, 64)
    rel_l2 = ((out - expected).norm() / expected.norm()).item()
    assert rel_l2 < 1e-4


def test_relative_position_table_is_resized_for_other_sizes() -> None:
    """A table trained for 14 x 14 windows still serves a 20 x 20 grid (linear resize)."""
    from napari_segany.models.vit import relative_positions

    table = torch.arange(27, dtype=torch.float32)[:, None].repeat(1, 4)
    same = relative_positions(14, 14, table)
    assert same.shape == (14, 14, 4)
    assert same[0, 0, 0] == 13 and same[13, 0, 0] == 26 and same[0, 13, 0] == 0
    resized = relative_positions(20, 20, table)
    assert resized.shape == (20, 20, 4)
    assert torch.all(resized[:, :, 0].diff(dim=0) > 0)  # still increasing with q - k
