"""The refined click: the smallest of SAM's candidates that is more than a speck."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_segany as sg
from napari_segany.refine import MIN_AREA, choose_candidates
from napari_segany.segmenter import Segmenter


def _logits(*squares: int) -> torch.Tensor:
    """``(1, K, 256, 256)`` logits: candidate k positive on a square of side ``squares[k]``."""
    out = torch.full((1, len(squares), 256, 256), -5.0)
    for k, side in enumerate(squares):
        out[0, k, :side, :side] = 5.0
    return out


def test_the_smallest_candidate_above_a_speck_is_chosen() -> None:
    # a 1024 x 1024 image: each low-resolution cell is 4 x 4 = 16 pixels
    same = {"resized": (1024, 1024), "original": (1024, 1024)}
    scores = np.array([[0.9, 0.8, 0.99]])
    assert choose_candidates(_logits(40, 8, 200), scores, **same).tolist() == [1]
    # a single cell (16 pixels) is enough, nothing is not
    assert choose_candidates(_logits(40, 1, 0), scores, **same).tolist() == [1]
    assert choose_candidates(_logits(40, 1, 0), scores, **same, min_area=17).tolist() == [0]
    # no candidate large enough: SAM's own choice
    assert choose_candidates(_logits(0, 0, 0), scores, **same).tolist() == [2]


def test_areas_are_counted_in_image_pixels() -> None:
    # a 100 x 100 image in the 1024 frame: a cell is 0.39 x 0.39 pixels, a 5 x 5 square of
    # cells under 4 pixels (a speck), an 8 x 8 square about 10
    small = {"resized": (1024, 1024), "original": (100, 100)}
    scores = np.array([[0.1, 0.9, 0.5]])
    assert MIN_AREA == 10
    assert choose_candidates(_logits(5, 9, 100), scores, **small).tolist() == [1]
    assert choose_candidates(_logits(5, 7, 100), scores, **small).tolist() == [2]


def test_each_object_of_a_batch_chooses_for_itself() -> None:
    logits = torch.cat([_logits(40, 8, 200), _logits(3, 30, 2)])
    scores = np.array([[0.9, 0.8, 0.99], [0.5, 0.6, 0.7]])
    chosen = choose_candidates(logits, scores, resized=(1024, 1024), original=(1024, 1024))
    assert chosen.tolist() == [1, 2]


@pytest.mark.slow
def test_segmenter_switch_chooses_by_the_rule_or_by_sam() -> None:
    """A clump of overlapping bright disks, clicked in one: SAM's score prefers a larger
    candidate, the refined rule the smallest one."""
    yy, xx = np.ogrid[:256, :256]
    image = np.full((256, 256), 20.0)
    for cy, cx in [(100, 100), (100, 140), (140, 100), (140, 140), (120, 120)]:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 22**2] = 200.0
    image += np.random.default_rng(0).normal(0, 4, image.shape)
    model = sg.load_model("mobile_sam", device="cpu", progress=False)
    store = sg.embed(image, model, progress=False)
    plain, refined = Segmenter(model, store, refine=False), Segmenter(model, store, refine=True)
    p = plain.predict(points=[(100, 100)], labels=[1])
    r = refined.predict(points=[(100, 100)], labels=[1])
    assert p.index == int(np.argmax(p.scores))
    areas = p.masks.sum(axis=(1, 2))
    assert r.index == int(np.argmin(np.where(areas >= MIN_AREA, areas, np.inf)))
    assert r.index != p.index and areas[r.index] < areas[p.index]
    np.testing.assert_array_equal(r.scores, p.scores)  # one decoder call, the same outputs
    assert plain.predict(points=[(100, 100)], labels=[1], refine=True).index == r.index
    # prompts with one answer (a box, several points) are not affected
    box = (78, 78, 123, 123)
    assert refined.predict(box=box).index == plain.predict(box=box).index == 0
