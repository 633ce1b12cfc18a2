"""``napari-segany embed``: a volume on disk into a resumable embedding store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_segany.cli import main
from napari_segany.cli.embed import default_store_path
from napari_segany.embeddings import EmbeddingStore
from napari_segany.sample_data import nuclei_volume
from napari_segany.volume.volume import open_volume


def write_stack(path: Path, first: int = 0, depth: int = 3) -> Path:
    """``depth`` slices of 64 x 80 pixels of the sample volume as a multi-page TIFF."""
    image = nuclei_volume((8, 64, 80))[0][first : first + depth]
    # minisblack: tifffile would store a 3-page stack as one planar RGB image otherwise
    tifffile.imwrite(path, image, photometric="minisblack")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("source", "store"),
    [
        ("data/stack.tif", "data/stack.embeddings.zarr"),
        ("data/stack.ome.tiff", "data/stack.embeddings.zarr"),
        ("data/cells.ome.zarr", "data/cells.embeddings.zarr"),
        ("data/cells.ome.zarr/", "data/cells.embeddings.zarr"),
        ("data/raw.zarr", "data/raw.embeddings.zarr"),
        ("data/raw", "data/raw.embeddings.zarr"),
    ],
)
def test_the_default_store_lies_beside_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, store: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_store_path(source) == tmp_path / store


def test_a_missing_source_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["embed", str(tmp_path / "nope.tif"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-segany: error: no such file or directory")
    assert "nope.tif" in err
    assert "Traceback" not in err
    assert not (tmp_path / "nope.embeddings.zarr").exists()


def test_unknown_axes_are_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_stack(tmp_path / "stack.tif")
    assert main(["embed", str(source), "--axes", "ZQX", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-segany: error:")
    assert "'Q'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "stack.embeddings.zarr").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--model", "vit_x"], "'vit_x' is neither a known model"),
        (["--device", "tpu9"], "unknown device 'tpu9'"),
    ],
)
def test_a_bad_model_or_device_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    source = write_stack(tmp_path / "stack.tif")
    assert main(["embed", str(source), *option, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "stack.embeddings.zarr").exists()


def test_an_out_path_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_stack(tmp_path / "stack.tif")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert main(["embed", str(source), "--out", str(notes), "--no-progress"]) == 1
    assert "is a file, not an embedding store" in capsys.readouterr().err
    assert notes.read_text() == "keep me"


def test_a_read_only_folder_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_stack(tmp_path / "stack.tif")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user writes to read-only folders (root)")
        out = locked / "stack.embeddings.zarr"
        assert main(["embed", str(source), "--out", str(out), "--no-progress"]) == 1
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert "permission denied" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_embed_fills_a_store_beside_the_source_and_a_rerun_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_stack(tmp_path / "stack.tif")
    assert main(["embed", str(source), "--no-progress", "--device", "cpu"]) == 0

    out = capsys.readouterr().out
    path = tmp_path / "stack.embeddings.zarr"
    assert f"store   {path}" in out
    assert "3 computed, 0 already done, 3 of 3 in the store" in out
    assert "1 per slice (not tiled)" in out
    assert "slices/s" in out
    store = EmbeddingStore.open(path)
    assert store.done().all()
    assert store.signature["model"]["name"] == "mobile_sam"
    assert np.abs(store.get(2).features.numpy()).max() > 0

    assert main(["embed", str(source), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 slice(s) already embedded, 0 to go" in out
    assert "0 computed, 3 already done, 3 of 3 in the store" in out


@pytest.mark.slow
def test_a_slice_with_nan_pixels_is_one_line_and_the_slices_before_it_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = nuclei_volume((8, 64, 80))[0][:3].astype(np.float32)
    image[1, 5, 5] = np.nan
    source = tmp_path / "nan.tif"
    tifffile.imwrite(source, image, photometric="minisblack")
    code = main(["embed", str(source), "--no-progress", "--device", "cpu", "--batch-size", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "napari-segany: error: slice z=1 of" in err and "1 NaN or infinite value(s)" in err
    assert "1 of 3 slice(s) embedded are kept" in err
    assert EmbeddingStore.open(tmp_path / "nan.embeddings.zarr").done().tolist() == [
        True,
        False,
        False,
    ]


@pytest.mark.slow
def test_a_store_of_another_source_is_refused_untouched_until_recompute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write_stack(tmp_path / "first.tif", first=0)
    second = write_stack(tmp_path / "second.tif", first=3)
    store = tmp_path / "shared.embeddings.zarr"
    common = ["--out", str(store), "--no-progress", "--device", "cpu"]
    assert main(["embed", str(first), *common]) == 0
    before = snapshot(store)
    capsys.readouterr()

    assert main(["embed", str(second), *common]) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-segany: error: the embedding store")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "source fingerprint" in err
    assert "; use --recompute to replace its embeddings" in err
    assert "recompute=True" not in err
    assert snapshot(store) == before

    assert main(["embed", str(second), *common, "--recompute"]) == 0
    assert "3 computed, 0 already done" in capsys.readouterr().out
    reopened = EmbeddingStore.open(store)
    assert reopened.done().all()
    with open_volume(second) as volume:
        assert reopened.signature["source"]["fingerprint"] == volume.fingerprint()


@pytest.mark.slow
def test_tile_options_tile_large_slices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_stack(tmp_path / "image.tif", depth=1)  # a 2D image, 64 x 80
    args = ["embed", str(source), "--tile-size", "48", "--halo", "8"]
    assert main([*args, "--no-progress", "--device", "cpu"]) == 0
    assert "4 per slice" in capsys.readouterr().out
    store = EmbeddingStore.open(tmp_path / "image.embeddings.zarr")
    assert store.grid.windows == (
        (0, 0, 48, 48),
        (0, 32, 48, 80),
        (16, 0, 64, 48),
        (16, 32, 64, 80),
    )
    embedding, window = store.at_point(0, 60, 5)
    assert window == (16, 0, 64, 48)
    assert embedding.original_size == (48, 48)


@pytest.mark.slow
def test_ctrl_c_keeps_finished_slices_and_a_rerun_computes_only_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_stack(tmp_path / "stack.tif", depth=6)
    store = tmp_path / "stack.embeddings.zarr"
    command = [sys.executable, "-m", "napari_segany.cli", "embed", str(source)]
    child = subprocess.Popen(
        [*command, "--no-progress", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        # A done-flag chunk on disk: the first slice is finished, the second in flight.
        while not any((store / "done" / "c").glob("*")):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "no slice finished within 120 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert child.returncode == 130, err
    assert "stopping after the batch in flight" in err
    assert "rerun the same command to resume" in err
    assert "Traceback" not in err
    finished = int(EmbeddingStore.open(store).done().sum())
    assert 1 <= finished < 6

    assert main(["embed", str(source), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"{6 - finished} computed, {finished} already done, 6 of 6 in the store" in out
