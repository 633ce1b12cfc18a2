"""LabelsStore.from_array: whole arrays into labels, built aside, moved in only when complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr
from ome_zarr_models.v05 import ImageLabel

from napari_segany.labels.store import LabelsStore, StoreLockedError

from ..volume_files import ramp, write_ome_zarr

SHAPE = (3, 40, 50)
CHUNKS = (1, 16, 16)


def objects(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """A few rectangular objects with large ids on a background of zeros."""
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, np.int64)
    for label_id in (5, 70_000, 4_000_000_000):
        z = int(rng.integers(0, shape[0]))
        y, x = (int(rng.integers(0, n - 8)) for n in shape[1:])
        data[z, y : y + 8, x : x + 6] = label_id
    return data


def ome(path: Path) -> dict[str, Any]:
    return json.loads((path / "zarr.json").read_text())["attributes"]["ome"]


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


class RecordingArray:
    """An array-like that records the shape of every read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.reads = data, []
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, index: Any) -> np.ndarray:
        part = self.data[index]
        self.reads.append(part.shape)
        return part


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "cells.ome.zarr"
    write_ome_zarr(path, ramp(SHAPE), axes="zyx", levels=2)
    return path


def test_standalone_store_from_an_array(tmp_path: Path) -> None:
    data = objects()
    path = tmp_path / "seg.ome.zarr"
    with LabelsStore.from_array(
        path, data, chunks=CHUNKS, scale=(0.5, 0.25), translation=(1.0, 2.0)
    ) as store:
        np.testing.assert_array_equal(store.read(), data)
        assert store.read().dtype == np.uint32
        assert store.next_id() == 4_000_000_001  # the ids in the array count as used
        assert store.log() == [] and store.undo() is None
        new_id = store.commit(np.ones(SHAPE[1:], bool), z=0)  # fills background only
        assert new_id == 4_000_000_001
    (dataset,) = ome(path / "labels" / "segany")["multiscales"][0]["datasets"]
    assert dataset["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 0.5, 0.25]},
        {"type": "translation", "translation": [0.0, 1.0, 2.0]},
    ]
    ImageLabel.from_zarr(zarr.open_group(path / "labels" / "segany", mode="r"))
    assert siblings(path) == ["seg.ome.zarr"]


def test_read_a_band_of_chunks_at_a_time_and_background_not_written(tmp_path: Path) -> None:
    data = np.zeros((4, 64, 64), np.uint16)
    data[2, 40:50, 10:20] = 3
    source = RecordingArray(data)
    LabelsStore.from_array(tmp_path / "seg.zarr", source, chunks=(1, 16, 16)).close()
    assert set(source.reads) == {(1, 16, 64)}
    chunks = tmp_path / "seg.zarr" / "labels" / "segany" / "0" / "c"
    written = sorted(p.relative_to(chunks).as_posix() for p in chunks.rglob("*") if p.is_file())
    assert written == ["2/2/0", "2/2/1", "2/3/0", "2/3/1"]  # of 64 chunks


def test_into_an_image_with_its_pyramid(image: Path) -> None:
    LabelsStore.create(image, SHAPE, image=image, name="other").close()
    other = (image / "labels" / "other" / "zarr.json").read_text()
    data = da.from_array(objects(), chunks=(2, 9, 13))
    with LabelsStore.from_array(image, data, image=image, chunks=CHUNKS) as store:
        np.testing.assert_array_equal(store.read(), objects())
    level1 = zarr.open_array(image / "labels" / "segany" / "1", mode="r")[...]
    np.testing.assert_array_equal(level1, objects()[:, ::2, ::2])
    meta = ome(image / "labels" / "segany")
    assert meta["image-label"]["source"] == {"image": "../../"}
    assert ome(image / "labels")["labels"] == ["other", "segany"]
    assert (image / "labels" / "other" / "zarr.json").read_text() == other
    np.testing.assert_array_equal(zarr.open_array(image / "0", mode="r")[...], ramp(SHAPE))
    assert siblings(image) == ["cells.ome.zarr"]


def test_replacing_labels_in_an_image_follows_the_rules_of_create(image: Path) -> None:
    LabelsStore.from_array(image, objects(seed=1), image=image).close()
    with pytest.raises(FileExistsError, match="already exist"):
        LabelsStore.from_array(image, objects(seed=2), image=image)
    with LabelsStore.open(image), pytest.raises(StoreLockedError):
        LabelsStore.from_array(image, objects(seed=2), image=image, overwrite=True)
    LabelsStore.from_array(image, objects(seed=2), image=image, overwrite=True).close()
    with LabelsStore.open(image, read_only=True) as store:
        np.testing.assert_array_equal(store.read(), objects(seed=2))
    with pytest.raises(ValueError, match="does not match the image"):
        LabelsStore.from_array(image, np.zeros((3, 40, 51), np.uint8), image=image, overwrite=True)
    assert siblings(image) == ["cells.ome.zarr"]


def test_a_store_of_its_own_names_its_image(image: Path, tmp_path: Path) -> None:
    path = tmp_path / "seg.ome.zarr"
    LabelsStore.from_array(path, objects(), image=image).close()
    meta = ome(path / "labels" / "segany")
    assert (path / "labels" / "segany" / meta["image-label"]["source"]["image"]).resolve() == (
        image.resolve()
    )
    with pytest.raises(ValueError, match="come from the image"):
        LabelsStore.from_array(tmp_path / "b.zarr", objects(), image=image, scale=(1, 1))


def test_bad_values_leave_what_was_there(tmp_path: Path) -> None:
    path = tmp_path / "seg.zarr"
    LabelsStore.from_array(path, objects(seed=1)).close()
    bad = objects(seed=2)
    bad[-1, -1, -1] = -3  # found in the last band, after everything else was written aside
    with pytest.raises(ValueError, match=r"must not be negative: found -3 \(in z 2\.\.2"):
        LabelsStore.from_array(path, bad, overwrite=True)
    too_large = objects(seed=2)
    too_large[0, 0, 0] = 2**32
    with pytest.raises(ValueError, match="at most 4294967295"):
        LabelsStore.from_array(path, too_large, overwrite=True)
    with pytest.raises(TypeError, match="must be integers"):
        LabelsStore.from_array(path, objects().astype(float), overwrite=True)
    with pytest.raises(FileExistsError, match="already exists"):
        LabelsStore.from_array(path, objects(seed=2))
    with LabelsStore.open(path, read_only=True) as store:
        np.testing.assert_array_equal(store.read(), objects(seed=1))
    assert siblings(path) == ["seg.zarr"]
    with pytest.raises(ValueError, match="scale must be"):
        LabelsStore.from_array(tmp_path / "c.zarr", objects(), scale=(1.0, 0.0, 1.0))
    assert siblings(path) == ["seg.zarr"]


def test_a_killed_writers_staging_folder_is_removed_by_the_next_write(tmp_path) -> None:
    import subprocess
    import sys

    from napari_segany.staging import _writer

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(done.stdout)
    host = _writer().split("-")[0]
    dead = tmp_path / f".seg.zarr.{host}-{dead_pid}-0123456789ab.partial"
    live = tmp_path / f".seg.zarr.{_writer()}-ba9876543210.partial"  # this process: running
    other = tmp_path / ".seg.zarr.ffffffff-1-0123456789ab.partial"  # another host's
    for folder in (dead, live, other):
        (folder / "labels").mkdir(parents=True)
    LabelsStore.from_array(tmp_path / "seg.zarr", np.ones((2, 8, 8), dtype=np.uint8)).close()
    assert not dead.exists()
    assert live.exists() and other.exists()
    assert LabelsStore.open(tmp_path / "seg.zarr").read().all()
