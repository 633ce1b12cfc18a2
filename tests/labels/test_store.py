"""LabelsStore: OME-Zarr labels committed object by object, undo/redo, the log, crash safety.

Every store is real: written in ``tmp_path`` (beside OME-Zarr images written by
:mod:`tests.volume_files`), read back with ome-zarr-py's reader and validated with
ome-zarr-models, the way napari-ome-zarr and other tools will see it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr_models.v05 import Image, ImageLabel, Labels

from napari_segany.labels import layout as labels_layout
from napari_segany.labels.files import SIDECAR
from napari_segany.labels.store import LabelsStore, StoreLockedError

from ..volume_files import ramp, write_ome_zarr

SHAPE = (3, 40, 50)
CHUNKS = (1, 16, 16)


def disk(shape: tuple[int, int], center: tuple[int, int], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def ball(shape: tuple[int, int, int], center: tuple[int, int, int], radius: float) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = center
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius**2


def paint(
    expected: np.ndarray,
    mask: np.ndarray,
    label_id: int,
    overlap: str = "keep",
    z: int | None = None,
) -> None:
    """What a commit must do, in plain NumPy."""
    target = expected if z is None else expected[z]
    where = mask if overlap == "overwrite" else mask & (target == 0)
    target[where] = label_id


def label_dir(store: LabelsStore) -> Path:
    return store.path / "labels" / store.name


def snapshot(store: LabelsStore) -> tuple[np.ndarray, bytes, list[str], str]:
    """Everything a failed call must leave as it was: voxels, journal, saved regions, metadata."""
    sidecar = label_dir(store) / SIDECAR
    return (
        store.read(),
        (sidecar / "journal.jsonl").read_bytes(),
        sorted(p.name for p in (sidecar / "undo").iterdir()),
        (label_dir(store) / "zarr.json").read_text(),
    )


def chunk_files(array_dir: Path) -> dict[str, tuple[int, int]]:
    """Chunk key (``z/y/x``) -> (inode, mtime): a rewrite (temp file + rename) changes both."""
    files = {}
    for path in (array_dir / "c").rglob("*"):
        if path.is_file():
            st = path.stat()
            files[path.relative_to(array_dir / "c").as_posix()] = (st.st_ino, st.st_mtime_ns)
    return files


def ome_attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["ome"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LabelsStore]:
    labels = LabelsStore.create(tmp_path / "labels.ome.zarr", SHAPE, chunks=CHUNKS)
    yield labels
    labels.close()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "cells.ome.zarr"
    write_ome_zarr(path, ramp(SHAPE), axes="zyx", levels=2)
    return path


# -- layout and metadata, read back by other tools ---------------------------------------


def test_standalone_store_is_ngff_05_labels(store: LabelsStore) -> None:
    first = store.commit(disk(SHAPE[1:], (12, 12), 6), z=1)
    second = store.commit(ball(SHAPE, (1, 25, 35), 5))
    root = store.path
    assert (root / "zarr.json").is_file() and ome_attrs(root) == {"version": "0.5"}
    assert ome_attrs(root / "labels") == {"version": "0.5", "labels": ["segany"]}
    meta = ome_attrs(root / "labels" / "segany")
    assert meta["version"] == "0.5"
    (multiscale,) = meta["multiscales"]
    assert [(a["name"], a["type"]) for a in multiscale["axes"]] == [
        ("z", "space"),
        ("y", "space"),
        ("x", "space"),
    ]
    (dataset,) = multiscale["datasets"]
    assert dataset["path"] == "0"
    assert dataset["coordinateTransformations"] == [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]
    assert meta["image-label"]["version"] == "0.5"
    assert "source" not in meta["image-label"]
    colors = meta["image-label"]["colors"]
    assert [c["label-value"] for c in colors] == [first, second]
    assert all(len(c["rgba"]) == 4 and all(0 <= v <= 255 for v in c["rgba"]) for c in colors)
    array = zarr.open_array(root / "labels" / "segany" / "0", mode="r")
    assert array.dtype == np.uint32 and array.shape == SHAPE and array.chunks == CHUNKS
    assert array.metadata.zarr_format == 3 and array.metadata.dimension_names == ("z", "y", "x")

    ImageLabel.from_zarr(zarr.open_group(root / "labels" / "segany", mode="r"))
    assert Labels.from_zarr(zarr.open_group(root / "labels", mode="r")).label_paths == ["segany"]

    nodes = list(Reader(parse_url(str(root / "labels")))())
    (label,) = [n for n in nodes if n.load(Label) is not None]
    np.testing.assert_array_equal(np.asarray(label.data[0]), store.read())
    assert set(label.metadata["color"]) == {first, second}


def test_labels_beside_an_image_are_a_label_node_of_it(image: Path) -> None:
    store = LabelsStore.create(image, SHAPE, image=image, chunks=CHUNKS)
    store.commit(ball(SHAPE, (1, 20, 20), 9))
    store.commit(disk(SHAPE[1:], (30, 40), 7), z=2)
    assert store.path == image

    # The whole image validates, labels included: NGFF wants as many label levels as image
    # levels, so the labels follow the image's pyramid.
    model = Image.from_zarr(zarr.open_group(image, mode="r"))
    assert model.labels is not None and model.labels.label_paths == ["segany"]
    meta = ome_attrs(image / "labels" / "segany")
    assert meta["image-label"]["source"] == {"image": "../../"}
    scales = [
        d["coordinateTransformations"][0]["scale"] for d in meta["multiscales"][0]["datasets"]
    ]
    assert scales == [[1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]  # the image's, as written
    assert [a.get("unit") for a in meta["multiscales"][0]["axes"]] == ["micrometer"] * 3

    nodes = list(Reader(parse_url(str(image)))())
    assert nodes[0].load(Multiscales) is not None  # the image itself comes first
    (label,) = [n for n in nodes if n.load(Label) is not None]
    np.testing.assert_array_equal(np.asarray(label.data[0]), store.read())
    # Level 1 samples level 0 like the image's own pyramid (every other row and column).
    np.testing.assert_array_equal(np.asarray(label.data[1]), store.read()[:, ::2, ::2])
    store.close()


def test_labels_in_their_own_store_point_at_their_image(tmp_path: Path, image: Path) -> None:
    store = LabelsStore.create(tmp_path / "out" / "seg.ome.zarr", SHAPE, image=image)
    store.commit(disk(SHAPE[1:], (10, 10), 5), z=0)
    group = tmp_path / "out" / "seg.ome.zarr" / "labels" / "segany"
    source = ome_attrs(group)["image-label"]["source"]["image"]
    assert (group / source).resolve() == image.resolve()
    nodes = list(Reader(parse_url(str(group)))())
    images = [n for n in nodes if n.load(Multiscales) is not None and n.zarr.basename() != "segany"]
    assert images and images[0].data[0].shape == SHAPE  # the reader found the image
    store.close()


def test_2d_image_is_one_slice(tmp_path: Path) -> None:
    store = LabelsStore.create(tmp_path / "flat.ome.zarr", (30, 40))
    assert store.shape == (1, 30, 40) and store.chunks == (1, 30, 40)
    label_id = store.commit(disk((30, 40), (15, 20), 6))  # z may be omitted
    assert store.read(0)[15, 20] == label_id and store.read().shape == (1, 30, 40)
    store.close()


def test_open_finds_labels_by_store_or_group(store: LabelsStore, image: Path) -> None:
    label_id = store.commit(disk(SHAPE[1:], (20, 20), 5), z=0)
    store.close()
    for where in (store.path, store.path / "labels" / "segany"):
        with LabelsStore.open(where, read_only=True) as again:
            assert again.name == "segany" and again.path == store.path
            assert again.read(0)[20, 20] == label_id
    with pytest.raises(FileNotFoundError, match=r"no labels 'nuclei' .*label images there: segany"):
        LabelsStore.open(store.path, name="nuclei")
    with pytest.raises(FileNotFoundError, match="holds no labels"):
        LabelsStore.open(image)


# -- creating without destroying -----------------------------------------------------------


def test_existing_data_is_replaced_only_when_asked(tmp_path: Path, image: Path) -> None:
    path = tmp_path / "labels.ome.zarr"
    first = LabelsStore.create(path, SHAPE)
    first.commit(disk(SHAPE[1:], (10, 10), 4), z=0)
    with pytest.raises(StoreLockedError):  # still open for writing by `first`
        LabelsStore.create(path, SHAPE, overwrite=True)
    first.close()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        LabelsStore.create(path, SHAPE)
    assert LabelsStore.open(path, read_only=True).read().any()
    with LabelsStore.create(path, (2, 8, 8), overwrite=True) as fresh:
        assert fresh.shape == (2, 8, 8) and not fresh.read().any() and fresh.log() == []

    beside = LabelsStore.create(image, SHAPE, image=image)
    beside.commit(disk(SHAPE[1:], (5, 5), 3), z=0)
    beside.close()
    other = LabelsStore.create(image, SHAPE, image=image, name="nuclei")
    other.close()
    with pytest.raises(FileExistsError, match="labels 'segany'"):
        LabelsStore.create(image, SHAPE, image=image)
    with LabelsStore.create(image, SHAPE, image=image, overwrite=True) as replaced:
        assert not replaced.read().any()
    assert ome_attrs(image / "labels")["labels"] == ["nuclei", "segany"]
    with pytest.raises(FileExistsError, match="is an OME-Zarr image: pass image="):
        LabelsStore.create(image, SHAPE, overwrite=True)  # would delete the image
    assert zarr.open_array(image / "0", mode="r").shape == SHAPE

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a zarr store"):
        LabelsStore.create(notes, SHAPE, overwrite=True)
    assert (notes / "keep.txt").read_text() == "mine"

    # other zarr data is not a labels store either: an array, or a group of someone's arrays
    raw = tmp_path / "raw.zarr"
    zarr.open_array(raw, mode="w", shape=(4, 4), dtype="u1", zarr_format=3)[:] = 7
    mine = tmp_path / "mine.zarr"
    zarr.open_group(mine, mode="w", zarr_format=3).create_array("volume", shape=(2, 2), dtype="u2")
    for path in (raw, mine):
        with pytest.raises(FileExistsError, match="not a labels store"):
            LabelsStore.create(path, SHAPE, overwrite=True)
    assert (zarr.open_array(raw, mode="r")[:] == 7).all()
    assert zarr.open_group(mine, mode="r")["volume"].shape == (2, 2)


def test_create_checks_its_arguments(tmp_path: Path, image: Path) -> None:
    with pytest.raises(ValueError, match=r"does not match the image's \(z, y, x\) size"):
        LabelsStore.create(image, (3, 40, 51), image=image)
    with pytest.raises(ValueError, match="shape must be"):
        LabelsStore.create(tmp_path / "a.zarr", (3, 0, 5))
    with pytest.raises(ValueError, match="chunks must be"):
        LabelsStore.create(tmp_path / "b.zarr", SHAPE, chunks=(1, 16))
    with pytest.raises(ValueError, match="name must be"):
        LabelsStore.create(tmp_path / "c.zarr", SHAPE, name="a/b")
    with pytest.raises(FileNotFoundError, match="no such OME-Zarr"):
        LabelsStore.create(tmp_path / "d.zarr", SHAPE, image=tmp_path / "missing.ome.zarr")
    v04 = tmp_path / "old.ome.zarr"
    write_ome_zarr(v04, ramp(SHAPE), axes="zyx", version="0.4")
    with pytest.raises(ValueError, match=r"0\.4 \(zarr v2\)"):
        LabelsStore.create(v04, SHAPE, image=v04)
    assert not (v04 / "labels").exists()


# -- commits ------------------------------------------------------------------------------


def test_commit_writes_only_the_chunks_the_object_touches(tmp_path: Path) -> None:
    store = LabelsStore.create(tmp_path / "l.ome.zarr", (2, 64, 64), chunks=(1, 16, 16))
    array_dir = label_dir(store) / "0"
    # An L: its bounding box covers chunks (0,0), (0,1), (1,0), (1,1) of slice 1, but the
    # object lies in three of them; the fourth stays unwritten.
    mask = np.zeros((64, 64), bool)
    mask[2:30, 2:6] = True
    mask[26:30, 2:30] = True
    store.commit(mask, z=1)
    assert sorted(chunk_files(array_dir)) == ["1/0/0", "1/1/0", "1/1/1"]
    before = chunk_files(array_dir)
    time.sleep(0.01)  # so that a rewrite would show in the mtime too
    store.commit(ball((2, 64, 64), (0, 56, 56), 4))  # corner chunks (0,3,3) and (1,3,3)
    after = chunk_files(array_dir)
    assert sorted(set(after) - set(before)) == ["0/3/3", "1/3/3"]
    assert {k: after[k] for k in before} == before  # nothing else rewritten
    store.close()


def test_overlap_keep_fills_background_and_overwrite_wins(store: LabelsStore) -> None:
    expected = np.zeros(SHAPE, np.uint32)
    a, b, c = (disk(SHAPE[1:], center, 8) for center in ((15, 15), (15, 25), (25, 20)))
    for mask, overlap in ((a, "keep"), (b, "keep"), (c, "overwrite")):
        label_id = store.commit(mask, z=1, overlap=overlap)
        paint(expected, mask, label_id, overlap, z=1)
    np.testing.assert_array_equal(store.read(), expected)
    assert (store.read(1)[a & b & ~c] == 1).all()  # keep: the first object kept the overlap
    assert (store.read(1)[c] == 3).all()  # overwrite: the last one took it all
    assert [e["voxels"] for e in store.log()] == [a.sum(), (b & ~a).sum(), c.sum()]


def test_ids_are_never_reused(store: LabelsStore) -> None:
    masks = [disk(SHAPE[1:], (8 + 6 * k, 10), 3) for k in range(5)]
    assert store.next_id() == 1
    assert [store.commit(masks[k], z=0) for k in range(2)] == [1, 2]
    assert store.undo() == 2
    assert store.next_id() == 3  # 2 was handed out once: never again
    assert store.commit(masks[2], z=0) == 3
    assert store.commit(masks[3], z=0, label_id=10) == 10
    assert store.next_id() == 11
    store.close()
    with LabelsStore.open(store.path) as again:  # the journal remembers across sessions
        assert again.next_id() == 11
        assert again.commit(masks[4], z=0, label_id=2) == 2  # explicit: 2 is free again
        assert again.next_id() == 11


def test_an_id_in_use_is_refused(store: LabelsStore) -> None:
    store.commit(disk(SHAPE[1:], (10, 10), 4), z=0, label_id=5)
    state = snapshot(store)
    with pytest.raises(ValueError, match=r"label id 5 is already in use.*separate operation"):
        store.commit(disk(SHAPE[1:], (30, 30), 4), z=2, label_id=5)
    for was, now in zip(state, snapshot(store), strict=True):
        np.testing.assert_array_equal(was, now)


# -- undo and redo ------------------------------------------------------------------------


def test_undo_redo_restore_exact_voxels(store: LabelsStore) -> None:
    states = [store.read()]
    a = ball(SHAPE, (1, 15, 15), 9)
    b = ball(SHAPE, (1, 20, 25), 9)
    c = disk(SHAPE[1:], (20, 20), 10)
    store.commit(a)
    states.append(store.read())
    store.commit(b, overlap="keep")
    states.append(store.read())
    store.commit(c, z=1, overlap="overwrite")  # takes voxels of both a and b
    states.append(store.read())

    assert store.undo() == 3
    np.testing.assert_array_equal(store.read(), states[2])  # a's and b's voxels are back
    assert store.undo() == 2
    np.testing.assert_array_equal(store.read(), states[1])
    assert store.redo() == 2
    np.testing.assert_array_equal(store.read(), states[2])
    assert store.redo() == 3
    np.testing.assert_array_equal(store.read(), states[3])
    assert store.redo() is None
    assert [store.undo() for _ in range(4)] == [3, 2, 1, None]
    np.testing.assert_array_equal(store.read(), states[0])
    assert [store.redo() for _ in range(2)] == [1, 2]
    np.testing.assert_array_equal(store.read(), states[2])

    assert store.commit(disk(SHAPE[1:], (5, 45), 3), z=0) == 4  # clears redo of 3
    assert store.redo() is None
    assert [e["id"] for e in store.log()] == [1, 2, 4]
    meta = ome_attrs(label_dir(store))
    assert [c["label-value"] for c in meta["image-label"]["colors"]] == [1, 2, 4]


def test_undo_and_redo_follow_the_pyramid(image: Path) -> None:
    store = LabelsStore.create(image, SHAPE, image=image, chunks=CHUNKS)
    level1 = zarr.open_array(image / "labels" / "segany" / "1", mode="r")
    store.commit(ball(SHAPE, (1, 20, 20), 12))
    store.commit(ball(SHAPE, (1, 25, 30), 12), overlap="overwrite")
    for step in (store.undo, store.undo, store.redo):
        step()
        np.testing.assert_array_equal(level1[...], store.read()[:, ::2, ::2])
    store.close()


def test_undo_history_is_bounded(tmp_path: Path) -> None:
    store = LabelsStore.create(tmp_path / "l.ome.zarr", SHAPE, history=2)
    for k in range(4):
        store.commit(disk(SHAPE[1:], (5 + 8 * k, 10), 3), z=0)
    assert len(list((label_dir(store) / SIDECAR / "undo").iterdir())) == 2
    assert [store.undo() for _ in range(3)] == [4, 3, None]
    assert [e["id"] for e in store.log()] == [1, 2]  # older commits stay, permanently
    store.close()


def test_undo_refuses_when_the_region_changed_outside_the_store(store: LabelsStore) -> None:
    store.commit(disk(SHAPE[1:], (10, 10), 5), z=0)
    array = zarr.open_array(label_dir(store) / "0", mode="r+")
    array[0, 10, 10] = 99  # someone else wrote here
    with pytest.raises(RuntimeError, match="changed since it was committed"):
        store.undo()
    assert array[0, 10, 10] == 99


# -- the annotation log -------------------------------------------------------------------


def test_log_keeps_records_of_live_objects(store: LabelsStore) -> None:
    record = {
        "prompts": {"points": np.array([[12, 14]]), "labels": [1]},
        "model": {"name": "mobile_sam", "sha256": "6dbb90523a35330fedd7f1d3dfc66f995213d81b"},
        "score": np.float32(0.75),
    }
    store.commit(disk(SHAPE[1:], (12, 14), 5), z=1, record=record)
    store.commit(ball(SHAPE, (1, 30, 35), 6), overlap="overwrite", record={"step": 2})
    store.commit(disk(SHAPE[1:], (30, 10), 3), z=2)
    store.undo()
    first, second = store.log()
    assert first["record"] == {
        "prompts": {"points": [[12, 14]], "labels": [1]},
        "model": record["model"],
        "score": 0.75,
    }
    assert first["id"] == 1 and first["z"] == [1, 2] and first["overlap"] == "keep"
    assert first["bbox"] == [[1, 2], [7, 18], [9, 20]]
    assert first["voxels"] == int(disk(SHAPE[1:], (12, 14), 5).sum())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert second["z"] == [0, 3] and second["overlap"] == "overwrite"
    assert second["record"] == {"step": 2}
    first["record"]["score"] = 0  # a copy: the store's log is not changed through it
    assert store.log()[0]["record"]["score"] == 0.75
    store.close()
    assert LabelsStore.open(store.path, read_only=True).log() == store.log()


# -- TIFF export --------------------------------------------------------------------------


def test_tiff_export_round_trips(store: LabelsStore, tmp_path: Path) -> None:
    store.commit(ball(SHAPE, (1, 20, 20), 8))
    store.commit(disk(SHAPE[1:], (30, 40), 6), z=2, label_id=70000)
    out = store.to_tiff(tmp_path / "labels.tif")
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "ZYX"
        data = tif.asarray()
    assert data.dtype == np.uint32
    np.testing.assert_array_equal(data, store.read())
    with pytest.raises(ValueError, match="ImageJ TIFF"):
        store.to_tiff(tmp_path / "imagej.tif", imagej=True)
    store.undo()
    out = store.to_tiff(tmp_path / "imagej.tif", imagej=True)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and tif.series[0].axes == "ZYX"
        np.testing.assert_array_equal(tif.asarray(), store.read())


# -- bad input ----------------------------------------------------------------------------

SLICE = disk(SHAPE[1:], (20, 20), 5)
BAD_COMMITS: dict[str, tuple[Callable[[], dict], type[Exception], str]] = {
    "slice shape": (
        lambda: {"mask": SLICE[:, :-1], "z": 0},
        ValueError,
        "does not match the slice",
    ),
    "volume shape": (lambda: {"mask": np.ones((2, 40, 50), bool)}, ValueError, "volume shape"),
    "4 dimensions": (lambda: {"mask": np.ones((1, *SHAPE), bool)}, ValueError, "dimensions"),
    "empty": (lambda: {"mask": np.zeros(SHAPE[1:], bool), "z": 0}, ValueError, "empty"),
    "values": (lambda: {"mask": SLICE * 2, "z": 0}, ValueError, "only 0 and 1"),
    "nan": (lambda: {"mask": np.where(SLICE, np.nan, 0.0), "z": 0}, ValueError, "only 0 and 1"),
    "strings": (lambda: {"mask": SLICE.astype(str), "z": 0}, TypeError, "boolean"),
    "z too big": (lambda: {"mask": SLICE, "z": 3}, ValueError, "out of range"),
    "z negative": (lambda: {"mask": SLICE, "z": -1}, ValueError, "out of range"),
    "z float": (lambda: {"mask": SLICE, "z": 1.0}, TypeError, "integer"),
    "no z": (lambda: {"mask": SLICE}, ValueError, "needs z="),
    "z with 3D": (lambda: {"mask": np.ones(SHAPE, bool), "z": 0}, ValueError, "z= goes with"),
    "overlap": (lambda: {"mask": SLICE, "z": 0, "overlap": "merge"}, ValueError, "overlap"),
    "id 0": (lambda: {"mask": SLICE, "z": 0, "label_id": 0}, ValueError, "background"),
    "id too big": (lambda: {"mask": SLICE, "z": 0, "label_id": 2**32}, ValueError, "1.."),
    "id bool": (lambda: {"mask": SLICE, "z": 0, "label_id": True}, TypeError, "integer"),
    "record": (lambda: {"mask": SLICE, "z": 0, "record": {"f": print}}, TypeError, "JSON"),
    "record nan": (
        lambda: {"mask": SLICE, "z": 0, "record": {"s": float("nan")}},
        ValueError,
        "JSON",
    ),
    "record list": (lambda: {"mask": SLICE, "z": 0, "record": [1]}, TypeError, "dict"),
    "under labels": (lambda: {"mask": SLICE, "z": 1}, ValueError, "wholly under existing"),
}


@pytest.mark.parametrize("case", BAD_COMMITS)
def test_bad_commit_is_refused_and_writes_nothing(store: LabelsStore, case: str) -> None:
    store.commit(np.ones(SHAPE[1:], bool), z=1)
    arguments, error, message = BAD_COMMITS[case]
    state = snapshot(store)
    with pytest.raises(error, match=message):
        store.commit(**arguments())
    for was, now in zip(state, snapshot(store), strict=True):
        np.testing.assert_array_equal(was, now)
    assert store.next_id() == 2


def test_error_mid_write_is_rolled_back_at_once(
    store: LabelsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.commit(disk(SHAPE[1:], (10, 10), 4), z=0)
    before = store.read()
    writes = []

    def fail_on_second_chunk() -> None:
        writes.append(1)
        if len(writes) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(labels_layout, "_after_chunk_write", fail_on_second_chunk)
    with pytest.raises(OSError, match="disk full"):
        store.commit(ball(SHAPE, (1, 25, 30), 10))
    monkeypatch.setattr(labels_layout, "_after_chunk_write", None)
    np.testing.assert_array_equal(store.read(), before)
    assert [e["id"] for e in store.log()] == [1]
    assert store.commit(disk(SHAPE[1:], (30, 30), 4), z=2) == 3  # 2 went to the failed one


def test_torn_last_journal_line_is_ignored_and_cut(store: LabelsStore) -> None:
    store.commit(disk(SHAPE[1:], (10, 10), 4), z=0)
    store.close()
    journal = label_dir(store) / SIDECAR / "journal.jsonl"
    intact = journal.read_bytes()
    with open(journal, "ab") as f:
        f.write(b'{"op":"begin","seq":2,"act')  # a crash mid-append
    with LabelsStore.open(store.path) as again:
        assert [e["id"] for e in again.log()] == [1]
        assert journal.read_bytes() == intact
        again.commit(disk(SHAPE[1:], (30, 30), 4), z=0)
        assert len(again.log()) == 2


def test_labels_written_by_another_tool(tmp_path: Path) -> None:
    store = LabelsStore.create(tmp_path / "other.ome.zarr", SHAPE)
    store.close()
    group = label_dir(store)
    # Replace what we made with what another tool would leave: data, colours, no journal.
    shutil.rmtree(group / SIDECAR)
    theirs = np.zeros(SHAPE, np.uint32)
    theirs[0, :10, :10], theirs[1, 20:30, 20:30] = 4, 9
    zarr.open_array(group / "0", mode="r+")[...] = theirs
    attrs = zarr.open_group(group, mode="r+").attrs
    ome = attrs["ome"]
    ome["image-label"]["colors"] = [{"label-value": 4, "rgba": [1, 2, 3, 255]}]
    attrs["ome"] = ome

    with LabelsStore.open(store.path, read_only=True) as reader:
        assert reader.next_id() == 10 and reader.log() == []
    with LabelsStore.open(store.path) as writer:
        assert writer.next_id() == 10
        with pytest.raises(ValueError, match="label id 9 is already in use"):
            writer.commit(disk(SHAPE[1:], (35, 40), 3), z=2, label_id=9)
        assert writer.commit(disk(SHAPE[1:], (35, 40), 3), z=2) == 10
        colors = ome_attrs(group)["image-label"]["colors"]
        assert colors[0] == {"label-value": 4, "rgba": [1, 2, 3, 255]}  # theirs, kept
        assert [c["label-value"] for c in colors] == [4, 10]


# -- one writer at a time -----------------------------------------------------------------


def test_read_only_store_refuses_changes(store: LabelsStore) -> None:
    store.commit(disk(SHAPE[1:], (10, 10), 4), z=0)
    reader = LabelsStore.open(store.path, read_only=True)  # readers need no lock
    assert reader.read_only and reader.read(0)[10, 10] == 1
    state = snapshot(store)
    for change in (
        lambda: reader.commit(disk(SHAPE[1:], (30, 30), 4), z=0),
        reader.undo,
        reader.redo,
    ):
        with pytest.raises(PermissionError, match="read-only"):
            change()
    for was, now in zip(state, snapshot(store), strict=True):
        np.testing.assert_array_equal(was, now)
    store.commit(disk(SHAPE[1:], (30, 30), 4), z=2)  # the reader follows the writer
    assert [e["id"] for e in reader.log()] == [1, 2] and reader.read(2)[30, 30] == 2
    assert reader.next_id() == 3
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.commit(disk(SHAPE[1:], (30, 30), 4), z=0)


def test_second_writer_in_this_process_is_refused(store: LabelsStore) -> None:
    with pytest.raises(StoreLockedError, match="this process"):
        LabelsStore.open(store.path)
    store.close()
    LabelsStore.open(store.path).close()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from napari_segany.labels.store import LabelsStore
    store = LabelsStore.open(sys.argv[1])
    print("ready", flush=True)
    time.sleep(120)
    """
)


def test_lock_of_a_live_process_refuses_and_a_dead_ones_is_taken_over(
    store: LabelsStore,
) -> None:
    store.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match=f"process {holder.pid} on"):
            LabelsStore.open(store.path)
        LabelsStore.open(store.path, read_only=True).close()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()  # type: ignore[union-attr]
    lock = label_dir(store) / SIDECAR / "lock"
    assert json.loads(lock.read_text())["pid"] == holder.pid  # left behind by the kill
    with LabelsStore.open(store.path) as again:  # stale: the process is gone
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        again.commit(disk(SHAPE[1:], (10, 10), 4), z=0)
    assert not lock.exists()


# -- killed mid-commit --------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from napari_segany.labels import layout as labels_layout
    from napari_segany.labels.store import LabelsStore

    path, mode, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    block_in, block_at = int(sys.argv[4]), int(sys.argv[5])
    objects = np.load(sys.argv[6])
    writes, armed = 0, mode != "commit"

    def after_chunk_write():
        global writes
        writes += 1
        if armed and writes == block_at:
            print("blocked", flush=True)
            time.sleep(120)  # killed here, between two chunk writes

    labels_layout._after_chunk_write = after_chunk_write
    store = LabelsStore.open(path)  # "open" mode blocks here, rolling back
    if mode == "undo":
        store.undo()
    for k in range(start, len(objects)) if mode == "commit" else ():
        writes, armed = 0, k == block_in
        label_id = store.next_id()
        print("committing", k, label_id, flush=True)
        store.commit(objects[k], overlap="overwrite" if k % 2 else "keep")
        print("committed", k, label_id, flush=True)
    print("finished", flush=True)
    """
)

KILL_SHAPE = (4, 48, 48)
Done = list[tuple[int, int]]  # (object index, id) of the commits that finished


def kill_objects(count: int, seed: int) -> np.ndarray:
    """Overlapping balls, each through several slices and chunks."""
    rng = np.random.default_rng(seed)
    centers = [(int(rng.integers(1, 3)), *map(int, rng.integers(12, 36, 2))) for _ in range(count)]
    return np.stack([ball(KILL_SHAPE, c, 10.0) for c in centers])


def expected_labels(objects: np.ndarray, done: Done) -> np.ndarray:
    expected = np.zeros(KILL_SHAPE, np.uint32)
    for k, label_id in done:
        paint(expected, objects[k], label_id, "overwrite" if k % 2 else "keep")
    return expected


def start_child(path: Path, mode: str, start: int = 0, block: tuple[int, int] = (-1, 1)):
    objects = path.parent / "objects.npy"
    arguments = [str(path), mode, str(start), str(block[0]), str(block[1]), str(objects)]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *arguments], stdout=subprocess.PIPE, text=True
    )


def kill_child(child: subprocess.Popen, when: Callable[[str], bool]) -> tuple[Done, Done]:
    """SIGKILL the child once it prints a line ``when`` accepts; what it finished and began."""
    assert child.stdout is not None
    lines = []
    for line in child.stdout:
        lines.append(line)
        if when(line):
            break
    child.send_signal(signal.SIGKILL)  # no clean-up of any kind
    child.wait(timeout=60)
    lines += child.stdout.readlines()  # what it printed before it died
    child.stdout.close()
    runs = {"committing": [], "committed": []}
    for line in lines:
        word, *rest = line.split()
        if word in runs:
            runs[word].append((int(rest[0]), int(rest[1])))
    return runs["committed"], runs["committing"]


def check_store(path: Path, expected: np.ndarray, ids: list[int]) -> None:
    """Open as a writer (which rolls back what a kill interrupted) and compare everything."""
    with LabelsStore.open(path) as store:
        np.testing.assert_array_equal(store.read(), expected)
        level1 = zarr.open_array(path / "labels" / "segany" / "1", mode="r")
        np.testing.assert_array_equal(level1[...], expected[:, ::2, ::2])
        assert [e["id"] for e in store.log()] == ids
        colors = ome_attrs(path / "labels" / "segany")["image-label"]["colors"]
        assert [c["label-value"] for c in colors] == sorted(ids)
    assert list((path / "labels" / "segany").rglob("*.partial")) == []


@pytest.fixture
def killable(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Labels beside a two-level image (so kills hit the pyramid too) and the objects."""
    path = tmp_path / "cells.ome.zarr"
    write_ome_zarr(path, ramp(KILL_SHAPE), axes="zyx", levels=2)
    LabelsStore.create(path, KILL_SHAPE, image=path, chunks=(1, 16, 16)).close()
    objects = kill_objects(12, seed=1)
    np.save(tmp_path / "objects.npy", objects)
    return path, objects


def blocked(line: str) -> bool:
    return line.startswith("blocked")


def test_kill_mid_change_loses_only_the_change_in_flight(
    killable: tuple[Path, np.ndarray],
) -> None:
    path, objects = killable
    # Killed in the third commit, after two of its chunk writes.
    done, begun = kill_child(start_child(path, "commit", 0, block=(2, 2)), blocked)
    assert done == [(0, 1), (1, 2)] and begun[-1] == (2, 3)
    # Killed again while the next writer rolls that commit back: rolling back is redone.
    kill_child(start_child(path, "open", block=(-1, 1)), blocked)
    check_store(path, expected_labels(objects, done), [1, 2])

    more, _ = kill_child(start_child(path, "commit", 2, block=(4, 3)), blocked)
    assert more == [(2, 4), (3, 5)]  # id 3 went to the commit that was rolled back
    done += more
    check_store(path, expected_labels(objects, done), [1, 2, 4, 5])

    # Killed mid-undo: the undo is rolled back, the object stays.
    kill_child(start_child(path, "undo", block=(-1, 1)), blocked)
    check_store(path, expected_labels(objects, done), [1, 2, 4, 5])
    with LabelsStore.open(path) as store:
        assert store.undo() == 5
        np.testing.assert_array_equal(store.read(), expected_labels(objects, done[:-1]))
        assert store.redo() == 5
        np.testing.assert_array_equal(store.read(), expected_labels(objects, done))


@pytest.mark.slow
def test_kill_at_random_moments(killable: tuple[Path, np.ndarray]) -> None:
    path, objects = killable
    rng = random.Random(7)
    done: Done = []
    while len(done) < len(objects) - 1:
        target = rng.randrange(len(done), len(objects))
        pause = rng.uniform(0.0, 0.04)

        def now(line: str, target: int = target, pause: float = pause) -> bool:
            if line.startswith(f"committing {target} "):
                time.sleep(pause)  # anywhere in the commit: region save, journal, chunks
                return True
            return False

        finished, begun = kill_child(start_child(path, "commit", len(done)), now)
        done += finished
        in_flight = [b for b in begun if b not in finished]
        with LabelsStore.open(path, read_only=True) as peek:
            ids = [e["id"] for e in peek.log()]
        if in_flight and in_flight[0][1] in ids:
            done += in_flight  # it finished; only its "committed" line was lost
        check_store(path, expected_labels(objects, done), [i for _, i in done])
