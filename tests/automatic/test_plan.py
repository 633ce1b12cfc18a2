"""Where automatic segmentation prompts: seeds and background from the image, the sparse
coarse-to-fine plan, decoder batches sized by memory.

The parts run on hand-made arrays; the whole path with the real MobileSAM weights on
generated images: fluorescence nuclei (the plan must find what the full grid finds, with
fewer decoder passes), bright blobs (seeded mode finds every one) and cells walled by dark
membranes (an image whose most common grey lies inside the objects, where the background
estimate must not be used).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

import napari_segany as sg
from napari_segany.automatic.image import background_hint, blob_seeds
from napari_segany.automatic.learn import learn_params
from napari_segany.automatic.masks import BYTES_PER_PROMPT_TOKEN, batch_size
from napari_segany.automatic.params import AutomaticParams
from napari_segany.automatic.plan import Plan, grid_points, grid_rounds
from napari_segany.automatic.segment import segment_slice
from napari_segany.sample_data import nuclei_volume
from napari_segany.scores import iou_matrix
from napari_segany.segmenter import Segmenter

# -- generated images -----------------------------------------------------------------------


def blobs_image(side: int = 256, count: int = 14, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs of radius 6 to 16 and varied brightness on a dim, noisy background."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((side, side), dtype=np.uint32)
    yy, xx = np.mgrid[:side, :side]
    placed = 0
    while placed < count:
        r = rng.uniform(6, 16)
        cy, cx = rng.uniform(r + 4, side - r - 4, size=2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if (ndimage.binary_dilation(disc, iterations=5) & (labels > 0)).any():
            continue
        placed += 1
        labels[disc] = placed
    brightness = np.concatenate([[0.0], rng.uniform(90, 220, size=count)])
    image = ndimage.gaussian_filter(brightness[labels], 1.5) + 20
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def cells_image(side: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright, textured cells filling the image, walled by dark membranes (as in EM)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, side, size=(24, 2))
    yy, xx = np.mgrid[:side, :side]
    distance = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    cells = distance.argmin(axis=-1).astype(np.uint32) + 1
    walls = ndimage.grey_dilation(cells, 3) != ndimage.grey_erosion(cells, 3)
    labels = np.where(walls, 0, cells).astype(np.uint32)
    image = 170 + ndimage.gaussian_filter(rng.normal(0, 25, cells.shape), 2)
    image[walls] = 40
    image = ndimage.gaussian_filter(image, 1.0) + rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def matched(found: np.ndarray, truth: np.ndarray) -> set[int]:
    """The truth ids that some found object matches with IoU above one half."""
    ids = np.unique(truth[truth > 0])
    iou = iou_matrix(found, truth)
    return {int(ids[j]) for j in np.flatnonzero((iou > 0.5).any(axis=0))}


# -- the image's cues -------------------------------------------------------------------------


def test_every_blob_gets_one_seed_near_its_centre() -> None:
    image, labels = blobs_image()
    seeds = blob_seeds(image, (3, 32))
    hit = labels[tuple(np.round(seeds).astype(int).T)]
    assert set(hit[hit > 0].tolist()) == set(range(1, 15))  # every blob
    assert np.bincount(hit, minlength=15)[1:].max() == 1  # once
    assert (hit == 0).sum() <= 2  # next to nothing on the background
    for (y, x), label in zip(seeds, hit, strict=True):
        if label:
            cy, cx = ndimage.center_of_mass(labels == label)
            assert np.hypot(y - cy, x - cx) <= 2.0


def test_seeds_of_a_large_image_are_found_on_a_coarser_copy_at_the_same_places() -> None:
    image, labels = blobs_image(side=256, seed=1)
    big = np.kron(image, np.ones((4, 4), dtype=np.uint8))  # 1024 x 1024, blobs 4x larger
    seeds = blob_seeds(big, (12, 128))
    hit = np.kron(labels, np.ones((4, 4), dtype=np.uint32))[tuple(np.round(seeds).astype(int).T)]
    assert set(hit[hit > 0].tolist()) == set(range(1, 15))


def test_flat_images_give_no_seeds() -> None:
    assert blob_seeds(np.full((64, 64), 7, dtype=np.uint8)).shape == (0, 2)


def test_the_background_hint_covers_the_background_and_no_blob() -> None:
    image, labels = blobs_image()
    # an uneven background: a ramp of 60 grey levels across the image
    image = np.clip(image + np.linspace(0, 60, 256)[None, :], 0, 255).astype(np.uint8)
    hint = background_hint(image)
    assert not (hint & (labels > 0)).any()
    assert hint[labels == 0].mean() > 0.6
    # dark objects on a bright background: the same, mirrored
    hint = background_hint(255 - image)
    assert not (hint & (labels > 0)).any() and hint[labels == 0].mean() > 0.6


# -- the plan -----------------------------------------------------------------------------------


def test_grid_rounds_go_coarse_to_fine_down_to_four_points_per_side() -> None:
    sides = [int(np.sqrt(len(r))) for r in grid_rounds(32, (100, 200))]
    assert sides == [8, 16, 32]
    assert [int(np.sqrt(len(r))) for r in grid_rounds(10, (50, 50))] == [5, 10]
    assert [int(np.sqrt(len(r))) for r in grid_rounds(3, (50, 50))] == [3]
    assert np.array_equal(grid_rounds(32, (100, 200))[-1], grid_points(32, (100, 200)))


def test_explained_points_are_left_out_of_later_batches() -> None:
    rounds = [grid_points(4, (40, 40)), grid_points(8, (40, 40))]
    plan = Plan(rounds, (40, 40))
    batches = plan.batches(4)
    first = next(batches)
    assert np.array_equal(first, rounds[0][:4])  # the top row of the coarse grid
    plan.found((0, 0, 20, 40), np.ones((20, 40), dtype=bool))  # the top half is an object
    rest = np.concatenate(list(batches))
    assert (rest[:, 0] >= 20).all()  # nothing more in the top half
    assert len(rest) == 8 + 32  # the coarse grid's bottom half, then the fine grid's
    assert plan.decoded == 4 + 8 + 32


def test_the_background_hint_is_used_only_once_the_objects_keep_out_of_it() -> None:
    shape = (40, 40)
    hint = np.zeros(shape, dtype=bool)
    hint[:, 20:] = True  # the right half looks like background
    points = grid_points(8, shape)
    plan = Plan([points[:8], points[8:]], shape, hint=hint)
    batches = plan.batches(8)
    next(batches)
    plan.found((0, 0, 10, 10), np.ones((10, 10), dtype=bool))  # an object on the left
    rest = np.concatenate(list(batches))
    assert (rest[:, 1] < 20).all()  # the right half is left out

    plan = Plan([points[:8], points[8:]], shape, hint=hint)
    batches = plan.batches(8)
    next(batches)
    plan.found((0, 10, 10, 30), np.ones((10, 20), dtype=bool))  # half of it in the "background"
    rest = np.concatenate(list(batches))
    assert (rest[:, 1] > 20).any()  # the hint is wrong here: not used


def test_a_round_that_finds_nothing_in_the_hint_makes_it_trusted() -> None:
    shape = (40, 40)
    hint = np.ones(shape, dtype=bool)
    hint[30:, 30:] = False  # a corner that does not look like background
    rounds = [grid_points(4, shape), grid_points(8, shape)]
    plan = Plan(rounds, shape, hint=hint)
    decoded = np.concatenate(list(plan.batches(16)))  # nothing is ever found
    assert len(decoded) == 16 + 4  # all 16 coarse points, then only the corner's fine ones
    assert (decoded[16:] >= 30).all()
    few = Plan([grid_points(2, shape), grid_points(8, shape)], shape, hint=hint)
    assert len(np.concatenate(list(few.batches(16)))) == 4 + 64  # 4 points: too few to tell


def test_gaps_narrower_than_the_thinnest_object_count_as_explained() -> None:
    shape = (40, 40)
    plan = Plan([grid_points(20, shape)], shape, thinnest=5)
    objects = np.ones(shape, dtype=bool)
    objects[:, 18:21] = False  # a 3-pixel seam
    objects[5:15, 30:40] = False  # a 10 x 10 hole where an object may be
    plan.objects = objects
    points = np.array([[20.0, 19.0], [10.0, 35.0]])
    assert plan.unexplained(points).tolist() == [False, True]


def test_decoder_batches_are_sized_by_their_memory() -> None:
    class Embedding:  # what batch_size reads: the feature map's size
        features = np.zeros((1, 256, 64, 64), dtype=np.float32)

    per_point = BYTES_PER_PROMPT_TOKEN * 64 * 64
    assert batch_size(Embedding(), 256) == int(256 * 2**20 // per_point)
    assert batch_size(Embedding(), 1) == 1  # at least one point
    assert batch_size(Embedding(), 4096) == int(4096 * 2**20 // per_point)


@pytest.mark.parametrize(
    ("field", "value", "error", "words"),
    [
        ("mode", "dense", ValueError, "mode must be one of seeded, sparse, grid"),
        ("decoder_memory_mb", 0, ValueError, "decoder_memory_mb must be at least 1"),
        ("points_per_batch", 0, ValueError, "points_per_batch must be at least 1"),
        ("seed_radius", (10, 2), ValueError, r"seed_radius must be \(smallest, largest\)"),
        ("seed_radius", 5, ValueError, "seed_radius"),
    ],
)
def test_bad_plan_parameters_are_refused_by_name(field, value, error, words) -> None:
    with pytest.raises(error, match=words):
        AutomaticParams(**{field: value})


# -- learning from the user's objects ----------------------------------------------------------


def test_parameters_are_learnt_from_the_users_objects() -> None:
    image, labels = blobs_image()
    examples = np.where(np.isin(labels, [1, 2, 3, 4]), labels, 0)
    radii = [np.sqrt((labels == i).sum() / np.pi) for i in (1, 2, 3, 4)]
    params = learn_params(image, examples)
    assert params.mode == "seeded" and params.seed_polarity == "bright"
    low, high = params.seed_radius
    assert low == pytest.approx(0.6 * min(radii)) and high == pytest.approx(1.5 * max(radii))
    # the finest grid's spacing: three quarters of the smaller objects' width
    assert params.points_per_side == int(np.ceil(256 / (1.5 * np.percentile(radii, 10))))
    dark = learn_params(255 - image, examples)
    assert dark.seed_polarity == "dark"
    volume = learn_params(np.stack([image, image]), np.stack([examples, 0 * examples]))
    assert volume.seed_radius == params.seed_radius  # slices without labels are skipped
    # the dark blobs are found by dark seeds, as the bright ones by bright seeds
    seeds = blob_seeds(255 - image, dark.seed_radius, bright=False)
    hit = labels[tuple(np.round(seeds).astype(int).T)]
    assert set(hit[hit > 0].tolist()) == set(range(1, 15))


def test_learning_needs_a_few_objects_of_the_images_shape() -> None:
    image, labels = blobs_image()
    with pytest.raises(ValueError, match=r"2 labelled object.*at least 3"):
        learn_params(image, np.where(labels <= 2, labels, 0))
    with pytest.raises(ValueError, match=r"labels have shape \(10, 10\)"):
        learn_params(image, labels[:10, :10])


# -- the whole path, real weights -----------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> sg.SamModel:
    return sg.load_model("mobile_sam", device="cpu", progress=False)


def _segmenter(model: sg.SamModel, image: np.ndarray) -> Segmenter:
    return Segmenter(model, sg.embed(sg.open_volume(image[None]), model, progress=False))


def _counted(model: sg.SamModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the point prompts decoded from now on."""
    count = [0]
    decode = model.decode

    def counting(*args, **kwargs):
        count[0] += len(kwargs["points"])
        return decode(*args, **kwargs)

    monkeypatch.setattr(model, "decode", counting)
    return count


@pytest.mark.slow
def test_the_sparse_plan_loses_no_object_the_full_grid_finds(model, monkeypatch, capsys) -> None:
    image, truth = nuclei_volume((8, 256, 256), seed=4)
    seg = _segmenter(model, image[4])
    count = _counted(model, monkeypatch)
    grid = segment_slice(seg, 0, AutomaticParams(mode="grid", points_per_side=16))
    grid_points_decoded, count[0] = count[0], 0
    sparse = segment_slice(seg, 0, AutomaticParams(mode="sparse", points_per_side=16))
    with capsys.disabled():
        print(
            f"\nnuclei 256 x 256, 16 x 16 points: grid {len(matched(grid, truth[4]))} of "
            f"{len(np.unique(truth[4])) - 1} nuclei in {grid_points_decoded} points, sparse "
            f"{len(matched(sparse, truth[4]))} in {count[0]}"
        )
    assert matched(grid, truth[4]) <= matched(sparse, truth[4])
    assert count[0] < 0.6 * grid_points_decoded  # measured 84 of 256


@pytest.mark.slow
def test_seeded_mode_finds_every_blob(model, monkeypatch) -> None:
    image, labels = blobs_image(seed=2)
    seg = _segmenter(model, image)
    count = _counted(model, monkeypatch)
    found = segment_slice(seg, 0, AutomaticParams(mode="seeded", points_per_side=16))
    assert matched(found, labels) == set(range(1, 15))
    assert len(np.unique(found)) - 1 == 14  # and nothing else
    assert count[0] < 100  # 14 seeds and a few grid points, of 256 + 64


@pytest.mark.slow
def test_learnt_parameters_find_the_rest_of_the_dark_blobs(model) -> None:
    image, labels = blobs_image(seed=3)
    dark = (255 - image).astype(np.uint8)  # dark blobs on a bright background
    examples = np.where(np.isin(labels, [1, 2, 3]), labels, 0)
    params = learn_params(dark, examples)
    assert params.seed_polarity == "dark"
    found = segment_slice(_segmenter(model, dark), 0, params)
    assert matched(found, labels) == set(range(1, 15))


@pytest.mark.slow
def test_cells_filling_the_image_are_not_taken_for_background(model) -> None:
    image, labels = cells_image()
    hint = background_hint(image)
    assert hint[labels > 0].mean() > 0.3  # the image's most common grey is inside the cells
    seg = _segmenter(model, image)
    grid = segment_slice(seg, 0, AutomaticParams(mode="grid", points_per_side=12))
    sparse = segment_slice(seg, 0, AutomaticParams(mode="sparse", points_per_side=12))
    assert len(matched(grid, labels)) >= 15
    assert matched(grid, labels) <= matched(sparse, labels)


MEMORY_BOUND_MB = 600
"""What segmenting a 512 x 512 slice may add to the resident memory of a process that
holds the model and the slice's embedding (decoder calls of 256 MiB by default); measured
187-399 MB over runs (more on a busy machine), and 2.9-3.1 GB with 64 points a call as
before."""

MEASURE = """
import sys
import numpy as np
import napari_segany as sg
from napari_segany.automatic.params import AutomaticParams
from napari_segany.automatic.segment import segment_slice
from napari_segany.sample_data import nuclei_volume

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

model = sg.load_model("mobile_sam", device="cpu", progress=False)
image, _ = nuclei_volume((8, 512, 512), seed=5)
seg = sg.Segmenter(model, sg.embed(sg.open_volume(image[4][None]), model, progress=False))
seg.embedding(0)
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # the peak restarts from the resident memory now
before = peak_mb()
params = AutomaticParams(mode="grid", points_per_side=12, points_per_batch=int(sys.argv[1]) or None)
labels = segment_slice(seg, 0, params)
print(before, peak_mb() - before, int(labels.max()))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resets VmHWM through /proc")
def test_segmenting_a_slice_stays_under_its_memory_bound(capsys) -> None:
    # a process of its own: memory freed by earlier tests would hide the peak
    def measure(batch: int) -> tuple[float, float, int]:
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, str(batch)], capture_output=True, text=True, check=True
        )
        before, added, objects = done.stdout.split()
        return float(before), float(added), int(objects)

    before, added, objects = measure(0)  # batches sized by memory
    _, added_64, _ = measure(64)  # 64 points a call, as before
    with capsys.disabled():
        print(
            f"\nautomatic 512 x 512 slice, full 12 x 12 grid: {added:.0f} MB above {before:.0f} "
            f"(64 points a call: {added_64:.0f} MB)"
        )
    assert objects > 10
    assert added < MEMORY_BOUND_MB < added_64
