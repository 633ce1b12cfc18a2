"""The bundled sample data: offline, deterministic, and fit to test segmentation on."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from scipy import ndimage

from napari_segany._napari.sample_data import coins_sample, nuclei_sample
from napari_segany.sample_data import coins, nuclei_volume


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    return nuclei_volume()


def test_coins_is_the_scikit_image_photograph() -> None:
    image = coins()
    assert image.shape == (303, 384)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, skimage.data.coins())


def test_coins_is_the_image_of_the_parity_reference() -> None:
    with np.load(Path(__file__).parent / "data" / "mobile_sam_coins.npz") as reference:
        np.testing.assert_array_equal(coins(), reference["image"])


def test_nuclei_shapes_and_dtypes(nuclei: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = nuclei
    assert image.shape == labels.shape == (16, 256, 256)
    assert image.dtype == np.uint16
    assert labels.dtype == np.uint32


def test_nuclei_is_deterministic(nuclei: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = nuclei_volume(seed=0)
    np.testing.assert_array_equal(image, nuclei[0])
    np.testing.assert_array_equal(labels, nuclei[1])
    other_image, other_labels = nuclei_volume(seed=1)
    assert not np.array_equal(other_labels, labels)
    assert not np.array_equal(other_image, image)


def test_nuclei_is_fast() -> None:
    start = time.perf_counter()
    nuclei_volume()
    # Well under a second on a laptop core; the bound leaves room for a busy CI runner.
    assert time.perf_counter() - start < 2.0


def test_nuclei_ids_are_consecutive_and_many(nuclei: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = nuclei
    ids = np.unique(labels)
    assert ids[0] == 0
    np.testing.assert_array_equal(ids[1:], np.arange(1, len(ids)))
    assert len(ids) - 1 >= 20


def test_each_nucleus_is_one_solid_object_inside_the_volume(
    nuclei: tuple[np.ndarray, np.ndarray],
) -> None:
    _, labels = nuclei
    depth = labels.shape[0]
    spans = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        assert box is not None
        # Fully inside: never touches a face of the volume.
        for axis_slice, size in zip(box, labels.shape, strict=True):
            assert axis_slice.start > 0 and axis_slice.stop < size
        mask = labels[box] == label
        _, n_parts = ndimage.label(mask)
        assert n_parts == 1
        # Present on every slice between its first and last, with a sizeable cross-section.
        areas = mask.sum(axis=(1, 2))
        assert areas.min() >= 40
        spans.append(box[0].stop - box[0].start)
    assert min(spans) >= 5
    assert max(spans) < depth


def test_nuclei_are_separated_on_every_slice(nuclei: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = nuclei
    # Separated even when seen from above, so no slice has two nuclei touching.
    footprint = labels.max(axis=0)
    for label in range(1, int(labels.max()) + 1):
        assert np.array_equal(np.unique(labels[:, footprint == label]), [0, label])
        distance = ndimage.distance_transform_edt(footprint != label)
        others = (footprint != 0) & (footprint != label)
        assert distance[others].min() >= 5


def test_nuclei_vary_in_size_and_brightness(nuclei: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = nuclei
    index = np.arange(1, int(labels.max()) + 1)
    volumes = ndimage.sum_labels(np.ones_like(labels), labels, index)
    brightness = ndimage.mean(image, labels, index)
    assert volumes.max() > 2 * volumes.min()
    assert brightness.max() > 1.5 * brightness.min()


def test_labels_match_the_bright_blobs(nuclei: tuple[np.ndarray, np.ndarray]) -> None:
    image, labels = nuclei
    # Far from every nucleus, the background is dim.
    near_nucleus = ndimage.binary_dilation(labels > 0, iterations=4)
    background = float(np.median(image[~near_nucleus]))
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma=(0, 1, 1))
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        assert box is not None
        z = (box[0].start + box[0].stop) // 2
        # The middle slice of the nucleus with a 6-pixel rim of background around it.
        rows = slice(max(box[1].start - 6, 0), box[1].stop + 6)
        cols = slice(max(box[2].start - 6, 0), box[2].stop + 6)
        truth = labels[z, rows, cols] == label
        patch = smooth[z, rows, cols]
        inside = float(np.mean(patch[truth]))
        assert inside > 2.5 * background
        # Thresholding halfway between background and the nucleus recovers its outline.
        found = patch > (background + inside) / 2
        iou = np.sum(found & truth) / np.sum(found | truth)
        assert iou > 0.75, f"nucleus {label}: IoU {iou:.2f} with its blob"


def test_nuclei_volume_other_shapes() -> None:
    image, labels = nuclei_volume(shape=(8, 64, 96), seed=3)
    assert image.shape == labels.shape == (8, 64, 96)
    assert labels.max() >= 1


@pytest.mark.parametrize("shape", [(4, 256, 256), (16, 20, 256), (256, 256), (16, 256.0, 256)])
def test_nuclei_volume_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        nuclei_volume(shape=shape)  # type: ignore[arg-type]


def test_napari_wrappers_return_layer_data() -> None:
    (image_layer,) = coins_sample()
    assert image_layer[2] == "image"
    assert image_layer[1]["name"] == "coins"

    image_layer, labels_layer = nuclei_sample()
    image, labels = nuclei_volume()
    assert image_layer[2] == "image"
    np.testing.assert_array_equal(image_layer[0], image)
    assert labels_layer[2] == "labels"
    assert labels_layer[1]["name"] == "nuclei ground truth"
    np.testing.assert_array_equal(labels_layer[0], labels)
