"""Prompts to masks on stored embeddings: parity, coordinates, batching, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import napari_segany as sg
from napari_segany.segmenter import Prompt, Segmenter

from .helpers import iou
from .models._reference import CASES, DATA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model() -> sg.SamModel:
    return sg.load_model("mobile_sam", device="cpu", progress=False)


@pytest.fixture(scope="module")
def coins() -> dict[str, np.ndarray]:
    with np.load(DATA / "mobile_sam_coins.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def coins_segmenter(model: sg.SamModel, coins: dict) -> Segmenter:
    # 8-bit photograph: the full 0-255 range, as the reference gives it to the model
    store = sg.embed(sg.open_volume(coins["image"], limits=(0, 255)), model, progress=False)
    return Segmenter(model, store, refine=False)  # SAM's own choice, as the reference makes it


@pytest.mark.parametrize("case", sorted(CASES))
def test_masks_match_the_reference_through_the_float16_store(
    coins_segmenter: Segmenter, coins: dict, case: str
) -> None:
    get = coins.get
    kwargs: dict = {"multimask": bool(get(f"{case}__multimask_output"))}
    if get(f"{case}__point_coords") is not None:
        kwargs["points"] = get(f"{case}__point_coords")[:, ::-1]  # reference (x, y) -> (y, x)
        kwargs["labels"] = get(f"{case}__point_labels")
    if get(f"{case}__box") is not None:
        kwargs["box"] = get(f"{case}__box")[[1, 0, 3, 2]]
    if get(f"{case}__mask_input") is not None:
        kwargs["mask"] = get(f"{case}__mask_input")[0]
    pred = coins_segmenter.predict(0, **kwargs)
    expected = get(f"{case}__masks")
    assert pred.masks.shape == expected.shape
    for ours, theirs in zip(pred.masks, expected, strict=True):
        assert (ours & theirs).sum() / (ours | theirs).sum() >= 0.99
    np.testing.assert_allclose(pred.scores, get(f"{case}__iou_predictions"), atol=1e-3)
    assert pred.score == pred.scores.max()


@pytest.fixture(scope="module")
def two_disks(model: sg.SamModel) -> tuple[Segmenter, np.ndarray, np.ndarray]:
    """A non-square slice: a bright disk at the top left, a dimmer one at the bottom right."""
    yy, xx = np.ogrid[:240, :400]
    upper = (yy - 60) ** 2 + (xx - 90) ** 2 <= 30**2
    lower = (yy - 170) ** 2 + (xx - 310) ** 2 <= 40**2
    image = np.full((240, 400), 20.0)
    image[upper], image[lower] = 230.0, 160.0
    store = sg.embed(sg.open_volume(image), model, progress=False)
    return Segmenter(model, store), upper, lower


def test_point_at_row_y_column_x_selects_that_object(two_disks) -> None:
    seg, upper, lower = two_disks
    assert iou(seg.predict(points=[(60, 90)], labels=[1]).mask, upper) > 0.9
    assert iou(seg.predict(points=[(170, 310)], labels=[1]).mask, lower) > 0.9
    pred = seg.predict(box=(20, 40, 210, 360), points=[(60, 90)], labels=[0])
    assert iou(pred.mask, lower) > 0.9  # the negative point removes the upper disk


def test_one_batched_call_equals_single_calls(two_disks) -> None:
    seg, upper, lower = two_disks
    prompts = [Prompt(box=np.array([25, 55, 95, 125])), Prompt(box=np.array([125, 265, 215, 355]))]
    batched = seg.predict_many(0, prompts)
    for prompt, pred, truth in zip(prompts, batched, [upper, lower], strict=True):
        single = seg.predict(box=prompt.box)
        np.testing.assert_array_equal(single.mask, pred.mask)
        assert iou(pred.mask, truth) > 0.9


def test_candidates_cycle_and_refine(two_disks) -> None:
    seg, upper, _ = two_disks
    pred = seg.predict(points=[(60, 90)], labels=[1])
    assert len(pred.scores) == 3
    cycled = pred.cycle()
    assert cycled.index == (pred.index + 1) % 3
    assert pred.cycle(3).index == pred.index
    refined = seg.predict(points=[(60, 90), (62, 95)], labels=[1, 1], mask=pred.logits)
    assert len(refined.scores) == 1 and iou(refined.mask, upper) > 0.9
    from_mask = seg.predict(mask=upper)
    assert iou(from_mask.mask, upper) > 0.9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points": [(250, 10)], "labels": [1]}, "outside the slice"),
        ({"points": [(10, -1)], "labels": [1]}, "outside the slice"),
        ({"box": (10, 10, 10, 50)}, "no area"),
        ({"points": [(10, 10)], "labels": [0]}, "no positive prompt"),
        ({}, "no positive prompt"),
        ({"points": [(10, 10)], "labels": [1, 0]}, "1 points but 2 labels"),
        ({"points": [(10, 10)], "labels": [2]}, "must be 1 or 0"),
        ({"mask": np.zeros((10, 10), dtype=bool)}, "the mask has shape"),
        ({"mask": np.zeros((64, 64), dtype=np.float32)}, "mask logits must be"),
        ({"mask": np.zeros((256, 256), dtype=np.float32)}, "logits refine a prompt"),
        ({"mask": np.zeros((240, 400), dtype=bool)}, "the mask is empty"),
        ({"points": [(float("nan"), 10)], "labels": [1]}, r"points must be finite numbers"),
        ({"points": [(10, float("inf"))], "labels": [1]}, r"points must be finite numbers"),
        ({"points": [(10, 10, 10)], "labels": [1]}, r"points must be \(y, x\) pairs, got 3"),
        ({"points": [("a", 10)], "labels": [1]}, r"points must be numbers \(y, x\) pairs"),
        ({"points": [(1, 2), (3,)], "labels": [1, 1]}, r"points must be numbers"),
        ({"box": (10, 10, 50)}, r"a box is 4 numbers \(y0, x0, y1, x1\), got 3"),
        ({"box": (10, 10, float("nan"), 50)}, r"the box must be finite numbers"),
    ],
)
def test_bad_prompts_are_named(two_disks, kwargs: dict, message: str) -> None:
    seg, _, _ = two_disks
    with pytest.raises(ValueError, match=message):
        seg.predict(**kwargs)
    with pytest.raises(IndexError, match="outside the volume"):
        seg.predict(z=3, points=[(10, 10)], labels=[1])


@pytest.mark.parametrize(
    ("z", "error", "message"),
    [
        (-1, IndexError, r"slice -1 is outside the volume's 1 slices \(0\.\.0\)"),
        (1, IndexError, r"slice 1 is outside the volume's 1 slices"),
        (0.0, TypeError, "z must be an integer slice index, got 0.0"),
        (6.7, TypeError, "z must be an integer slice index, got 6.7"),
        (True, TypeError, "z must be an integer slice index, got True"),
    ],
)
def test_a_slice_index_is_a_whole_number_inside_the_volume(two_disks, z, error, message) -> None:
    seg, _, _ = two_disks
    with pytest.raises(error, match=message):
        seg.predict(z=z, points=[(10, 10)], labels=[1])
    assert seg.predict(z=np.int64(0), points=[(60, 90)], labels=[1]).mask.any()


def test_prediction_on_a_tiled_slice_is_not_cut_at_the_tile_border(model: sg.SamModel) -> None:
    shape, centre, radius = (800, 800), (480, 380), 70
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    truth = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    store = sg.embed(
        sg.open_volume(np.where(truth, 200.0, 30.0)), model, tile_size=512, halo=96, progress=False
    )
    seg = Segmenter(model, store)
    pred = seg.predict(points=[centre], labels=[1])
    assert pred.window != (0, 0, *shape)
    assert pred.mask.shape == shape
    assert iou(pred.mask, truth) > 0.9


def test_recent_windows_are_read_from_the_store_once(model: sg.SamModel) -> None:
    from napari_segany.segmenter import KEPT_EMBEDDINGS

    volume = np.random.default_rng(4).integers(0, 255, (KEPT_EMBEDDINGS + 1, 64, 64))
    store = sg.embed(sg.open_volume(volume.astype(np.uint8)), model, progress=False)
    reads = []
    original = store.get

    def counting(z: int, tile: int = 0):
        reads.append(z)
        return original(z, tile)

    store.get = counting
    seg = Segmenter(model, store)
    first = [seg.embedding(z) for z in range(KEPT_EMBEDDINGS)]
    again = [seg.embedding(z) for z in reversed(range(KEPT_EMBEDDINGS))]
    assert all(a is b for a, b in zip(first, reversed(again), strict=True))
    assert reads == list(range(KEPT_EMBEDDINGS))  # each window once
    seg.embedding(KEPT_EMBEDDINGS)  # one more: the least recently used (the last z) goes
    seg.embedding(0)
    assert reads[-1] == KEPT_EMBEDDINGS and len(reads) == KEPT_EMBEDDINGS + 1
    seg.embedding(KEPT_EMBEDDINGS - 1)
    assert reads[-1] == KEPT_EMBEDDINGS - 1
