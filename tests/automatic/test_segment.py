"""Automatic segmentation: grid prompts to instance labels, NMS, stitching, linking, output.

The parts (NMS, stability, clean-up, painting, linking, the store writer) are tested on
tiny hand-made inputs; the whole path with the real MobileSAM weights on the synthetic
nuclei sample, against its ground truth. The real runs are kept small (a few slices of
at most 160 x 200 pixels, coarse grids): the decoder costs tens of milliseconds per point
prompt on a CPU.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

import napari_segany as sg
from napari_segany.automatic.link import SliceLinker, link_slices, match_objects
from napari_segany.automatic.masks import Candidate, clean_mask, stability_score
from napari_segany.automatic.nms import box_iou, box_nms, mask_iou, mask_nms
from napari_segany.automatic.params import AutomaticParams
from napari_segany.automatic.plan import grid_points
from napari_segany.automatic.segment import paint, segment_slice
from napari_segany.automatic.write import StoreWriter
from napari_segany.labels.store import LabelsStore
from napari_segany.sample_data import nuclei_volume
from napari_segany.scores import instance_scores
from napari_segany.segmenter import Segmenter

# -- measuring ------------------------------------------------------------------------


def instance_f1(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    return instance_scores(pred, truth, threshold)["f1"]


def test_instance_f1_counts_matches_at_iou_one_half() -> None:
    truth = np.zeros((10, 10), dtype=np.uint32)
    truth[0:4, 0:4], truth[6:10, 6:10] = 1, 2
    pred = np.zeros_like(truth)
    pred[0:4, 0:3] = 5  # IoU 0.75 with 1
    pred[6:10, 8:10] = 6  # IoU 0.5 with 2: not above one half
    assert instance_f1(pred, truth) == pytest.approx(2 * 1 / 4)
    assert instance_f1(truth, truth) == 1.0


# -- parameters -------------------------------------------------------------------------


def test_default_parameters_are_sams_where_sam_has_them() -> None:
    p = AutomaticParams()
    assert (p.mode, p.points_per_side, p.points_per_batch) == ("sparse", 32, None)
    assert p.decoder_memory_mb == 256
    assert (p.pred_iou_threshold, p.stability_threshold, p.stability_offset) == (0.88, 0.95, 1.0)
    assert p.nms_threshold == 0.7
    assert p.to_dict()["link_iou"] == p.link_iou


@pytest.mark.parametrize(
    ("field", "value", "error", "words"),
    [
        ("points_per_side", 0, ValueError, "points_per_side must be at least 1"),
        ("points_per_side", 8.5, TypeError, "points_per_side must be an integer"),
        ("points_per_batch", True, TypeError, "points_per_batch must be an integer"),
        ("pred_iou_threshold", 1.5, ValueError, r"pred_iou_threshold must be in \[0, 1\]"),
        ("stability_threshold", "high", TypeError, "stability_threshold must be a number"),
        ("nms_threshold", 0.0, ValueError, r"nms_threshold must be in \(0, 1\]"),
        ("link_iou", -0.1, ValueError, "link_iou"),
        ("stability_offset", 0.0, ValueError, "stability_offset must be a positive"),
        ("min_area", -1, ValueError, "min_area must be at least 0"),
        ("multimask", 1, TypeError, "multimask must be True or False"),
    ],
)
def test_bad_parameters_are_refused_by_name(field, value, error, words) -> None:
    with pytest.raises(error, match=words):
        AutomaticParams(**{field: value})


# -- the parts on tiny inputs -------------------------------------------------------------


def test_grid_points_sit_at_cell_centres_row_by_row() -> None:
    points = grid_points(4, (40, 80))
    assert points.shape == (16, 2)
    np.testing.assert_allclose(points[:4], [[5, 10], [5, 30], [5, 50], [5, 70]])
    np.testing.assert_allclose(points[::4, 0], [5, 15, 25, 35])


def test_stability_score_is_the_iou_of_tight_and_loose_masks() -> None:
    logits = np.full((2, 8, 8), -5.0)
    logits[0, 2:6, 2:6] = 0.5  # loose only: inside -1 .. +1
    logits[0, 3:5, 3:5] = 3.0  # tight: 4 of the 16 loose pixels
    logits[1, 1:7, 1:7] = 4.0  # a sharp mask: tight == loose
    np.testing.assert_allclose(stability_score(logits, offset=1.0), [4 / 16, 1.0])
    assert float(stability_score(np.full((4, 4), -3.0), offset=1.0)) == 0.0
    assert float(stability_score(logits[0], offset=1.0, threshold=3.5)) == 0.0


def test_box_iou_and_box_nms_keep_the_best_of_each_overlapping_group() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 1, 10, 11], [20, 20, 30, 30], [0, 0, 10, 20]])
    np.testing.assert_allclose(box_iou(boxes[:1], boxes)[0], [1.0, 90 / 110, 0.0, 0.5])
    scores = np.array([0.90, 0.95, 0.80, 0.99])
    # 1 beats its near-copy 0; 3 overlaps 1 by less than the threshold; 2 is alone
    assert box_nms(boxes, scores, 0.7).tolist() == [3, 1, 2]
    assert box_nms(np.zeros((0, 4)), np.zeros(0), 0.7).tolist() == []


def test_mask_nms_tells_apart_masks_whose_boxes_coincide() -> None:
    ring = np.ones((10, 10), dtype=bool)
    ring[2:8, 2:8] = False
    disk = ~ring
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [2, 2, 8, 8]])
    crops = [ring, np.ones((10, 10), dtype=bool), np.ones((6, 6), dtype=bool)]
    assert mask_iou(boxes[0], ring, boxes[2], crops[2]) == 0.0
    assert mask_iou(boxes[2], crops[2], [0, 0, 10, 10], disk) == 1.0
    # the full square (best) swallows the ring (IoU 0.64) but not the small disk (0.36)
    kept = mask_nms(boxes, crops, np.array([0.8, 0.9, 0.85]), 0.6)
    assert kept.tolist() == [1, 2]
    assert mask_nms(boxes, crops, np.array([0.8, 0.9, 0.85]), 0.7).tolist() == [1, 2, 0]


def test_clean_mask_drops_small_islands_and_fills_small_holes_only() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:16, 2:16] = True
    mask[5:7, 5:7] = False  # a hole of 4 pixels
    mask[9:14, 9:14] = False  # a hole of 25 pixels
    mask[18:20, 18:20] = True  # an island of 4 pixels
    out = clean_mask(mask, min_area=5, max_hole_area=10)
    assert out[5:7, 5:7].all() and not out[9:14, 9:14].any()
    assert not out[18:20, 18:20].any()
    assert (clean_mask(mask, 0, 0) == mask).all()


def _candidate(y0: int, x0: int, mask: np.ndarray, score: float) -> Candidate:
    return Candidate((y0, x0, y0 + mask.shape[0], x0 + mask.shape[1]), mask, score, 1.0)


def test_paint_gives_each_pixel_to_the_best_object_and_drops_covered_ones() -> None:
    square = np.ones((10, 10), dtype=bool)
    union = np.ones((10, 30), dtype=bool)  # covers both squares and the gap between them
    candidates = [
        _candidate(0, 0, square, 0.95),
        _candidate(0, 20, square, 0.93),
        _candidate(0, 0, union, 0.90),
        _candidate(0, 5, square, 0.97),  # overlaps the first square by half: wins there
    ]
    labels = paint(candidates, (12, 32), min_area=4)
    assert labels.dtype == np.uint32
    assert (labels[0:10, 5:15] == 1).all()  # best first: id 1
    assert (labels[0:10, 0:5] == 2).all()  # the first square keeps what is left (half)
    assert (labels[0:10, 20:30] == 3).all()
    assert set(np.unique(labels)) == {0, 1, 2, 3}  # the union had only the gap left


def test_objects_are_linked_one_to_one_by_overlap_with_ids_never_reused() -> None:
    a = np.zeros((12, 12), dtype=np.uint32)
    a[0:4, 0:4], a[6:12, 0:6] = 1, 2
    b = np.zeros_like(a)
    b[0:4, 1:4] = 7  # continues 1 (IoU 0.75)
    b[6:12, 0:4], b[6:12, 4:6] = 3, 4  # 2 splits: the larger part continues it
    b[0:3, 8:12] = 9  # new
    assert match_objects(a, b, 0.3) == {7: 1, 3: 2}
    linker = SliceLinker(0.3)
    first, second = linker.add(a, 0), linker.add(b, 1)
    assert first[0, 0] == second[0, 1] and first[6, 0] == second[6, 0]
    assert len({int(second[6, 4]), int(second[0, 8])} & set(np.unique(first).tolist())) == 0
    assert linker.next_id == 5
    # a gap in z: nothing continues, even where objects overlap
    third = linker.add(b, 3)
    assert not set(np.unique(third[third > 0])) & set(np.unique(second[second > 0]))


def test_link_false_numbers_every_slice_object_anew() -> None:
    local = np.zeros((6, 6), dtype=np.uint16)
    local[1:4, 1:4] = 1
    out = list(link_slices([local, local, local], link=False, next_id=10))
    assert [int(s.max()) for s in out] == [10, 11, 12]
    linked = list(link_slices([local, local, local]))
    assert [int(s.max()) for s in linked] == [1, 1, 1]
    with pytest.raises(ValueError, match="2D integer array"):
        SliceLinker().add(np.zeros((2, 3, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="iou_threshold"):
        SliceLinker(0.0)


def test_store_writer_commits_each_3d_object_once_it_ends(tmp_path) -> None:
    linked = np.zeros((4, 16, 16), dtype=np.uint32)
    linked[0:3, 2:6, 2:6] = 5  # through three slices
    linked[1, 10:14, 10:14] = 6  # one slice, partly under a hand-made label
    linked[2, 0:2, 14:16] = 8  # wholly under a hand-made label
    linked[3, 2:6, 2:6] = 7  # after 5 ended
    store = LabelsStore.create(tmp_path / "seg.ome.zarr", linked.shape, chunks=(1, 8, 8))
    by_hand = np.zeros((16, 16), dtype=bool)
    by_hand[12:14, 12:14] = True
    store.commit(by_hand, z=1)  # id 1
    store.commit(np.roll(by_hand, (-12, 2), axis=(0, 1)), z=2)  # id 2, at [0:2, 14:16]
    writer = StoreWriter(store, {"method": "automatic"})
    for z in range(4):
        writer.add(z, linked[z])
    writer.finish()
    assert writer.committed == [3, 4, 5]  # 6 ended first (slice 2), then 5; 8 skipped; 7
    out = store.read()
    assert (out[0:3, 2:6, 2:6] == 4).all() and (out[3, 2:6, 2:6] == 5).all()
    assert (out[1, 12:14, 12:14] == 1).all() and (out[2, 0:2, 14:16] == 2).all()  # kept
    assert (out[1, 10:12, 10:14] == 3).all()
    log = store.log()
    assert [e["id"] for e in log] == [1, 2, 3, 4, 5]
    assert log[3]["z"] == [0, 3] and log[3]["record"] == {"method": "automatic"}
    store.close()


# -- the real model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> sg.SamModel:
    return sg.load_model("mobile_sam", device="cpu", progress=False)


@pytest.mark.slow
def test_bad_input_is_refused_before_any_work(model, tmp_path) -> None:
    image, _ = nuclei_volume((8, 64, 64), seed=3)
    store = sg.embed(sg.open_volume(image), model, compute=False, progress=False)
    seg = Segmenter(model, store)
    with pytest.raises(IndexError, match="slice 8 is outside the volume's 8 slices"):
        sg.segment_automatic(seg, z=8)
    with pytest.raises(IndexError, match="outside"):
        sg.segment_automatic(seg, z=range(5, 10))
    with pytest.raises(ValueError, match="increasing order"):
        sg.segment_automatic(seg, z=[3, 1])
    with pytest.raises(ValueError, match="no slice"):
        sg.segment_automatic(seg, z=[])
    with pytest.raises(TypeError, match="slice index"):
        sg.segment_automatic(seg, z=2.0)
    with pytest.raises(TypeError, match=r"unknown parameter.*point_per_side"):
        sg.segment_automatic(seg, point_per_side=8)
    with pytest.raises(ValueError, match="points_per_side must be at least 1"):
        sg.segment_automatic(seg, points_per_side=0)
    with pytest.raises(ValueError, match="not both"):
        sg.segment_automatic(seg, "mobile_sam")
    with pytest.raises(ValueError, match="pass the model"):
        sg.segment_automatic(image)
    with LabelsStore.create(tmp_path / "wrong.ome.zarr", (8, 64, 60)) as wrong:
        with pytest.raises(ValueError, match=r"shape \(8, 64, 60\), the volume is \(8, 64, 64\)"):
            sg.segment_automatic(seg, out=wrong)
    with pytest.raises(IndexError, match="outside"):
        segment_slice(seg, -9)
    assert not store.done().any()  # nothing was embedded


@pytest.mark.slow
def test_nuclei_are_recovered_in_3d_with_unique_ids(model, capsys) -> None:
    image, truth = nuclei_volume((16, 160, 160), seed=0)
    zs = range(6, 9)
    start = time.perf_counter()
    labels = sg.segment_automatic(image, model, z=zs, points_per_side=10, progress=False)
    seconds = (time.perf_counter() - start) / len(zs)
    assert labels.shape == (3, 160, 160) and labels.dtype == np.uint32
    f1_3d = instance_f1(labels, truth[6:9])
    f1_2d = [instance_f1(labels[i], truth[z]) for i, z in enumerate(zs)]
    with capsys.disabled():
        print(
            f"\nautomatic, nuclei 3 x 160 x 160, 10 x 10 points: F1@0.5 3D {f1_3d:.3f}, "
            f"per slice {', '.join(f'{f:.3f}' for f in f1_2d)}; {seconds:.1f} s per slice"
        )
    assert f1_3d >= 0.85  # measured 0.93 (13 of 14 nuclei)
    assert min(f1_2d) >= 0.75  # measured 0.86-0.93 (nuclei glow a slice past their extent)
    # one object, one id, one connected piece per slice
    for i in range(len(zs)):
        for label in np.unique(labels[i][labels[i] > 0]):
            assert ndimage.label(labels[i] == label)[1] == 1


@pytest.mark.slow
def test_a_tiled_slice_is_stitched_without_duplicates_or_cut_objects(model, capsys) -> None:
    image, truth = nuclei_volume((8, 128, 200), seed=1)
    volume = sg.open_volume(image)
    store = sg.embed(volume, model, tile_size=128, halo=16, slices=[3], progress=False)
    assert store.grid.windows == ((0, 0, 128, 128), (0, 72, 128, 200))
    # nuclei cross both inner window edges (x 72 and 128); with a margin of 8 pixels,
    # nucleus 11 (x 102-117) lies whole in both windows and is found twice
    params = AutomaticParams(points_per_side=8, edge_margin=8)
    labels = segment_slice(Segmenter(model, store), 3, params)
    f1 = instance_f1(labels, truth[3])
    with capsys.disabled():
        print(f"\nautomatic, tiled 128 x 200 slice (2 windows), 8 x 8 points: F1@0.5 {f1:.3f}")
    assert f1 >= 0.8  # measured 0.96
    # each true object is covered by one predicted object, also in the windows' overlap
    for t in np.unique(truth[3][truth[3] > 0]):
        ids, counts = np.unique(labels[truth[3] == t], return_counts=True)
        big = [i for i, c in zip(ids, counts, strict=True) if i and c >= 0.2 * counts.sum()]
        assert len(big) <= 1, f"nucleus {t} is split between objects {big}"
    for label in np.unique(labels[labels > 0]):
        assert ndimage.label(labels == label)[1] == 1


@pytest.mark.slow
def test_results_go_to_a_labels_store_with_unique_ids_across_slices(model, tmp_path) -> None:
    image, _ = nuclei_volume((8, 96, 96), seed=2)
    store = sg.embed(sg.open_volume(image), model, progress=False, slices=[3, 4])
    seg = Segmenter(model, store)
    params = AutomaticParams(points_per_side=6)
    array = sg.segment_automatic(seg, z=range(3, 5), params=params, link=False, progress=False)
    ids = [set(np.unique(s[s > 0]).tolist()) for s in array]
    assert ids[0] and ids[1] and not ids[0] & ids[1]  # unique across slices
    assert sorted(ids[0] | ids[1]) == list(range(1, len(ids[0]) + len(ids[1]) + 1))
    done: list[tuple[int, int]] = []
    out = sg.segment_automatic(
        seg,
        z=range(3, 5),
        params=params,
        link=False,
        out=tmp_path / "auto.ome.zarr",
        progress=False,
        callback=lambda i, n: done.append((i, n)),
    )
    assert isinstance(out, LabelsStore)
    LabelsStore.open(tmp_path / "auto.ome.zarr").close()  # closed: free for others to open
    assert done == [(1, 2), (2, 2)]
    written = out.read()
    assert not written[[0, 1, 2, 5, 6, 7]].any()
    # the same objects, numbered by the store in commit order
    for z in (3, 4):
        assert instance_f1(written[z], array[z - 3], threshold=0.99) == 1.0
    log = out.log()
    assert len(log) == len(ids[0]) + len(ids[1])
    assert log[0]["record"]["params"]["points_per_side"] == 6
    assert log[0]["record"]["model"]["name"] == "mobile_sam"


@pytest.mark.slow
def test_cancel_stops_between_batches_and_keeps_finished_slices(model) -> None:
    image, _ = nuclei_volume((8, 96, 96), seed=2)
    seg = Segmenter(model, sg.embed(sg.open_volume(image), model, compute=False, progress=False))
    params = AutomaticParams(points_per_side=4, points_per_batch=64)  # one batch a slice
    stopped = sg.segment_automatic(seg, params=params, cancel=lambda: True, progress=False)
    assert stopped.shape == (8, 96, 96) and not stopped.any()
    assert not seg.store.done().any()  # stopped before embedding anything
    polls: list[int] = []

    def after_one_slice() -> bool:  # polls: before the window, the batch, after the slice
        polls.append(1)
        return len(polls) > 3

    part = sg.segment_automatic(
        seg, z=range(3, 6), params=params, cancel=after_one_slice, progress=False
    )
    assert part[0].any() and not part[1:].any()
    assert seg.store.done().tolist() == [False] * 3 + [True, False, False, False, False]
    single = sg.segment_automatic(seg, z=3, params=params, progress=False)
    assert single.shape == (96, 96)  # an index gives one slice, as in NumPy
    assert (single == part[0]).all()
