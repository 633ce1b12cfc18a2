"""Carrying objects through z on a synthetic volume with known 3D ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import napari_segany as sg
from napari_segany.propagate import StopRule, project, propagate_objects
from napari_segany.segmenter import Segmenter

from .helpers import iou

pytestmark = pytest.mark.slow

SHAPE = (12, 128, 256)


def _objects() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy volume with an ellipsoid (left) and an object that splits in two (right)."""
    zz, yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    ellipsoid = ((zz - 5) / 4.2) ** 2 + ((yy - 64) / 30) ** 2 + ((xx - 64) / 24) ** 2 <= 1
    trunk = (zz >= 3) & (zz <= 5) & (((yy - 64) / 34) ** 2 + ((xx - 190) / 26) ** 2 <= 1)
    branch_a = (zz >= 6) & (zz <= 8) & (((yy - 40) / 16) ** 2 + ((xx - 190) / 18) ** 2 <= 1)
    branch_b = (zz >= 6) & (zz <= 8) & (((yy - 92) / 16) ** 2 + ((xx - 190) / 18) ** 2 <= 1)
    splitting = trunk | branch_a | branch_b
    rng = np.random.default_rng(7)
    image = np.where(ellipsoid | splitting, 180.0, 40.0) + rng.normal(0, 12, SHAPE)
    return image, ellipsoid, splitting


@pytest.fixture(scope="module")
def scene() -> tuple[Segmenter, np.ndarray, np.ndarray]:
    image, ellipsoid, splitting = _objects()
    model = sg.load_model("mobile_sam", device="cpu", progress=False)
    store = sg.embed(sg.open_volume(image), model, progress=False)
    return Segmenter(model, store), ellipsoid, splitting


def _slices(mask: np.ndarray) -> list[int]:
    return np.flatnonzero(mask.any(axis=(1, 2))).tolist()


def test_an_ellipsoid_is_followed_both_ways_and_stops_where_it_ends(scene) -> None:
    seg, ellipsoid, _ = scene
    start = seg.predict(5, points=[(64, 64)], labels=[1])
    obj = seg.propagate(5, start.mask)
    assert obj.shape == SHAPE
    assert iou(obj, ellipsoid) > 0.85
    assert _slices(obj) == _slices(ellipsoid)  # neither cut short nor run on into noise


def test_an_object_that_splits_is_carried_into_both_branches(scene) -> None:
    seg, _, splitting = scene
    start = seg.predict(4, points=[(64, 190)], labels=[1])
    obj = seg.propagate(4, start.mask)
    assert iou(obj, splitting) > 0.8
    assert _slices(obj) == _slices(splitting)


def test_several_objects_at_once_equal_one_at_a_time(scene) -> None:
    seg, _, _ = scene
    a = seg.predict(5, points=[(64, 64)], labels=[1]).mask
    b = seg.predict(4, points=[(64, 190)], labels=[1]).mask
    together = propagate_objects(seg, [{5: a}, {4: b}])
    np.testing.assert_array_equal(together[0], seg.propagate(5, a))
    np.testing.assert_array_equal(together[1], seg.propagate(4, b))


def test_z_range_direction_and_filling_between_annotations(scene) -> None:
    seg, ellipsoid, _ = scene
    forward = seg.propagate(5, ellipsoid[5], direction="forward")
    assert _slices(forward)[0] == 5
    limited = seg.propagate(5, ellipsoid[5], z_range=(4, 6))
    assert _slices(limited) == [4, 5, 6]
    between = seg.propagate(annotations={2: ellipsoid[2], 8: ellipsoid[8]}, z_range=(2, 8))
    assert _slices(between) == list(range(2, 9))
    assert iou(between[2:9], ellipsoid[2:9]) > 0.85


def test_stop_rule_and_projections() -> None:
    rule = StopRule()
    disk = np.zeros((64, 64), dtype=bool)
    disk[20:40, 20:40] = True
    assert not rule.ends(disk, disk, score=0.95)
    assert rule.ends(disk, disk, score=0.2)  # the decoder doubts it
    assert rule.ends(np.zeros_like(disk), disk, score=0.95)  # gone
    assert rule.ends(np.ones_like(disk), disk, score=0.95)  # leaked into the background
    shifted = np.roll(disk, 15, axis=1)
    assert rule.ends(shifted, disk, score=0.95)  # another object
    assert project(disk, "box").box.tolist() == [20, 20, 40, 40]
    point = project(disk, "points").points[0]
    assert disk[int(point[0]), int(point[1])]
    with pytest.raises(ValueError, match="unknown projection"):
        project(disk, "lasso")


def test_bad_propagation_input(scene) -> None:
    seg, ellipsoid, _ = scene
    with pytest.raises(ValueError, match="the mask is empty"):
        seg.propagate(5, np.zeros(SHAPE[1:], dtype=bool))
    with pytest.raises(ValueError, match="mask"):
        seg.propagate(5, np.ones((10, 10), dtype=bool))
    with pytest.raises(ValueError, match="outside the volume"):
        seg.propagate(40, ellipsoid[5])
    with pytest.raises(ValueError, match="z_range"):
        seg.propagate(5, ellipsoid[5], z_range=(3, 30))


# -- a second volume: an object blurred in z, two touching objects, a slanted one -------

DEEP = (16, 128, 320)


def _hard_objects() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Objects that end where their blurred light does not, touch, or move through z.

    Returns the image and four boolean volumes: an ellipsoid on slices 5-10 blurred in z
    so that its glow reaches slices with nothing; two ellipsoids that touch on every
    slice; a cylinder whose disk moves 3 px in x per slice.
    """
    zz, yy, xx = np.ogrid[: DEEP[0], : DEEP[1], : DEEP[2]]
    blurred = ((zz - 7.5) / 3.2) ** 2 + ((yy - 64) / 28) ** 2 + ((xx - 50) / 26) ** 2 <= 1
    left = ((zz - 7.5) / 6) ** 2 + ((yy - 40) / 22) ** 2 + ((xx - 150) / 24) ** 2 <= 1
    right = ((zz - 7.5) / 6) ** 2 + ((yy - 86) / 24) ** 2 + ((xx - 150) / 24) ** 2 <= 1
    right &= ~left  # they touch: no background between them
    slanted = (zz >= 1) & (zz <= 14) & ((yy - 64) ** 2 + (xx - 220 - 3 * zz) ** 2 <= 20**2)
    rng = np.random.default_rng(11)
    glow = ndimage.gaussian_filter(blurred.astype(float), sigma=(1.6, 0.8, 0.8))
    image = 40.0 + 150.0 * glow / glow.max()
    image += np.where(left, 170.0, 0.0) + np.where(right, 120.0, 0.0) + np.where(slanted, 140.0, 0)
    image += rng.normal(0, 10, DEEP)
    return image, blurred, left, right, slanted


@pytest.fixture(scope="module")
def hard_scene() -> tuple[Segmenter, tuple[np.ndarray, ...]]:
    image, *objects = _hard_objects()
    model = sg.load_model("mobile_sam", device="cpu", progress=False)
    store = sg.embed(sg.open_volume(image), model, progress=False)
    return Segmenter(model, store), tuple(objects)


def test_an_object_blurred_in_z_ends_where_its_signal_fades(hard_scene) -> None:
    seg, (blurred, *_) = hard_scene
    truth = _slices(blurred)
    obj = seg.propagate(7, blurred[7])
    found = _slices(obj)
    assert abs(found[0] - truth[0]) <= 1 and abs(found[-1] - truth[-1]) <= 1
    # without the signal check the glow carries it further on at least one end
    glowing = _slices(seg.propagate(7, blurred[7], stop=StopRule(min_signal_ratio=0.0)))
    assert glowing[0] < found[0] or glowing[-1] > found[-1]


def test_touching_objects_carried_together_do_not_overlap(hard_scene) -> None:
    seg, (_, left, right, _) = hard_scene
    a, b = propagate_objects(seg, [{7: left[7]}, {7: right[7]}])
    assert not (a & b).any()
    assert iou(a, left) > 0.75 and iou(b, right) > 0.75


def test_filling_between_two_annotated_slices_follows_a_moving_object(hard_scene) -> None:
    seg, (*_, slanted) = hard_scene
    filled = seg.propagate(annotations={2: slanted[2], 13: slanted[13]}, z_range=(2, 13))
    assert _slices(filled) == list(range(2, 14))
    for z in range(2, 14):
        assert iou(filled[z], slanted[z]) > 0.8, z
