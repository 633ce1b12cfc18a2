"""MobileSAM with the real official weights against the reference implementation's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_segany.model import SamModel, load_model

from ._reference import CASES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[True, False], ids=["fast", "plain"])
def model(request: pytest.FixtureRequest, mobile_sam_checkpoint: Path) -> SamModel:
    return load_model("mobile_sam", device="cpu", fast=request.param, progress=False)


def _prompt(ref: dict[str, np.ndarray], case: str) -> dict:
    """The case's prompt converted to our convention: (y, x) points, (y0, x0, y1, x1) box."""
    get = lambda key: ref.get(f"{case}__{key}")  # noqa: E731
    prompt: dict = {"multimask": bool(get("multimask_output"))}
    if get("point_coords") is not None:
        prompt["points"] = get("point_coords")[:, ::-1]
        prompt["labels"] = get("point_labels")
    if get("box") is not None:
        prompt["boxes"] = get("box")[[1, 0, 3, 2]]
    if get("mask_input") is not None:
        prompt["mask_logits"] = get("mask_input")
    return prompt


def _reference_embedding(ref: dict[str, np.ndarray]):
    from napari_segany.model import ImageEmbedding
    from napari_segany.models import input_size

    original = ref["image"].shape
    return ImageEmbedding(torch.from_numpy(ref["embedding"]), original, input_size(original))


def test_embedding_from_resized_image_matches(model: SamModel, coins_reference: dict) -> None:
    rgb = torch.from_numpy(coins_reference["resized_rgb"]).permute(2, 0, 1)[None].float()
    features = model.encode(model.net.normalize_and_pad(rgb))
    expected = torch.from_numpy(coins_reference["embedding"])
    assert (features - expected).abs().max().item() < 1e-3
    assert ((features - expected).norm() / expected.norm()).item() < 1e-4


@pytest.mark.parametrize("case", sorted(CASES))
def test_decoder_matches_on_the_reference_embedding(
    model: SamModel, coins_reference: dict, case: str
) -> None:
    decoded = model.decode(_reference_embedding(coins_reference), **_prompt(coins_reference, case))
    iou = decoded.iou[0].numpy()
    low_res = decoded.low_res_logits[0].numpy()
    np.testing.assert_allclose(iou, coins_reference[f"{case}__iou_predictions"], atol=1e-4, rtol=0)
    assert np.abs(low_res - coins_reference[f"{case}__low_res_logits"]).max() < 1e-3


@pytest.fixture(scope="module")
def coins_embedding(model: SamModel, coins_reference: dict):
    return model.embed_image(coins_reference["image"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_masks_end_to_end_from_the_original_image(
    model: SamModel, coins_reference: dict, coins_embedding, case: str
) -> None:
    decoded = model.decode(coins_embedding, **_prompt(coins_reference, case))
    masks = (model.upscale(decoded.low_res_logits, coins_embedding)[0] > 0).numpy()
    expected = coins_reference[f"{case}__masks"]
    assert masks.shape == expected.shape == (expected.shape[0], 303, 384)
    for ours, theirs in zip(masks, expected, strict=True):
        assert theirs.sum() > 50  # a real object, not an empty mask
        iou = (ours & theirs).sum() / (ours | theirs).sum()
        assert iou >= 0.99
