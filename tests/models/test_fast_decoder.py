"""The rearranged decoder gives the plain decoder's outputs for every kind of prompt."""

from __future__ import annotations

import pytest
import torch

from napari_segany.models.fast_decoder import FastDecoder
from napari_segany.models.mask_decoder import MaskDecoder
from napari_segany.models.prompt_encoder import PromptEncoder


@pytest.fixture(scope="module")
def parts() -> tuple[PromptEncoder, MaskDecoder]:
    torch.manual_seed(3)
    encoder, decoder = PromptEncoder().eval(), MaskDecoder().eval()
    with torch.no_grad():  # untrained embeddings are zeros; make every term count
        for p in encoder.parameters():
            p.normal_(0, 0.5)
        for name, p in decoder.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif "norm" in name:  # layer norm scales: the carried convolution folds them in
                p.normal_(1, 0.3)
    return encoder, decoder


def _features(seed: int) -> torch.Tensor:
    return torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(seed))


def _points(b: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(b * 100 + n)
    xy = torch.rand(b, n, 2, generator=g) * 1000
    labels = torch.randint(0, 2, (b, n), generator=g)
    labels[:, 0] = 1
    return xy, labels


def _both(
    parts: tuple[PromptEncoder, MaskDecoder],
    features: torch.Tensor,
    multimask: bool,
    *,
    points: tuple[torch.Tensor, torch.Tensor] | None = None,
    boxes: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    fast: FastDecoder | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    encoder, decoder = parts
    fast = fast or FastDecoder(encoder, decoder)
    with torch.inference_mode():
        sparse, dense = encoder(points, boxes, masks)
        plain = decoder(features, encoder.get_dense_pe(), sparse, dense, multimask)
        quick = fast(features, sparse, None if masks is None else dense, multimask)
    return plain, quick


def _assert_close(plain: tuple, quick: tuple) -> None:
    assert quick[0].shape == plain[0].shape and quick[1].shape == plain[1].shape
    scale = plain[0].abs().max().item()
    torch.testing.assert_close(quick[0], plain[0], rtol=0, atol=2e-5 * scale)
    torch.testing.assert_close(quick[1], plain[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize(("b", "n"), [(1, 1), (3, 2), (2, 6), (1, 20)])
def test_points_match_the_plain_decoder(parts, b: int, n: int, multimask: bool) -> None:
    # n=20 makes 25 tokens: more than the head width, where the plain order is kept
    _assert_close(*_both(parts, _features(0), multimask, points=_points(b, n)))


def test_boxes_and_points_with_boxes_match(parts) -> None:
    boxes = torch.tensor([[10.0, 20.0, 400.0, 380.0], [500.0, 60.0, 900.0, 700.0]])
    _assert_close(*_both(parts, _features(1), False, boxes=boxes))
    _assert_close(*_both(parts, _features(1), True, points=_points(2, 1), boxes=boxes))


def test_mask_prompts_match(parts) -> None:
    masks = torch.randn(2, 1, 256, 256, generator=torch.Generator().manual_seed(5)) * 4
    _assert_close(*_both(parts, _features(2), False, points=_points(2, 1), masks=masks))


def test_the_kept_image_work_follows_the_embedding(parts) -> None:
    encoder, decoder = parts
    fast = FastDecoder(encoder, decoder)
    first, second = _features(10), _features(11)
    _assert_close(*_both(parts, first, True, points=_points(1, 1), fast=fast))
    kept = fast._image
    _assert_close(*_both(parts, first, True, points=_points(2, 3), fast=fast))
    assert fast._image is kept  # same embedding: reused
    _assert_close(*_both(parts, second, True, points=_points(1, 1), fast=fast))
    assert fast._image is not kept and fast._image.features is second
    _assert_close(*_both(parts, first, False, points=_points(1, 2), fast=fast))
    assert fast._image is kept  # back to the first window: its work was kept too


def test_only_the_last_images_are_kept(parts) -> None:
    from napari_segany.models.fast_decoder import KEPT_IMAGES

    encoder, decoder = parts
    fast = FastDecoder(encoder, decoder)
    images = [_features(20 + i) for i in range(KEPT_IMAGES + 1)]
    for features in images:
        _assert_close(*_both(parts, features, True, points=_points(1, 1), fast=fast))
    kept = [state.features for state in fast._images]
    assert len(kept) == KEPT_IMAGES and all(a is b for a, b in zip(kept, images[1:], strict=True))
