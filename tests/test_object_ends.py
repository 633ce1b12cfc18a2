"""Where an object ends in z: its signal (mean inside less the mean in a ring around it).

The rule (:mod:`napari_segany.object_ends`) on hand-made masks and signal profiles; the
two places automatic segmentation applies it (``_trim_ends`` on the returned array, the
``StoreWriter`` on each committed object) on a generated volume whose bright ellipsoid
is blurred in z, so that its glow reaches slices where it is not; and the whole path
with the real MobileSAM weights, whose masks follow that glow.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

import napari_segany as sg
from napari_segany.automatic.params import AutomaticParams
from napari_segany.automatic.segment import _trim_ends
from napari_segany.automatic.write import StoreWriter
from napari_segany.labels.store import LabelsStore
from napari_segany.object_ends import (
    GAP,
    MIN_CONTRAST,
    MIN_SIGNAL_RATIO,
    ends,
    standout,
    standout_at,
)
from napari_segany.segmenter import Segmenter


def disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def z_extent(mask: np.ndarray) -> tuple[int, int] | None:
    """First and last slice (inclusive) where a (Z, Y, X) mask has voxels."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    return None if zs.size == 0 else (int(zs[0]), int(zs[-1]))


# -- standout and standout_at ----------------------------------------------------------


def test_a_bright_disk_stands_out_from_a_dark_noisy_background() -> None:
    rng = np.random.default_rng(0)
    image = 20 + rng.normal(0, 5, (64, 64))
    image[disk(image.shape, (30, 34), 10)] += 100
    contrast, signal = standout(image, disk(image.shape, (30, 34), 10))
    assert signal == pytest.approx(100, abs=3)
    assert contrast > 10  # 100 over a noise of 5
    # a dark disk: a negative signal, the same contrast
    contrast, signal = standout(-image, disk(image.shape, (30, 34), 10))
    assert signal == pytest.approx(-100, abs=3) and contrast > 10
    # a mask on background only: no signal to speak of, too little contrast to judge by
    contrast, signal = standout(image, disk(image.shape, (50, 10), 5))
    assert abs(signal) < 3 and contrast < MIN_CONTRAST


def test_the_ring_leaves_out_the_rim_of_a_mask_a_little_smaller_than_its_object() -> None:
    image = np.zeros((64, 64))
    image[disk(image.shape, (32, 32), 10)] = 100
    # the mask is 2 pixels short of the edge; the ring starts GAP (3) pixels out of it
    assert GAP == 3
    assert standout(image, disk(image.shape, (32, 32), 8))[1] == pytest.approx(100)


@pytest.mark.parametrize("centre", [(30, 34), (4, 5), (60, 61)])
def test_standout_at_a_crop_is_standout_on_the_whole_mask(centre) -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(50, 10, (64, 64))
    mask = disk(image.shape, centre, 7)
    image[mask] += 40
    whole = standout(image, mask)
    assert whole[0] > MIN_CONTRAST and whole[1] > 20
    ys, xs = ndimage.find_objects(mask.astype(np.uint8))[0]
    assert standout_at(image, ys.start, xs.start, mask[ys, xs]) == pytest.approx(whole)
    # a crop with empty margins, as a box a little larger than the object gives it
    ys, xs = slice(max(ys.start - 2, 0), ys.stop + 2), slice(max(xs.start - 2, 0), xs.stop + 2)
    assert standout_at(image, ys.start, xs.start, mask[ys, xs]) == pytest.approx(whole)


def test_an_empty_mask_or_one_without_a_ring_has_no_signal() -> None:
    image = np.random.default_rng(2).normal(50, 10, (32, 32))
    assert standout(image, np.zeros(image.shape, dtype=bool)) == (0.0, 0.0)
    assert standout(image, np.ones(image.shape, dtype=bool)) == (0.0, 0.0)
    assert standout_at(image, 4, 4, np.zeros((5, 5), dtype=bool)) == (0.0, 0.0)
    assert standout_at(image, 0, 0, np.ones((32, 32), dtype=bool)) == (0.0, 0.0)


# -- ends -------------------------------------------------------------------------------


def measured(signals: list[float], contrast: float = 1.0) -> list[tuple[float, float]]:
    """``(contrast, signal)`` per slice, every slice standing out by ``contrast``."""
    return [(contrast, float(s)) for s in signals]


def test_ends_keep_the_slices_whose_signal_reaches_the_share_of_the_strongest() -> None:
    assert MIN_SIGNAL_RATIO == 0.4
    profile = measured([1, 3, 8, 10, 9, 4, 1])  # 0.4 of 10: 4 and above are kept
    assert ends(profile, 0.4) == (2, 6)
    assert ends(profile) == (2, 6)
    assert ends(profile, 0.85) == (3, 5)
    assert ends(measured([10, 1, 1, 1]), 0.4) == (0, 1)
    # the first and last strong slices bound it: a weak slice between them stays
    assert ends(measured([1, 9, 2, 10, 1]), 0.4) == (1, 4)


def test_a_dark_object_is_judged_by_its_darkness() -> None:
    assert ends(measured([-1, -3, -8, -10, -8, -3, -1]), 0.4) == (2, 5)
    # a slice of the glow around it may come out slightly bright: still trimmed
    assert ends(measured([0.5, -3, -8, -10, -8, -3, 0.5]), 0.4) == (2, 5)


def test_no_signal_or_a_zero_share_keeps_every_slice() -> None:
    assert ends(measured([0, 0, 0, 0])) == (0, 4)
    assert ends([(0.0, 0.0), (0.0, -0.0)]) == (0, 2)
    assert ends([]) == (0, 0)
    assert ends(measured([1, 3, 8, 10, 9, 4, 1]), 0.0) == (0, 7)


def test_an_object_that_stands_out_on_no_slice_is_never_ended_by_its_signal() -> None:
    low = MIN_CONTRAST * 0.9
    assert ends(measured([1, 3, 8, 10, 9, 4, 1], contrast=low)) == (0, 7)
    # one slice standing out is enough to judge them all
    profile = [(low, 1.0), (low, 3.0), (MIN_CONTRAST, 10.0), (low, 3.0), (low, 1.0)]
    assert ends(profile) == (2, 3)


# -- the generated volume ---------------------------------------------------------------

Z, Y, X = 12, 64, 64
TRUE_EXTENT = (3, 8)  # the ellipsoid's slices
LABELLED = (1, 10)  # the slices its linked masks run through, on its glow


def glowing_volume(dark: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid (slices 3..8) blurred in z, a bright column through every
    slice, on a noisy background; and labels as SAM links them: 1 the ellipsoid over
    slices 1..10 (its glow included), 2 the column on slices 4..7, 3 one slice of
    background, 4 background on slices 2..9 (it stands out on none of them, by less
    than MIN_CONTRAST). ``dark``: the intensities inverted (dark objects on a bright ground)."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:Z, :Y, :X]
    ellipsoid = ((zz - 5.5) / 3.2) ** 2 + ((yy - 24) / 12) ** 2 + ((xx - 24) / 12) ** 2 <= 1
    assert z_extent(ellipsoid) == TRUE_EXTENT
    column = ((yy - 50) / 6) ** 2 + ((xx - 50) / 6) ** 2 <= 1
    image = ndimage.gaussian_filter(200.0 * ellipsoid, sigma=(1.5, 1, 1))
    image += 150.0 * column + 20 + rng.normal(0, 5, (Z, Y, X))
    if dark:
        image = 300 - image
    labels = np.zeros((Z, Y, X), dtype=np.uint32)
    labels[LABELLED[0] : LABELLED[1] + 1, disk((Y, X), (24, 24), 12)] = 1
    labels[4:8, column[0]] = 2
    labels[6, disk((Y, X), (10, 54), 4)] = 3
    labels[2:10, disk((Y, X), (50, 14), 8)] = 4
    return image.astype(np.float32), labels


def assert_trimmed_to_the_object(before: np.ndarray, after: np.ndarray) -> None:
    """Object 1 lost only whole slices, and is within one slice of its true extent;
    every other voxel is as it was."""
    extent = z_extent(after == 1)
    assert extent is not None
    first, last = extent
    assert abs(first - TRUE_EXTENT[0]) <= 1 and abs(last - TRUE_EXTENT[1]) <= 1, extent
    for z in range(Z):
        expected = (before[z] == 1) if first <= z <= last else np.zeros((Y, X), dtype=bool)
        np.testing.assert_array_equal(after[z] == 1, expected, err_msg=f"slice {z}")
    others = before != 1
    np.testing.assert_array_equal(after[others], before[others])


@pytest.mark.parametrize("dark", [False, True], ids=["bright", "dark"])
def test_trim_ends_drops_the_slices_of_an_objects_glow(dark) -> None:
    image, labels = glowing_volume(dark)
    trimmed = labels.copy()
    _trim_ends(trimmed, range(Z), lambda z: image[z], MIN_SIGNAL_RATIO)
    assert_trimmed_to_the_object(labels, trimmed)


def test_trim_ends_maps_rows_to_their_slices() -> None:
    image, labels = glowing_volume()
    zs = range(1, Z - 1)  # labels[i] is slice zs[i]; slices 0 and 11 hold no labels
    part = labels[1 : Z - 1].copy()
    _trim_ends(part, zs, lambda z: image[z], MIN_SIGNAL_RATIO)
    whole = np.zeros_like(labels)
    whole[1 : Z - 1] = part
    assert_trimmed_to_the_object(labels, whole)
    # reading the wrong slices (rows taken as slices 0..9) ends the object elsewhere
    shifted = labels[1 : Z - 1].copy()
    _trim_ends(shifted, range(Z - 2), lambda z: image[z], MIN_SIGNAL_RATIO)
    assert z_extent(shifted == 1) != z_extent(part == 1)


def write(store: LabelsStore, labels: np.ndarray, **kwargs) -> StoreWriter:
    writer = StoreWriter(store, {"method": "automatic"}, **kwargs)
    for z in range(len(labels)):
        writer.add(z, labels[z])
    writer.finish()
    return writer


@pytest.mark.parametrize("dark", [False, True], ids=["bright", "dark"])
def test_store_writer_commits_each_object_without_its_glow(tmp_path, dark) -> None:
    image, labels = glowing_volume(dark)
    store = LabelsStore.create(tmp_path / "seg.ome.zarr", labels.shape)
    try:
        writer = write(store, labels, image_at=lambda z: image[z])
        assert sorted(writer.committed) == [1, 2, 3, 4]
        out = store.read()
    finally:
        store.close()
    # the store numbers objects in commit order: map them back by where they lie
    relabelled = np.zeros_like(out)
    for label in np.unique(out[out > 0]):
        mine = np.unique(labels[out == label])
        assert mine.size == 1 and mine[0] > 0
        relabelled[out == label] = mine[0]
    assert_trimmed_to_the_object(labels, relabelled)


def test_store_writer_without_an_image_keeps_every_slice(tmp_path) -> None:
    _, labels = glowing_volume()
    with LabelsStore.create(tmp_path / "seg.ome.zarr", labels.shape) as store:
        write(store, labels)
        out = store.read()
    np.testing.assert_array_equal(out > 0, labels > 0)
    assert z_extent(out == out[5, 24, 24]) == LABELLED


def test_store_writer_with_a_zero_share_keeps_every_slice_of_a_bright_object(tmp_path) -> None:
    image, labels = glowing_volume()
    with LabelsStore.create(tmp_path / "seg.ome.zarr", labels.shape) as store:
        write(store, labels, image_at=lambda z: image[z], min_signal_ratio=0.0)
        out = store.read()
    np.testing.assert_array_equal(out > 0, labels > 0)


# -- parameters -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, float("nan"), "0.4", None])
def test_min_signal_ratio_must_be_a_share_below_one(value) -> None:
    with pytest.raises(ValueError, match=r"min_signal_ratio must be in \[0, 1\)"):
        AutomaticParams(min_signal_ratio=value)


def test_min_signal_ratio_zero_is_allowed_and_the_default_is_the_rules() -> None:
    assert AutomaticParams(min_signal_ratio=0).min_signal_ratio == 0
    assert AutomaticParams(min_signal_ratio=0.99).min_signal_ratio == 0.99
    assert AutomaticParams().min_signal_ratio == MIN_SIGNAL_RATIO
    assert AutomaticParams().to_dict()["min_signal_ratio"] == MIN_SIGNAL_RATIO


# -- the real model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> sg.SamModel:
    return sg.load_model("mobile_sam", device="cpu", progress=False)


def glowing_blobs() -> tuple[np.ndarray, np.ndarray]:
    """8 x 96 x 96: two bright ellipsoids on slices 2..5, blurred in z (sigma 1.8) so
    that SAM outlines their glow on every slice; their ground truth."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:8, :96, :96]
    truth = np.zeros((8, 96, 96), dtype=np.uint32)
    for label, (cy, cx, ry, rx) in enumerate([(30, 32, 14, 14), (64, 62, 13, 16)], start=1):
        truth[((zz - 3.5) / 2.2) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = label
    image = ndimage.gaussian_filter(1000.0 * (truth > 0), sigma=(1.8, 1, 1))
    image += 100 + rng.normal(0, 10, truth.shape)
    return np.clip(image, 0, None).astype(np.uint16), truth


@pytest.mark.slow
def test_automatic_segmentation_ends_objects_where_their_signal_fades(model, capsys) -> None:
    image, truth = glowing_blobs()
    assert z_extent(truth > 0) == (2, 5)
    seg = Segmenter(model, sg.embed(sg.open_volume(image), model, compute=False, progress=False))
    params = AutomaticParams(points_per_side=5)
    start = time.perf_counter()
    loose = sg.segment_automatic(seg, params=params, min_signal_ratio=0, progress=False)
    trimmed = sg.segment_automatic(seg, params=params, progress=False)
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(
            f"\nautomatic, 8 x 96 x 96, 5 x 5 points, twice: {seconds:.1f} s; labelled slices "
            f"{z_extent(loose > 0)} untrimmed, {z_extent(trimmed > 0)} trimmed, truth (2, 5)"
        )
    # SAM outlines the glow on the slices beyond the blobs (else there is nothing to show)
    assert z_extent(loose > 0) == (0, 7)
    # trimmed: nothing further than one slice from the blobs' ends (measured: 1..6)
    extent = z_extent(trimmed > 0)
    assert extent is not None and extent[0] >= 1 and extent[1] <= 6
    assert not trimmed[[0, 7]].any()
    # only whole slices of objects were dropped: each object's kept slices as they were
    for label in np.unique(loose[loose > 0]):
        before, after = z_extent(loose == label), z_extent(trimmed == label)
        assert after is not None and before is not None
        assert before[0] <= after[0] <= after[1] <= before[1]
        for z in range(after[0], after[1] + 1):
            np.testing.assert_array_equal(trimmed[z] == label, loose[z] == label)
    # both blobs are still found on every slice they are on
    for z in range(2, 6):
        for label in (1, 2):
            ids = np.unique(trimmed[z][truth[z] == label])
            assert ids[ids > 0].size >= 1, f"blob {label} lost on slice {z}"
