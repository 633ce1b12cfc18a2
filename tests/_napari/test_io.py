"""The napari reader and writer: OME-Zarr images and labels in, Labels layers out.

Images are real OME-Zarr on disk written by :mod:`tests.volume_files` (NGFF 0.4 and 0.5,
following the specification), labels by :class:`LabelsStore`; what the writer produces is
read back by ome-zarr-py and validated with ome-zarr-models. GUI tests (marker ``gui``) open
and save through a real viewer and the npe2 manifest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr
from napari import Viewer
from napari.errors import MultipleReaderError
from napari.layers import Image, Labels
from napari.settings import get_settings
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from ome_zarr_models.v05 import ImageLabel
from ome_zarr_models.v05 import Labels as LabelsModel

from napari_segany._napari.io import get_reader, write_labels
from napari_segany.labels.store import LabelsStore, StoreLockedError

from ..volume_files import ramp, write_ome_zarr, write_tiff_stack, write_zarr_array

PLUGIN = "napari-segany"
SHAPE = (3, 40, 50)
KEY = "napari_segany"


def disk(shape: tuple[int, int], center: tuple[int, int], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def set_transforms(path: Path, scale: list[float], translation: list[float]) -> None:
    """Give an OME-Zarr 0.5 image (levels halving y, x) a physical scale and offset."""
    group = zarr.open_group(path, mode="r+")
    ome = group.attrs["ome"]
    for n, dataset in enumerate(ome["multiscales"][0]["datasets"]):
        level = [s * (2**n if i >= len(scale) - 2 else 1) for i, s in enumerate(scale)]
        dataset["coordinateTransformations"] = [
            {"type": "scale", "scale": level},
            {"type": "translation", "translation": translation},
        ]
    group.attrs["ome"] = ome


def read(path: Path) -> list[tuple[Any, dict[str, Any], str]]:
    reader = get_reader(str(path))
    assert reader is not None
    return reader(str(path))


def level0(data: Any) -> np.ndarray:
    return np.asarray(data[0] if isinstance(data, list) else data)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A 2-level NGFF 0.5 image with labels inside it (two objects committed)."""
    path = tmp_path / "cells.ome.zarr"
    write_ome_zarr(path, ramp(SHAPE), axes="zyx", levels=2)
    set_transforms(path, [2.0, 0.5, 0.5], [0.0, 10.0, 5.0])
    with LabelsStore.create(path, SHAPE, image=path, chunks=(1, 16, 16)) as store:
        store.commit(disk(SHAPE[1:], (10, 10), 6), z=1)
        store.commit(disk(SHAPE[1:], (30, 35), 5), z=2)
    return path


# -- get_reader -----------------------------------------------------------------------------


def test_get_reader_declines_what_is_not_ome_zarr(tmp_path: Path) -> None:
    tiff = write_tiff_stack(tmp_path / "stack.tif", ramp((2, 8, 8)))
    plain_v3 = write_zarr_array(tmp_path / "plain.zarr", ramp((2, 8, 8)), zarr_format=3)
    plain_v2 = write_zarr_array(tmp_path / "plain2.zarr", ramp((2, 8, 8)), zarr_format=2)
    group = zarr.open_group(tmp_path / "group.zarr", mode="w")
    group.create_array("raw", shape=(4, 4), dtype="u1")
    folder = tmp_path / "notes.zarr"
    folder.mkdir()
    (folder / "a.txt").write_text("not zarr")
    for path in (tiff, plain_v3, plain_v2, group.store.root, folder, tmp_path / "missing.zarr"):
        assert get_reader(str(path)) is None, path
    image = tmp_path / "image.ome.zarr"
    write_ome_zarr(image, ramp((2, 8, 8)), axes="zyx")
    assert get_reader([str(image), str(tiff)]) is None  # every path must be ours
    assert get_reader([str(image)]) is not None
    assert get_reader("https://example.org/image.ome.zarr") is None


def test_image_and_its_labels_open_lazily_with_scale(image: Path) -> None:
    (data, meta, kind), (labels, lmeta, lkind) = read(image)
    with LabelsStore.open(image, read_only=True) as store:
        expected = store.read()
    assert kind == "image" and lkind == "labels"
    assert meta["multiscale"] and len(data) == 2
    assert all(isinstance(level, da.Array) for level in data)
    np.testing.assert_array_equal(data[0].compute(), ramp(SHAPE))
    np.testing.assert_array_equal(data[1].compute(), ramp(SHAPE)[:, ::2, ::2])
    assert (meta["name"], meta["rgb"]) == ("image", False)
    assert meta["scale"] == lmeta["scale"] == [2.0, 0.5, 0.5]
    assert meta["translate"] == lmeta["translate"] == [0.0, 10.0, 5.0]
    assert meta["metadata"][KEY] == {"image": str(image), "ngff_version": "0.5"}

    # Labels: the zarr arrays themselves, read-only, every level; nothing read into memory.
    assert lmeta["multiscale"] and len(labels) == 2
    assert all(isinstance(level, zarr.Array) and level.read_only for level in labels)
    np.testing.assert_array_equal(labels[0][...], expected)
    np.testing.assert_array_equal(labels[1][...], expected[:, ::2, ::2])
    assert lmeta["name"] == "segany"
    assert lmeta["metadata"][KEY] == {
        "image": str(image),
        "labels_store": str(image),
        "labels_name": "segany",
        "ngff_version": "0.5",
    }


def test_labels_layer_follows_commits_to_its_store(image: Path) -> None:
    _, (labels, meta, _) = read(image)
    info = meta["metadata"][KEY]
    with LabelsStore.open(info["labels_store"], name=info["labels_name"]) as store:
        new_id = store.commit(disk(SHAPE[1:], (20, 20), 4), z=0)
    assert labels[0][0, 20, 20] == new_id  # the layer's arrays read the store as it is now


def test_channels_split_with_omero_settings(tmp_path: Path) -> None:
    path = tmp_path / "two.ome.zarr"
    write_ome_zarr(path, ramp((2, *SHAPE)), axes="czyx", levels=1)
    group = zarr.open_group(path, mode="r+")
    ome = group.attrs["ome"]
    ome["multiscales"][0]["datasets"][0]["coordinateTransformations"] = [
        {"type": "scale", "scale": [1.0, 3.0, 0.25, 0.25]}
    ]
    ome["multiscales"][0]["coordinateTransformations"] = [
        {"type": "scale", "scale": [1.0, 2.0, 2.0, 2.0]},
        {"type": "translation", "translation": [0.0, 1.0, 2.0, 3.0]},
    ]
    window = {"min": 0, "max": 65535}
    ome["omero"] = {
        "channels": [
            {"label": "dapi", "color": "0000FF", "window": {**window, "start": 10, "end": 900}},
            {"label": "gfp", "color": "00FF00", "active": False, "window": {**window, "start": 0}},
        ]
    }
    group.attrs["ome"] = ome

    ((data, meta, kind),) = read(path)
    assert kind == "image" and not meta["multiscale"] and data.shape == (2, *SHAPE)
    assert meta["channel_axis"] == 0
    assert meta["scale"] == [6.0, 0.5, 0.5]  # global scale times level-0 scale, no c
    assert meta["translate"] == [1.0, 2.0, 3.0]
    assert meta["name"] == ["dapi", "gfp"]
    assert meta["contrast_limits"] == [[10.0, 900.0], None]  # a window without end: none
    assert meta["colormap"] == ["#0000ff", "#00ff00"]
    assert meta["visible"] == [True, False]
    assert [m[KEY]["channel"] for m in meta["metadata"]] == [0, 1]


def write_v04_labels(image: Path, name: str, data: np.ndarray) -> None:
    """NGFF 0.4 labels in a 0.4 image, written with zarr v2 following the specification."""
    root = zarr.open_group(image, mode="r+", zarr_format=2)
    labels = root.require_group("labels")
    labels.attrs["labels"] = [name]
    group = labels.create_group(name)
    array = group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=data.shape)
    array[...] = data
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": a, "type": "space"} for a in "zyx"],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 2, 2]}]}
            ],
        }
    ]
    group.attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}}


def test_ngff_04_image_with_labels(tmp_path: Path) -> None:
    path = tmp_path / "old.ome.zarr"
    pyramid = write_ome_zarr(path, ramp(SHAPE), axes="zyx", version="0.4", levels=2)
    cells = np.zeros((3, 20, 25), np.uint16)
    cells[1, 3:8, 4:9] = 3
    write_v04_labels(path, "cells", cells)

    (data, meta, _), (labels, lmeta, kind) = read(path)
    assert [level.shape for level in data] == [p.shape for p in pyramid]
    np.testing.assert_array_equal(data[1].compute(), pyramid[1])
    assert meta["metadata"][KEY]["ngff_version"] == "0.4"
    assert kind == "labels" and not lmeta["multiscale"] and lmeta["name"] == "cells"
    np.testing.assert_array_equal(labels[...], cells)
    assert lmeta["scale"] == [1.0, 2.0, 2.0]
    assert lmeta["metadata"][KEY]["image"] == str(path)


def test_bioformats2raw_layout_opens_its_first_image(tmp_path: Path) -> None:
    root = zarr.open_group(tmp_path / "converted.zarr", mode="w")
    root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    pyramid = write_ome_zarr(tmp_path / "converted.zarr" / "0", ramp((2, 8, 8)), axes="zyx")
    ((data, meta, kind),) = read(tmp_path / "converted.zarr")
    assert kind == "image" and len(data) == len(pyramid)
    np.testing.assert_array_equal(data[0].compute(), pyramid[0])
    assert meta["metadata"][KEY]["image"] == str(tmp_path / "converted.zarr" / "0")


def test_standalone_labels_store_opens_as_labels(tmp_path: Path) -> None:
    path = tmp_path / "seg.ome.zarr"
    with LabelsStore.create(path, (2, 30, 20)) as store:
        store.commit(disk((30, 20), (15, 10), 5), z=1)
        expected = store.read()
    ((labels, meta, kind),) = read(path)
    assert kind == "labels" and meta["name"] == "seg"
    np.testing.assert_array_equal(labels[...], expected)
    assert meta["metadata"][KEY] == {
        "image": None,
        "labels_store": str(path),
        "labels_name": "segany",
        "ngff_version": "0.5",
    }
    # The labels group and the label image group open the same labels.
    for inner in (path / "labels", path / "labels" / "segany"):
        ((again, inner_meta, _),) = read(inner)
        np.testing.assert_array_equal(again[...], expected)
        assert inner_meta["metadata"][KEY]["labels_store"] == str(path)


def test_standalone_labels_name_their_image(image: Path, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "seg.ome.zarr"
    LabelsStore.create(path, SHAPE, image=image).close()
    ((_, meta, _),) = read(path)
    assert meta["metadata"][KEY]["image"] == str(image)
    assert meta["scale"] == [2.0, 0.5, 0.5]  # copied from the image


# -- write_labels ---------------------------------------------------------------------------


def check_ome_labels(path: Path, expected: np.ndarray) -> None:
    """What other tools see: valid NGFF 0.5 labels holding ``expected``."""
    LabelsModel.from_zarr(zarr.open_group(path / "labels", mode="r"))
    ImageLabel.from_zarr(zarr.open_group(path / "labels" / "segany", mode="r"))
    nodes = list(Reader(parse_url(path / "labels"))())
    label = next(n for n in nodes if n.load(Label))
    np.testing.assert_array_equal(np.asarray(label.data[0]), expected)


@pytest.mark.parametrize("kind", ["numpy 3D", "numpy 2D", "dask", "multiscale"])
def test_written_labels_read_back_equal(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(1)
    volume = rng.integers(0, 5, size=SHAPE).astype(np.int32) * 1000
    data: Any = {
        "numpy 3D": volume,
        "numpy 2D": volume[0].astype(np.uint8) // 8,
        "dask": da.from_array(volume.astype(np.uint64), chunks=(2, 7, 11)),
        "multiscale": [volume, volume[:, ::2, ::2]],
    }[kind]
    scale = [2.0, 0.5, 0.25] if kind != "numpy 2D" else [0.5, 0.25]
    meta = {"scale": scale, "translate": [0.0] * len(scale), "metadata": {}}
    path = tmp_path / "out.ome.zarr"

    assert write_labels(str(path), data, meta) == [str(path)]

    expected = level0(data.compute() if kind == "dask" else data)
    expected = expected.reshape((-1, *expected.shape[-2:]))  # 2D: one slice
    ((labels, read_meta, _),) = read(path)
    assert labels.dtype == np.uint32
    np.testing.assert_array_equal(labels[...], expected)
    assert read_meta["scale"] == ([1.0, *scale] if kind == "numpy 2D" else scale)
    check_ome_labels(path, expected)
    with LabelsStore.open(path) as store:  # writable, ids in the data are not handed out
        assert store.next_id() == int(expected.max()) + 1
        assert store.log() == []


def test_writer_refuses_bad_data_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    bad = {
        "negative": (np.full((2, 4, 4), -1, np.int16), ValueError, "must not be negative"),
        "float": (np.zeros((2, 4, 4), np.float32), TypeError, "must be integers"),
        "too large": (np.full((4, 4), 2**32, np.int64), ValueError, "at most 4294967295"),
        "4D": (np.zeros((2, 2, 4, 4), np.uint8), ValueError, r"\(Z, Y, X\) or \(Y, X\)"),
    }
    for data, error, message in bad.values():
        with pytest.raises(error, match=message):
            write_labels(str(path), data, {"metadata": {}})
    assert list(tmp_path.iterdir()) == []  # no store, no half-written folder


def test_writer_never_replaces_what_is_not_a_labels_store(tmp_path: Path, image: Path) -> None:
    notes = tmp_path / "notes.zarr"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    other = zarr.open_group(tmp_path / "other.zarr", mode="w")
    other.create_array("embeddings", shape=(2, 2), dtype="f4")
    before = (image / "zarr.json").read_text()
    data = np.ones((3, 40, 50), np.uint8)
    for path in (notes, tmp_path / "other.zarr", image):
        with pytest.raises(FileExistsError, match="not a napari-segany labels store"):
            write_labels(str(path), data, {"metadata": {}})
    assert (notes / "keep.txt").read_text() == "mine"
    assert "embeddings" in zarr.open_group(tmp_path / "other.zarr", mode="r")
    assert (image / "zarr.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cells.ome.zarr",
        "notes.zarr",
        "other.zarr",
    ]


def test_writer_replaces_its_own_store(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    write_labels(str(path), np.full((2, 4, 4), 7, np.uint8), {"metadata": {}})
    write_labels(str(path), np.full((3, 5, 5), 9, np.uint8), {"metadata": {}})
    with LabelsStore.open(path, read_only=True) as store:
        np.testing.assert_array_equal(store.read(), np.full((3, 5, 5), 9))
    with pytest.raises(ValueError, match="must not be negative"):
        write_labels(str(path), np.full((3, 5, 5), -1, np.int8), {"metadata": {}})
    with LabelsStore.open(path, read_only=True) as store:  # the failed save changed nothing
        np.testing.assert_array_equal(store.read(), np.full((3, 5, 5), 9))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
    with LabelsStore.open(path), pytest.raises(StoreLockedError):
        write_labels(str(path), np.zeros((3, 5, 5), np.uint8), {"metadata": {}})


def test_saving_a_linked_layer_writes_into_its_labels_only(image: Path) -> None:
    (_, _, _), (labels, meta, _) = read(image)
    image_meta = (image / "zarr.json").read_text()
    journal = image / "labels" / "segany" / "napari-segany" / "journal.jsonl"
    before = journal.read_bytes()

    # Unchanged (the store's own arrays): nothing is written.
    assert write_labels(str(image), labels, meta) == [str(image)]
    assert journal.read_bytes() == before

    edited = np.asarray(labels[0][...]).copy()
    edited[0, :5, :5] = 42
    assert write_labels(str(image), edited, meta) == [str(image)]
    with LabelsStore.open(image) as store:
        np.testing.assert_array_equal(store.read(), edited)
        assert store.next_id() == 43
        assert store.chunks == (1, 16, 16)  # as before
    _, (after, after_meta, _) = read(image)
    np.testing.assert_array_equal(after[1][...], edited[:, ::2, ::2])  # the pyramid follows
    assert after_meta["scale"] == meta["scale"]
    assert (image / "zarr.json").read_text() == image_meta  # the image is untouched
    np.testing.assert_array_equal(zarr.open_array(image / "0", mode="r")[...], ramp(SHAPE))
    listing = json.loads((image / "labels" / "zarr.json").read_text())["attributes"]["ome"]
    assert listing["labels"] == ["segany"]
    assert sorted(p.name for p in image.parent.iterdir()) == ["cells.ome.zarr"]


# -- in a viewer ----------------------------------------------------------------------------


@pytest.mark.gui
def test_viewer_opens_image_with_labels(
    make_napari_viewer: Callable[..., Viewer], image: Path
) -> None:
    viewer = make_napari_viewer()
    viewer.open(str(image), plugin=PLUGIN)

    assert [layer.name for layer in viewer.layers] == ["image", "segany"]
    image_layer, labels_layer = viewer.layers
    assert isinstance(image_layer, Image) and image_layer.multiscale
    assert isinstance(labels_layer, Labels) and labels_layer.multiscale
    np.testing.assert_allclose(labels_layer.scale, [2.0, 0.5, 0.5])
    np.testing.assert_allclose(image_layer.translate, [0.0, 10.0, 5.0])
    assert labels_layer.metadata[KEY]["labels_store"] == str(image)
    with LabelsStore.open(image, read_only=True) as store:
        np.testing.assert_array_equal(np.asarray(labels_layer.data[0]), store.read())
    assert viewer.dims.ndim == 3


@pytest.mark.gui
def test_viewer_saves_labels_that_reopen_equal(
    make_napari_viewer: Callable[..., Viewer], tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    data = np.zeros(SHAPE, np.uint16)
    data[1][disk(SHAPE[1:], (20, 20), 8)] = 5
    data[2, 30:, 40:] = 300
    layer = viewer.add_labels(data, name="cells", scale=(2.0, 0.5, 0.5))
    viewer.layers.selection = {layer}
    path = tmp_path / "cells-labels.ome.zarr"

    written = viewer.layers.save(str(path), selected=True, plugin=PLUGIN)

    assert written == [str(path)]
    viewer.layers.clear()
    viewer.open(str(path), plugin=PLUGIN)
    (reopened,) = viewer.layers
    assert isinstance(reopened, Labels) and reopened.name == "cells-labels"
    np.testing.assert_array_equal(np.asarray(reopened.data), data)
    np.testing.assert_allclose(reopened.scale, [2.0, 0.5, 0.5])


@pytest.mark.gui
def test_viewer_saves_an_opened_layer_back_into_its_image(
    make_napari_viewer: Callable[..., Viewer], image: Path
) -> None:
    viewer = make_napari_viewer()
    viewer.open(str(image), plugin=PLUGIN)
    labels_layer = viewer.layers["segany"]
    edited = np.asarray(labels_layer.data[0]).copy()
    edited[2, 5:10, 5:10] = 9
    # An edited copy of the layer, still linked to its store through its metadata.
    copy = viewer.add_labels(edited, name="edited", metadata=dict(labels_layer.metadata))
    viewer.layers.selection = {copy}

    viewer.layers.save(str(image), selected=True, plugin=PLUGIN)

    with LabelsStore.open(image, read_only=True) as store:
        np.testing.assert_array_equal(store.read(), edited)
    np.testing.assert_array_equal(np.asarray(viewer.layers["image"].data[0]), ramp(SHAPE))


@pytest.mark.gui
def test_viewer_opens_our_stores_once_napari_prefers_us_for_ome_zarr_folders(
    make_napari_viewer: Callable[..., Viewer],
    monkeypatch: pytest.MonkeyPatch,
    image: Path,
    tmp_path: Path,
) -> None:
    """What docs/napari.md tells users: File > Open asks, or a reader preference answers.

    napari lists every reader that accepts folders for any folder, whatever its name, so
    without a preference it asks which plugin to use (the reader dialog of File > Open).
    """
    path = tmp_path / "cells.labels.ome.zarr"
    with LabelsStore.create(path, SHAPE) as store:
        store.commit(disk(SHAPE[1:], (20, 20), 6), z=1)
        store.commit(disk(SHAPE[1:], (10, 30), 4), z=2)
        expected = store.read()
    viewer = make_napari_viewer()
    with pytest.raises(MultipleReaderError) as asked:
        viewer.open(str(path), plugin=None)
    assert PLUGIN in asked.value.available_plugins

    # The preference Preferences > Plugins sets (changed in place: not saved to disk).
    preferences = get_settings().plugins.extension2reader
    monkeypatch.setitem(preferences, f"*.ome.zarr{os.sep}", PLUGIN)
    (labels,) = viewer.open(str(path), plugin=None)
    assert isinstance(labels, Labels) and labels.name == "cells.labels"
    np.testing.assert_array_equal(np.asarray(labels.data), expected)
    assert set(np.unique(expected)) == {0, 1, 2}

    # An OME-Zarr image opens with its labels the same way.
    viewer.layers.clear()
    opened = viewer.open(str(image), plugin=None)
    assert [(layer.name, type(layer)) for layer in opened] == [
        ("image", Image),
        ("segany", Labels),
    ]
