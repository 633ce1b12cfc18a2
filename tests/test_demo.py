"""The README's main job: ``napari-segany demo`` on the bundled sample, real weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_segany import LabelsStore
from napari_segany.cli import main
from napari_segany.demo import run_demo

pytestmark = pytest.mark.slow


def test_demo_segments_the_clicked_nucleus_then_the_volume(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "out", device="cpu")
    mask = tifffile.imread(result.mask_path)
    assert mask.shape == (256, 256) and set(np.unique(mask)) == {0, 1}
    assert mask[result.click_yx] == 1
    assert result.iou_with_ground_truth > 0.85
    assert result.score > 0.8
    picture = np.asarray(Image.open(result.overlay_path))
    assert picture.shape == (512, 512, 3)
    summary = json.loads(Path(result.summary_path).read_text())
    assert summary["model"] == "mobile_sam"
    assert summary["iou_with_ground_truth"] == pytest.approx(result.iou_with_ground_truth)

    whole = result.pipeline
    print(f"demo pipeline: {whole.objects} objects, F1 {whole.f1:.3f}")
    assert whole.f1 > 0.8  # measured 1.000 (37 objects); 0.946 before ends were trimmed
    assert summary["pipeline"]["objects"] == whole.objects > 0
    with LabelsStore.open(whole.labels_path, read_only=True) as labels:
        assert labels.shape == (16, 256, 256)
        assert len(np.unique(labels.read())) == whole.objects + 1
        assert {e["record"]["method"] for e in labels.log()} == {"automatic"}
    assert np.asarray(Image.open(whole.preview_path)).shape == (512, 512, 3)


def test_demo_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu", "--click-only"]) == 0
    printed = capsys.readouterr().out
    assert "IoU with the sample's ground truth" in printed
    assert (tmp_path / "overlay.png").is_file()
