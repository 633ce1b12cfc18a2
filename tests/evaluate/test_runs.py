"""The interactive evaluation: known answers without a model, where the clicks land, bad
input, and the real model end to end (slow)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

import napari_segany as sg
from napari_segany.cli import main
from napari_segany.evaluate.prompts import corrective_click, deepest_point, tight_box
from napari_segany.evaluate.runs import InteractiveReport, evaluate_interactive, run_protocol
from napari_segany.scores import paired_accuracy, segmentation_accuracy, split_components
from napari_segany.segmenter import Prompt

ITERATIONS = 4


def _blocks() -> np.ndarray:
    """Two slices of rectangles and an L-shape; ids are not sequential."""
    labels = np.zeros((2, 64, 80), dtype=np.uint16)
    labels[0, 5:20, 5:25] = 3
    labels[0, 30:50, 40:70] = 7
    labels[0, 40:60, 5:15] = 9
    labels[1, 10:30, 10:30] = 2
    labels[1, 10:16, 30:60] = 2  # an L: its deepest point is in the square part
    return labels


class _Fake:
    """A decoder that answers from the ground truth: perfect from the ``good``-th prompt
    on (points and box counted together), empty before it."""

    def __init__(self, labels: np.ndarray, good: int = 1) -> None:
        self.labels, self.good = labels, good
        self.calls: list[tuple[int, list[Prompt]]] = []

    def __call__(self, z: int, prompts: list[Prompt], feedbacks: list) -> list[SimpleNamespace]:
        self.calls.append((z, prompts))
        results = []
        for prompt in prompts:
            n_points = 0 if prompt.points is None else len(prompt.points)
            if prompt.points is not None:
                y, x = np.asarray(prompt.points[0], dtype=int)
            else:
                y0, x0, y1, _ = np.asarray(prompt.box, dtype=int)
                y, x = (y0 + y1) // 2, x0  # the box's left edge is on the object
            mask = self.labels[z] == self.labels[z, y, x]
            if n_points + (prompt.box is not None) < self.good:
                mask = np.zeros_like(mask)
            results.append(SimpleNamespace(mask=mask, feedback=("logits", n_points)))
        return results


def _report(scores, start: str = "point") -> InteractiveReport:
    iterations = scores.ious.shape[1] - 1
    return InteractiveReport.from_scores(
        scores, start=start, iterations=iterations, model="fake", refine=False
    )


# --- the protocol's numbers without a model ------------------------------------------------


@pytest.mark.parametrize("start", ["point", "box"])
def test_a_perfect_predictor_scores_one_at_the_first_prompt(start: str) -> None:
    labels = _blocks()
    fake = _Fake(labels)
    report = _report(run_protocol(fake, labels, start=start, iterations=ITERATIONS), start)
    assert report.n_objects == 4 and report.n_slices == 2
    assert report.objects.tolist() == [[0, 3], [0, 7], [0, 9], [1, 2]]
    np.testing.assert_array_equal(report.ious, 1.0)
    np.testing.assert_array_equal(report.msa, 1.0)
    np.testing.assert_array_equal(report.sa50, 1.0)
    assert report.noc85 == report.noc90 == 1.0
    assert report.noc(0.9) == (1.0, 0)
    # perfect objects get no more clicks: one decode per object in all
    assert sum(len(prompts) for _, prompts in fake.calls) == 4


@pytest.mark.parametrize("start", ["point", "box"])
def test_an_empty_predictor_scores_zero_and_never_reaches_the_targets(start: str) -> None:
    labels = _blocks()
    report = _report(
        run_protocol(_Fake(labels, good=99), labels, start=start, iterations=ITERATIONS), start
    )
    np.testing.assert_array_equal(report.ious, 0.0)
    np.testing.assert_array_equal(report.msa, 0.0)
    assert report.noc(0.85) == (ITERATIONS + 1, 4)  # the cap, and every object failed


def test_the_number_of_clicks_counts_the_first_prompt() -> None:
    labels = _blocks()
    report = _report(run_protocol(_Fake(labels, good=3), labels, iterations=ITERATIONS))
    np.testing.assert_array_equal(report.mean_iou, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(report.msa, [0, 0, 1, 1, 1])
    assert report.noc85 == 3.0
    assert [row["clicks"] for row in report.rows] == [1, 2, 3, 4, 5]


def test_every_prompt_carries_all_earlier_clicks_the_box_and_the_feedback() -> None:
    labels = _blocks()[:1]
    fake = _Fake(labels, good=99)
    seen = []

    def decode(z: int, prompts: list[Prompt], feedbacks: list) -> list:
        seen.append(feedbacks)
        return fake(z, prompts, feedbacks)

    run_protocol(decode, labels, start="box", iterations=2, chunk=2)
    prompts = [p for _, batch in fake.calls for p in batch]
    assert len(prompts) == 3 * 3  # three objects, three rounds
    first, last = prompts[0], prompts[-1]
    assert first.points is None and first.box.tolist() == [5, 5, 20, 25]
    assert last.box is not None and len(last.points) == 2 and last.labels.tolist() == [1, 1]
    assert seen[0] == [None, None] and seen[-1] == [("logits", 1)]  # chunks of 2 objects


def test_masks_are_assembled_as_micro_sam_does_before_scoring() -> None:
    """The smaller mask keeps the pixels two masks share; a mask in two pieces is two
    instances (one of them a false positive)."""
    labels = np.zeros((1, 40, 40), dtype=np.int32)
    labels[0, 2:12, 2:12], labels[0, 20:30, 20:30] = 1, 2
    extra = np.zeros((40, 40), dtype=bool)
    extra[35:38, 35:38] = True

    def decode(z: int, prompts: list[Prompt], feedbacks: list) -> list:
        out = []
        for p in prompts:
            y, x = np.asarray(p.points[0], dtype=int)
            mask = labels[z] == labels[z, y, x]
            out.append(SimpleNamespace(mask=mask | extra if x > 15 else mask, feedback=None))
        return out

    report = _report(run_protocol(decode, labels, iterations=0))
    assert report.ious[:, 0].tolist() == [1.0, pytest.approx(100 / 109)]
    # three predicted instances (object 2 split in two), two true, two matched
    np.testing.assert_allclose(report.msa_assembled, [2 / 3])


def test_where_masks_overlap_the_smaller_keeps_the_pixels() -> None:
    labels = np.zeros((1, 30, 20), dtype=np.uint8)
    labels[0, 2:12, 2:12], labels[0, 15:25, 2:12] = 1, 2
    reach = np.zeros((30, 20), dtype=bool)
    reach[2:16, 2:12] = True  # object 1's mask reaches one row into object 2

    def decode(z: int, prompts: list[Prompt], feedbacks: list) -> list:
        firsts = [np.asarray(p.points[0], dtype=int) for p in prompts]
        masks = [reach if y < 14 else labels[z] == 2 for y, _ in firsts]
        return [SimpleNamespace(mask=m, feedback=None) for m in masks]

    report = _report(run_protocol(decode, labels, iterations=0))
    assert report.ious[:, 0].tolist() == [pytest.approx(100 / 140), 1.0]
    assembled = np.zeros((30, 20), dtype=np.uint8)
    assembled[2:15, 2:12], assembled[15:25, 2:12] = 1, 2
    expected = segmentation_accuracy(assembled, labels[0])
    assert expected.mean() < 1.0
    np.testing.assert_allclose(report.msa_assembled, [expected.mean()])
    np.testing.assert_allclose(report.sa50_assembled, [expected[0]])


def test_paired_accuracy_scores_each_mask_against_its_own_object() -> None:
    ious = np.array([[1.0, 1.0], [0.72, 0.5], [0.2, 0.95]])
    sa = paired_accuracy(ious)
    assert sa.shape == (10, 2)
    # first prompt: at 0.5..0.70 two of three objects hit, 2 / (2 + 2); then one, 1 / 5
    np.testing.assert_allclose(sa[:5, 0], 0.5)
    np.testing.assert_allclose(sa[5:, 0], 0.2)
    # after the click: three hits at 0.5, then two at every threshold up to 0.95
    assert sa[0, 1] == 1.0 and sa[1, 1] == 0.5 and sa[-1, 1] == 0.5
    # a better mask never lowers it
    better = ious.copy()
    better[2, 0] = 0.6
    assert (paired_accuracy(better) >= sa).all()


def test_segmentation_accuracy_matches_one_to_one_above_each_threshold() -> None:
    truth = np.zeros((20, 20), dtype=np.int64)
    truth[0:10, 0:10], truth[10:20, 10:20] = 1, 2
    found = truth.copy()
    found[0:10, 0:5] = 0  # IoU 0.5 with object 1
    sa = segmentation_accuracy(found, truth)
    assert sa[0] == 1.0  # both matched at 0.5
    np.testing.assert_allclose(sa[1:], 1 / 3)  # then only object 2: 1 / (2 + 2 - 1)
    pieces = split_components(np.array([[1, 0, 1], [1, 0, 1]]))
    assert sorted(np.unique(pieces)) == [0, 1, 2]


# --- where the clicks land -----------------------------------------------------------------


def test_the_deepest_point_of_a_square_is_its_centre_and_the_border_counts_as_outside() -> None:
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:21, 20:31] = True
    assert deepest_point(mask) == (15, 25)
    edge = np.zeros((40, 50), dtype=bool)
    edge[0:11, 0:30] = True  # at the image's top left corner
    assert deepest_point(edge)[0] == 5


def test_a_box_runs_along_the_outer_edges_of_the_pixels() -> None:
    mask = np.zeros((40, 50), dtype=bool)
    mask[10:21, 20:31] = True
    assert tight_box(mask).tolist() == [10, 20, 21, 31]


def test_a_missed_part_gets_a_positive_click_at_its_deepest_point() -> None:
    truth = np.zeros((60, 60), dtype=bool)
    truth[10:50, 10:50] = True
    pred = truth.copy()
    pred[10:31, 29:50] = False  # a 21 x 21 square missed at the top right
    pred[52:55, 10:20] = True  # and a little extra below (30 px)
    assert corrective_click(truth, pred) == ((20, 39), 1)


def test_an_overshoot_gets_a_negative_click_at_its_deepest_point() -> None:
    truth = np.zeros((60, 60), dtype=bool)
    truth[10:30, 10:30] = True
    pred = truth.copy()
    pred[30:51, 10:31] = True  # 21 x 21 too much below
    pred[12:14, 12:14] = False  # 4 px missed
    assert corrective_click(truth, pred) == ((40, 20), 0)
    assert corrective_click(truth, truth) is None


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "kwargs", "message"),
    [
        (np.zeros((32, 40), dtype=np.uint8), {}, "no object"),
        (np.ones((32, 30), dtype=np.uint8), {}, r"labels of shape \(32, 30\) do not match"),
        (np.ones((32, 40), dtype=np.float32), {}, "must be integer"),
        (np.ones((32, 40), dtype=bool), {}, "must be integer"),
        (-np.ones((32, 40), dtype=np.int8), {}, "negative"),
        (np.ones((32, 40), dtype=np.uint8), {"start": "scribble"}, "start must be 'point' or"),
        (np.ones((32, 40), dtype=np.uint8), {"iterations": -1}, "iterations must be 0 or more"),
    ],
)
def test_bad_input_fails_with_a_clear_message_before_any_model_loads(
    labels: np.ndarray, kwargs: dict, message: str
) -> None:
    image = np.zeros((32, 40), dtype=np.uint8)
    # a model name that does not exist: reaching the model would raise another error
    with pytest.raises(ValueError, match=message):
        evaluate_interactive("no-such-model", image, labels, progress=False, **kwargs)


def test_labels_are_read_from_a_tiff_file(tmp_path: Path) -> None:
    image = np.zeros((32, 40), dtype=np.uint8)
    tifffile.imwrite(
        tmp_path / "labels.tif", np.ones((3, 32, 40), dtype=np.uint16), photometric="minisblack"
    )
    with pytest.raises(ValueError, match=r"labels of shape \(3, 32, 40\) do not match"):
        evaluate_interactive("no-such-model", image, tmp_path / "labels.tif", progress=False)


# --- the real model ------------------------------------------------------------------------


def _disks(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Four bright disks of different sizes on a noisy background, and their labels."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(40.0, 8.0, (size, size))
    labels = np.zeros((size, size), dtype=np.uint16)
    for i, (cy, cx, r) in enumerate([(64, 64, 30), (64, 190, 22), (190, 70, 26), (185, 185, 36)]):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[inside] += 150.0
        labels[inside] = i + 1
    return np.clip(image, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def model() -> sg.SamModel:
    return sg.load_model("mobile_sam", device="cpu", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("start", ["point", "box"])
def test_mobile_sam_on_bright_disks(model: sg.SamModel, start: str) -> None:
    image, labels = _disks()
    progress = []
    report = sg.evaluate_interactive(
        model,
        image,
        labels,
        start=start,
        iterations=2,
        progress=False,
        callback=lambda done, total: progress.append((done, total)),
    )
    assert report.ious.shape == (4, 3) and report.model == "mobile_sam"
    assert ((report.ious >= 0) & (report.ious <= 1)).all()
    assert ((report.msa >= 0) & (report.msa <= 1)).all()
    assert report.mean_iou[-1] >= report.mean_iou[0]
    assert report.mean_iou[0] > 0.7  # bright disks: easy objects
    assert 1 <= report.noc85 <= 3
    assert progress[-1] == (12, 12)
    assert report.decode_ms > 0 and report.embed_seconds > 0


@pytest.mark.slow
def test_the_cli_prints_the_table_and_writes_json_and_a_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, labels = _disks()
    tifffile.imwrite(tmp_path / "disks.tif", image)
    tifffile.imwrite(tmp_path / "disks_labels.tif", labels)
    out = tmp_path / "results"
    argv = [
        "evaluate",
        str(tmp_path / "disks.tif"),
        str(tmp_path / "disks_labels.tif"),
        "--iterations",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean IoU" in printed and "NoC@85" in printed and "4 object(s)" in printed
    results = json.loads((out / "evaluation.json").read_text())
    assert results["objects"] == 4 and len(results["rows"]) == 2
    assert len(results["per_object"]["iou"]) == 4
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_cli_reports_bad_labels_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((32, 40), dtype=np.uint8))
    tifffile.imwrite(tmp_path / "labels.tif", np.zeros((32, 40), dtype=np.uint8))
    argv = ["evaluate", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif")]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-segany: error: labels hold no object")
    assert "\n" not in err


# --- the 3D protocol ----------------------------------------------------------------------


def test_z_extent_error_and_3d_scores_on_known_volumes() -> None:
    from napari_segany.evaluate.volume import PropagationReport, _z_error, objects_in_3d

    truth = np.zeros((10, 8, 8), dtype=bool)
    truth[2:7, 2:6, 2:6] = True
    found = np.zeros_like(truth)
    found[3:9, 2:6, 2:6] = True  # starts one slice late, ends two slices late
    assert _z_error(truth, found) == 3
    assert _z_error(truth, truth) == 0
    assert _z_error(truth, np.zeros_like(truth)) == 5  # nothing found: the whole extent
    labels = np.zeros((4, 5, 5), dtype=np.uint16)
    labels[1:3, 0:2, 0:2], labels[0, 3:5, 3:5] = 7, 2
    assert [(i, (b[0].start, b[0].stop)) for i, b in objects_in_3d(labels)] == [
        (2, (0, 1)),
        (7, (1, 3)),
    ]
    report = PropagationReport(
        start="box",
        labels=np.array([1, 2, 3, 4]),
        ious=np.array([1.0, 0.8, 0.55, 0.1]),
        z_errors=np.array([0, 1, 2, 9]),
        seconds=2.0,
        model="m",
        refine=True,
    )
    assert report.mean_iou == pytest.approx(0.6125) and report.median_z_error == 1.5
    assert report.sa50 == pytest.approx(3 / 5)  # three hits, one miss counted twice
    assert "median 1.5 slices" in report.table()
    assert report.as_dict()["seconds_per_object"] == 0.5


def test_3d_protocol_refuses_what_it_cannot_score() -> None:
    with pytest.raises(ValueError, match=r"needs \(Z, Y, X\) labels"):
        sg.evaluate_in_3d("mobile_sam", np.zeros((8, 8)), np.ones((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="start must be"):
        sg.evaluate_in_3d("mobile_sam", None, np.ones((2, 8, 8), dtype=np.uint8), start="x")
    with pytest.raises(ValueError, match="do not match"):
        sg.evaluate_in_3d(
            "mobile_sam", np.zeros((3, 8, 8)), np.ones((2, 8, 8), dtype=np.uint8), progress=False
        )


def test_corrections_belong_to_the_3d_protocol(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, labels = tmp_path / "image.tif", tmp_path / "labels.tif"
    tifffile.imwrite(image, np.zeros((16, 16), dtype=np.uint8))
    tifffile.imwrite(labels, np.ones((16, 16), dtype=np.uint8))
    assert main(["evaluate", str(image), str(labels), "--corrections", "2"]) == 1
    assert "--corrections goes with --in-3d" in capsys.readouterr().err
    from napari_segany.evaluate.volume import evaluate_propagation

    with pytest.raises(ValueError, match="corrections must be"):
        evaluate_propagation(None, np.ones((2, 8, 8), dtype=np.uint8), corrections=-1)  # type: ignore[arg-type]


@pytest.mark.slow
def test_3d_protocol_carries_generated_blobs_and_finds_their_ends(tmp_path: Path) -> None:
    """Two blobs that end at known slices; a box on each one's largest slice, propagated."""
    zz, yy, xx = np.ogrid[:12, :96, :128]
    first = ((zz - 4) / 3.2) ** 2 + ((yy - 40) / 20) ** 2 + ((xx - 40) / 20) ** 2 <= 1
    second = ((zz - 7) / 3.2) ** 2 + ((yy - 55) / 18) ** 2 + ((xx - 95) / 18) ** 2 <= 1
    truth = first.astype(np.uint16) + 2 * second.astype(np.uint16)
    image = np.where(truth > 0, 190.0, 30.0) + np.random.default_rng(1).normal(0, 6, truth.shape)
    report = sg.evaluate_in_3d("mobile_sam", image, truth, start="box", progress=False)
    assert report.n_objects == 2
    assert (report.ious > 0.6).all(), report.ious
    assert (report.z_errors <= 2).all(), report.z_errors
    tifffile.imwrite(tmp_path / "truth.tif", truth, photometric="minisblack")
    tifffile.imwrite(tmp_path / "image.tif", image.astype(np.float32), photometric="minisblack")
    status = main(
        [
            "evaluate",
            str(tmp_path / "image.tif"),
            str(tmp_path / "truth.tif"),
            "--in-3d",
            "--start",
            "point",
            "--corrections",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    assert status == 0
    saved = json.loads((tmp_path / "out" / "evaluation-3d.json").read_text())
    assert saved["objects"] == 2 and saved["start"] == "point"
    after = np.array(saved["per_object"]["corrected_iou"])
    assert after.shape == (2, 2)
    assert saved["mean_iou_after_corrections"] == pytest.approx(after.mean(axis=0).tolist())
    # a correction adds the user's slice to the annotations: never far worse than before
    assert (after[:, -1] >= np.array(saved["per_object"]["iou"]) - 0.05).all()
