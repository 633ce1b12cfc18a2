"""The ``napari-segany`` command line."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from napari_segany import __version__, load_model, open_volume, weights
from napari_segany.automatic.params import MODES, AutomaticParams, with_overrides
from napari_segany.cli import main
from napari_segany.finetuning.data import MIN_OBJECTS
from napari_segany.labels.store import LabelsStore
from napari_segany.session import Session


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(path))
    return path


def test_models_lists_every_model_and_marks_the_default(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache.mkdir()
    (cache / "mobile_sam.pt").write_bytes(b"placeholder")  # cached, whatever its state

    assert main(["models"]) == 0

    out = capsys.readouterr().out
    lines = {
        line.split()[1] if line.startswith("*") else line.split()[0]: line
        for line in out.splitlines()
        if line.strip()
    }
    for name in weights.list_models():
        assert name in lines
    assert lines["mobile_sam"].startswith("*")
    assert lines["mobile_sam"].endswith(f"yes  {cache / 'mobile_sam.pt'}")
    assert lines["vit_h"].endswith("no")
    assert "2.56 GB" in lines["vit_h"]
    assert str(cache) in out


def test_fetch_of_an_unknown_model_fails_with_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["fetch", "vit_x", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown model 'vit_x'" in captured.err
    assert "mobile_sam" in captured.err
    assert "Traceback" not in captured.err


def test_doctor_reports_the_setup_and_the_cache(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache.mkdir()
    (cache / "mobile_sam.pt").write_bytes(b"not the real weights")
    (cache / "my_finetuned.pth").write_bytes(b"")

    assert main(["doctor"]) == 0

    out = capsys.readouterr().out
    for key in ("python", "torch", "device (auto)", "display", "qt", "napari"):
        assert f"\n{key} " in out
    assert f"cache          {cache} (from {weights.CACHE_ENV})" in out
    assert "mobile_sam: bad" in out
    assert "vit_b: not downloaded" in out
    assert f"(not in the registry) {cache / 'my_finetuned.pth'}" in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "usage: napari-segany" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"napari-segany {__version__}"


def test_demo_with_a_bad_device_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--device", "tpu9", "--out", "unused"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-segany: error:")
    assert "Traceback" not in err


def test_the_installed_console_script_answers_help() -> None:
    script = Path(sys.executable).with_name("napari-segany")
    found = str(script) if script.exists() else shutil.which("napari-segany")
    assert found, "the napari-segany script is not installed: pip install -e ."
    result = subprocess.run(
        [found, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for command in ("models", "fetch", "doctor", "demo"):
        assert command in result.stdout


@pytest.mark.slow
def test_fetch_of_the_default_model_prints_its_path(capsys: pytest.CaptureFixture[str]) -> None:
    # The real cache: the 40 MB file is shared with the other slow tests.
    assert main(["fetch", "mobile_sam", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(weights.cache_dir() / "mobile_sam.pt")


# -- finetune ---------------------------------------------------------------------------


def _blobs(per_side: int = 4, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 2D image of ``per_side**2`` bright ellipses on a noisy background, and its labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.uint32)
    yy, xx = np.mgrid[:size, :size]
    step = size / per_side
    for k in range(per_side**2):
        cy, cx = step * (k // per_side + 0.5), step * (k % per_side + 0.5)
        cy, cx = cy + rng.uniform(-6, 6), cx + rng.uniform(-6, 6)
        ry, rx = rng.uniform(10, 22, 2)
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = k + 1
    brightness = np.concatenate([[0.0], rng.uniform(0.5, 1.0, per_side**2)])
    image = ndimage.gaussian_filter(brightness[labels], 1.5) + rng.normal(0, 0.08, labels.shape)
    return (image * 1000 + 200).clip(0).astype(np.uint16), labels


def _finetune_args(labels: Path, out: Path, *more: str) -> list[str]:
    return ["finetune", str(labels), "--out", str(out), "--no-progress", *more]


def test_help_lists_finetune(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "finetune" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["finetune", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("LABELS_STORE", "--model", "--out", "--budget", "--epochs", "--seed"):
        assert option in text
    for option in ("--validation", "--device", "--decoder-only", "--json"):
        assert option in text
    assert "held back" in text


def test_finetune_without_embeddings_beside_the_labels_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, labels = _blobs()
    store = tmp_path / "ws" / "labels.ome.zarr"
    LabelsStore.from_array(store, labels).close()
    out = tmp_path / "tuned.pt"

    assert main(_finetune_args(store, out)) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("napari-segany: error:")
    assert str(store) in captured.err
    assert "no embeddings" in captured.err
    assert "napari-segany embed" in captured.err
    assert not out.exists()


def test_finetune_with_too_few_objects_says_how_many_are_needed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, labels = _blobs()
    store = tmp_path / "labels.ome.zarr"
    LabelsStore.from_array(store, np.where(labels <= 3, labels, 0)).close()

    assert main(_finetune_args(store, tmp_path / "tuned.pt")) == 1

    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("napari-segany: error:")
    assert f"at least {MIN_OBJECTS}" in err
    assert "found 3" in err


def test_finetune_of_a_missing_store_or_into_a_folder_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_finetune_args(tmp_path / "nothing.ome.zarr", tmp_path / "t.pt")) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "no labels store" in err

    _, labels = _blobs()
    LabelsStore.from_array(tmp_path / "labels.ome.zarr", labels).close()
    assert main(_finetune_args(tmp_path / "labels.ome.zarr", tmp_path)) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "is a folder" in err


@pytest.mark.slow
def test_finetune_learns_from_a_session_workspace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, labels = _blobs()
    model = load_model("mobile_sam", device="cpu", progress=False)
    session = Session.open(open_volume(image), model, workspace=tmp_path / "ws")
    session.embed_slice(0)
    for label in range(1, int(labels.max()) + 1):
        session.labels.commit(labels == label, z=0)
    session.close()
    store = tmp_path / "ws" / "labels.ome.zarr"
    out, report = tmp_path / "tuned" / "mobile_sam-tuned.pt", tmp_path / "report.json"

    args = _finetune_args(store, out, "--budget", "6", "--device", "cpu", "--json", str(report))
    assert main(args) == 0

    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "embeddings-mobile_sam.zarr" in captured.out  # the workspace's own embeddings
    assert "held-back objects:" in captured.out
    for score in ("click", "box", "clicks8"):
        assert f"  {score} " in captured.out
    written = json.loads(report.read_text())
    assert written["kept"] in ("tuned", "base")
    assert written["model"] == "mobile_sam"
    if written["kept"] == "tuned":
        assert f"wrote   {out}" in captured.out
        tuned = load_model(out, device="cpu", progress=False)
        assert tuned.encoder_sha256 == model.encoder_sha256  # the embeddings still serve
    else:
        assert "nothing was written" in captured.out
        assert not out.exists()


# -- segment ----------------------------------------------------------------------------


def _segment_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *options: str
) -> AutomaticParams:
    """The parameters ``napari-segany segment`` gives the batch (which is not run)."""
    import napari_segany.batch.segment as batch

    source = tmp_path / "stack.tif"
    source.write_bytes(b"")  # only its existence is checked before the batch
    named = inspect.signature(batch.segment_files).parameters
    given: list[AutomaticParams] = []

    def segment_files(*args: object, **kwargs: Any) -> list[object]:
        overrides = {k: v for k, v in kwargs.items() if k not in named}
        given.append(with_overrides(kwargs.get("params"), overrides))  # as segment_files does
        return []

    out = str(tmp_path / "out")
    with monkeypatch.context() as patch:  # undone before the next call reads the signature
        patch.setattr(batch, "segment_files", segment_files)
        assert main(["segment", str(source), "--out", out, "--no-progress", *options]) == 0
    (params,) = given
    return params


def test_segment_passes_mode_and_points_per_side_to_the_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = _segment_params(tmp_path, monkeypatch, "--mode", "seeded", "--points-per-side", "4")
    assert (params.mode, params.points_per_side) == ("seeded", 4)
    assert _segment_params(tmp_path, monkeypatch, "--mode", "grid").mode == "grid"
    assert _segment_params(tmp_path, monkeypatch) == AutomaticParams()  # nothing given: defaults


def test_segment_with_a_bad_mode_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["segment", "stack.tif", "--out", "seg", "--mode", "dense"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --mode: invalid choice: 'dense'" in err
    assert "Traceback" not in err


def test_segment_help_offers_every_mode_with_the_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    offered = text.split("--mode {", 1)[1].split("}", 1)[0].split(",")
    assert sorted(offered) == sorted(MODES)
    assert f"(default: {AutomaticParams.mode})" in text
