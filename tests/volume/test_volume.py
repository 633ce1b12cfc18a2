"""Lazy volumes: every source a user opens, its axes, its normalisation and its fingerprint.

Files are real: written in ``tmp_path`` by :mod:`tests.volume_files` the way microscopes and
converters write them, then read back through :func:`napari_segany.volume.volume.open_volume`.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
import zarr.storage

from napari_segany.volume.intensity import scale_to_model
from napari_segany.volume.volume import (
    FINGERPRINT_PIXELS,
    LIMIT_PIXELS,
    LIMIT_SLICES,
    open_volume,
)

from ..volume_files import (
    NGFF_VERSIONS,
    large_page,
    ramp,
    write_large_tiff,
    write_large_zarr,
    write_ome_tiff,
    write_ome_zarr,
    write_rgb_tiff,
    write_tiff_stack,
    write_zarr_array,
)


class SyntheticArray:
    """An array-like whose values are made from the index it is read with; counts its reads.

    It has no backing memory, so a "huge" volume costs nothing until read, and every read
    is recorded: the tests below check what a Volume reads, not only what it returns.
    """

    def __init__(self, shape: tuple[int, ...], dtype: type = np.uint16) -> None:
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = len(shape)
        self.reads: list[tuple] = []
        self.values_read = 0

    def __getitem__(self, index: tuple) -> np.ndarray:
        kept = [
            np.arange(n)[i] for n, i in zip(self.shape, index, strict=True) if isinstance(i, slice)
        ]
        fixed = sum(int(i) * 101 for i in index if not isinstance(i, slice))
        out = np.full([len(c) for c in kept], fixed, dtype=np.int64)
        for axis, coords in enumerate(kept):
            out += coords.reshape([-1 if a == axis else 1 for a in range(len(kept))]) * (axis + 2)
        self.reads.append(index)
        self.values_read += out.size
        return (out % 4000).astype(self.dtype)

    def reset(self) -> None:
        self.reads.clear()
        self.values_read = 0


# --- sources ---------------------------------------------------------------------------


def test_numpy_zyx_reads_slices_and_windows() -> None:
    data = ramp((5, 40, 30))
    vol = open_volume(data)
    assert vol.source == "numpy array (5, 40, 30) uint16"
    assert (vol.axes, vol.shape, len(vol), vol.slice_shape) == ("ZYX", (5, 40, 30), 5, (40, 30))
    assert vol.dtype == np.uint16 and not vol.rgb
    for z in range(5):
        np.testing.assert_array_equal(vol.read_slice(z), data[z])
    np.testing.assert_array_equal(vol.read_slice(3, (4, 5, 20, 9)), data[3, 4:20, 5:9])


def test_volume_indexes_like_numpy_reading_only_what_is_asked() -> None:
    data = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    vol = open_volume(data)
    np.testing.assert_array_equal(vol[1], data[1])
    np.testing.assert_array_equal(vol[-1], data[-1])
    np.testing.assert_array_equal(vol[1:3], data[1:3])
    np.testing.assert_array_equal(vol[::-2, 0], data[::-2, 0])
    np.testing.assert_array_equal(vol[2, 1:3, 2:5], data[2, 1:3, 2:5])
    assert vol[5:].shape == (0, 5, 6)
    with pytest.raises(IndexError, match=r"z=4 is outside .* 4 slice"):
        vol[4]
    with pytest.raises(IndexError, match="z=-5"):
        vol[-5]
    with pytest.raises(TypeError, match="integer or a slice"):
        vol[1.5]


def test_2d_image_is_one_slice() -> None:
    data = ramp((20, 30), np.float32)
    vol = open_volume(data)
    assert (vol.axes, vol.shape, len(vol)) == ("YX", (1, 20, 30), 1)
    np.testing.assert_array_equal(vol.read_slice(0), data)


@pytest.mark.parametrize("samples", [3, 4])
def test_rgb_and_rgba_arrays(samples: int) -> None:
    data = ramp((4, 20, 30, samples), np.uint8)
    vol = open_volume(data)
    assert (vol.axes, vol.shape, vol.rgb) == ("ZYXC", (4, 20, 30), True)
    np.testing.assert_array_equal(vol.read_slice(2), data[2, :, :, :3])  # alpha dropped
    image = open_volume(data[0])
    assert (image.axes, image.shape) == ("YXC", (1, 20, 30))
    np.testing.assert_array_equal(image.read_slice(0, (1, 2, 5, 6)), data[0, 1:5, 2:6, :3])


def test_dask_array_is_read_per_slice() -> None:
    data = ramp((6, 32, 24))
    vol = open_volume(da.from_array(data, chunks=(1, 16, 24)))
    assert vol.source == "dask array (6, 32, 24) uint16"
    np.testing.assert_array_equal(vol.read_slice(4), data[4])
    np.testing.assert_array_equal(vol.read_slice(5, (10, 3, 30, 20)), data[5, 10:30, 3:20])
    assert isinstance(vol.read_slice(0), np.ndarray)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_multipage_tiff(tmp_path: Path, compression: str | None) -> None:
    data = ramp((7, 33, 21))
    path = write_tiff_stack(tmp_path / "stack.tif", data, compression=compression)
    with open_volume(path) as vol:
        assert (vol.source, vol.axes, vol.shape) == (str(path), "ZYX", (7, 33, 21))  # Q -> Z
        for z in (0, 3, 6):
            np.testing.assert_array_equal(vol.read_slice(z), data[z])
        np.testing.assert_array_equal(vol.read_slice(6, (30, 1, 33, 21)), data[6, 30:, 1:])


def test_ome_tiff_tczyx_takes_axes_from_metadata(tmp_path: Path) -> None:
    data = ramp((2, 4, 3, 16, 12))
    path = write_ome_tiff(tmp_path / "cells.ome.tif", data, "TCZYX")
    vol = open_volume(path, time=1, channel=2)
    assert (vol.axes, vol.shape, vol.time, vol.channel) == ("TCZYX", (3, 16, 12), 1, 2)
    np.testing.assert_array_equal(vol.read_slice(2), data[1, 2, 2])
    np.testing.assert_array_equal(vol.read_slice(0, (2, 3, 9, 8)), data[1, 2, 0, 2:9, 3:8])
    vol.close()


def test_ome_tiff_czyx_three_channels_read_as_rgb(tmp_path: Path) -> None:
    data = ramp((3, 5, 16, 12))
    path = write_ome_tiff(tmp_path / "rgb.ome.tiff", data, "CZYX")
    with open_volume(path) as vol:
        assert (vol.axes, vol.shape, vol.rgb) == ("CZYX", (5, 16, 12), True)
        np.testing.assert_array_equal(vol.read_slice(4), np.moveaxis(data[:, 4], 0, -1))
    with open_volume(path, channel=1) as grey:
        assert not grey.rgb
        np.testing.assert_array_equal(grey.read_slice(4), data[1, 4])


@pytest.mark.parametrize("samples", [3, 4])
def test_rgb_tiff_samples(tmp_path: Path, samples: int) -> None:
    data = ramp((16, 12, samples), np.uint8)
    with open_volume(write_rgb_tiff(tmp_path / "photo.tif", data)) as vol:
        assert (vol.axes, vol.shape, vol.rgb) == ("YXC", (1, 16, 12), True)  # S -> C
        np.testing.assert_array_equal(vol.read_slice(0), data[:, :, :3])


def test_pyramidal_tiff_levels(tmp_path: Path) -> None:
    data = ramp((3, 32, 32), np.uint8)
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(data, subifds=1, metadata={"axes": "ZYX"}, photometric="minisblack")
        tif.write(data[:, ::2, ::2], subfiletype=1, photometric="minisblack")
    with open_volume(path, level=1) as vol:
        assert vol.shape == (3, 16, 16)
        np.testing.assert_array_equal(vol.read_slice(2), data[2, ::2, ::2])
    with pytest.raises(ValueError, match=r"level=2 is out of range: .* has 2 levels \(0\.\.1\)"):
        open_volume(path, level=2)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_on_disk(tmp_path: Path, zarr_format: int) -> None:
    data = ramp((4, 25, 19), np.float32)
    path = write_zarr_array(tmp_path / "raw.zarr", data, zarr_format=zarr_format)
    vol = open_volume(path)
    assert (vol.source, vol.axes, vol.shape, vol.dtype) == (
        str(path),
        "ZYX",
        (4, 25, 19),
        np.float32,
    )
    np.testing.assert_array_equal(vol.read_slice(1), data[1])
    np.testing.assert_array_equal(vol.read_slice(3, (5, 5, 6, 19)), data[3, 5:6, 5:])
    from_node = open_volume(zarr.open_array(path, mode="r"))
    np.testing.assert_array_equal(from_node.read_slice(2), data[2])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_group_in_memory_holding_one_array(zarr_format: int) -> None:
    data = ramp((3, 10, 11))
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=zarr_format)
    group.create_array("raw", shape=data.shape, dtype=data.dtype)[...] = data
    vol = open_volume(group)
    assert vol.source.endswith("/raw")
    np.testing.assert_array_equal(vol.read_slice(2), data[2])
    np.testing.assert_array_equal(open_volume(group.store).read_slice(1), data[1])


@pytest.mark.parametrize("version", NGFF_VERSIONS)
def test_ome_zarr_pyramid_levels_and_metadata_axes(tmp_path: Path, version: str) -> None:
    data = ramp((2, 3, 20, 18))
    path = tmp_path / "image.ome.zarr"
    pyramid = write_ome_zarr(path, data, axes="czyx", version=version)
    on_disk = json.loads((path / (".zattrs" if version == "0.4" else "zarr.json")).read_text())
    assert "multiscales" in (on_disk if version == "0.4" else on_disk["attributes"]["ome"])
    for level, expected in enumerate(pyramid):
        vol = open_volume(path, level=level, channel=1)
        assert (vol.axes, vol.shape, vol.level) == ("CZYX", expected.shape[1:], level)
        np.testing.assert_array_equal(vol.read_slice(2), expected[1, 2])
        np.testing.assert_array_equal(vol.read_slice(0, (1, 2, 4, 5)), expected[1, 0, 1:4, 2:5])
    with pytest.raises(ValueError, match=r"level=2 is out of range: .*image.ome.zarr has 2 levels"):
        open_volume(path, level=2, channel=0)
    with pytest.raises(ValueError, match=r"has 2 channels .* pick one with channel=0\.\.1"):
        open_volume(path)


@pytest.mark.parametrize("version", NGFF_VERSIONS)
def test_ome_zarr_written_here_is_valid_for_ome_zarr_py(tmp_path: Path, version: str) -> None:
    """The writer the other tests rely on produces OME-Zarr that the reference tools accept."""
    pytest.importorskip("ome_zarr")
    models = pytest.importorskip(f"ome_zarr_models.v0{version[-1]}")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path = tmp_path / "image.ome.zarr"
    pyramid = write_ome_zarr(path, ramp((2, 4, 16, 16)), axes="tzyx", version=version)
    models.Image.from_zarr(zarr.open_group(path, mode="r"))  # schema validation
    node = next(iter(Reader(parse_url(path))()))
    assert [a["name"] for a in node.metadata["axes"]] == ["t", "z", "y", "x"]
    for level, expected in enumerate(pyramid):
        np.testing.assert_array_equal(np.asarray(node.data[level][1, 3]), expected[1, 3])
        vol = open_volume(path, level=level, time=1)
        np.testing.assert_array_equal(vol.read_slice(3), expected[1, 3])


def test_ome_zarr_in_a_bioformats2raw_layout(tmp_path: Path) -> None:
    root = zarr.open_group(tmp_path / "converted.zarr", mode="w")
    root.attrs["bioformats2raw.layout"] = 3
    data = ramp((3, 8, 8))
    write_ome_zarr(tmp_path / "converted.zarr" / "0", data, axes="zyx")
    np.testing.assert_array_equal(open_volume(tmp_path / "converted.zarr").read_slice(1), data[1])


def test_list_of_arrays_is_a_pyramid() -> None:
    data = ramp((3, 16, 16))
    vol = open_volume([data, data[:, ::2, ::2]], level=1)
    np.testing.assert_array_equal(vol.read_slice(1), data[1, ::2, ::2])
    with pytest.raises(ValueError, match=r"np\.stack"):
        open_volume([data[0], data[1]])


# --- axes ------------------------------------------------------------------------------


def test_caller_axes_win_over_inference_and_metadata(tmp_path: Path) -> None:
    data = ramp((3, 20, 30))
    as_rgb = open_volume(data, axes="cyx")  # lower case is fine
    assert (as_rgb.axes, as_rgb.shape, as_rgb.rgb) == ("CYX", (1, 20, 30), True)
    np.testing.assert_array_equal(as_rgb.read_slice(0), np.moveaxis(data, 0, -1))
    last3 = ramp((10, 20, 3))  # inferred as YXC; the caller says it is a stack
    assert open_volume(last3, axes="ZYX").shape == (10, 20, 3)
    path = write_ome_tiff(tmp_path / "t.ome.tif", ramp((4, 2, 8, 8)), "CZYX")
    with open_volume(path, axes="TZYX", time=3) as vol:
        assert (vol.axes, vol.shape) == ("TZYX", (2, 8, 8))


def test_axes_transposed_on_read() -> None:
    data = ramp((4, 30, 20))  # stored X, Y, Z
    vol = open_volume(data, axes="XYZ")
    assert vol.shape == (20, 30, 4)
    np.testing.assert_array_equal(vol.read_slice(7), data[:, :, 7].T)
    np.testing.assert_array_equal(vol.read_slice(7, (1, 2, 3, 4)), data[2:4, 1:3, 7].T)


def test_size_one_channel_and_time_are_dropped() -> None:
    data = ramp((1, 1, 4, 6, 5))
    vol = open_volume(data, axes="TCZYX")
    assert (vol.shape, vol.time, vol.channel) == ((4, 6, 5), None, None)
    np.testing.assert_array_equal(vol.read_slice(3), data[0, 0, 3])


@pytest.mark.parametrize(
    ("shape", "kwargs", "message"),
    [
        ((5, 6, 7), {"axes": "ZYQ"}, r"axes='ZYQ' does not fit .*: unknown axes letter\(s\) 'Q'"),
        ((5, 6, 7), {"axes": "ZYY"}, "axes='ZYY' does not fit .*: axes repeat Y"),
        ((5, 6, 7), {"axes": "ZCX"}, "must include both Y and X"),
        ((5, 6, 7), {"axes": "YX"}, "name 2 dimensions but the array has 3"),
        (
            (2, 5, 6, 7),
            {},
            r"cannot tell the axes of a 4D array of shape \(2, 5, 6, 7\); "
            r"pass axes='TZYX' or axes='CZYX'",
        ),
        ((2, 2, 5, 6, 7), {}, "cannot tell the axes of a 5D array.*; pass axes='TCZYX' or"),
        ((3, 5, 6, 7), {"axes": "TZYX"}, r"has 3 time points .* pick one with time=0\.\.2"),
        (
            (3, 5, 6, 7),
            {"axes": "TZYX", "time": 3},
            r"time=3 is out of range: .* \(valid: 0\.\.2\)",
        ),
        ((5, 5, 6, 7), {"axes": "CZYX"}, r"has 5 channels .* channel=0\.\.4"),
        ((5, 5, 6, 7), {"axes": "CZYX", "channel": -1}, "channel=-1 is out of range"),
        ((4, 5, 6, 7), {"axes": "CZYX"}, "has 4 channels"),  # no RGBA when the caller says C
        ((5, 6, 7), {"channel": 0}, "channel=0 given but .* has no C axis"),
        ((5, 6, 7), {"time": 0}, "time=0 given but .* has no T axis"),
    ],
)
def test_axes_errors(shape: tuple[int, ...], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_volume(np.zeros(shape, np.uint8), **kwargs)


def test_unknown_metadata_axis_asks_for_axes(tmp_path: Path) -> None:
    path = tmp_path / "odd.ome.zarr"
    write_ome_zarr(path, ramp((2, 8, 8)), axes="zyx", levels=1)
    group = zarr.open_group(path, mode="r+")
    ome = group.attrs["ome"]
    ome["multiscales"][0]["axes"][0] = {"name": "angle", "type": "space"}
    group.attrs["ome"] = ome
    with pytest.raises(ValueError, match=r"angle.*not one of T, C, Z, Y, X; pass axes="):
        open_volume(path)
    assert open_volume(path, axes="ZYX").shape == (2, 8, 8)


# --- bad input -------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no such file or directory: .*nothing\.tif"):
        open_volume(tmp_path / "nothing.tif")


def test_unsupported_suffix_and_non_zarr_directory(tmp_path: Path) -> None:
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match=r"unsupported file type '\.png'.*TIFF.*zarr"):
        open_volume(tmp_path / "image.png")
    with pytest.raises(ValueError, match="is a directory but not a zarr store"):
        open_volume(tmp_path)


def test_zarr_group_that_does_not_say_which_array(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "two.zarr", mode="w")
    for name in ("a", "b"):
        group.create_array(name, shape=(4, 4), dtype="u1")
    with pytest.raises(ValueError, match=r"holds 2 arrays \(a, b\).*open one of them"):
        open_volume(tmp_path / "two.zarr")
    zarr.open_group(tmp_path / "none.zarr", mode="w")
    with pytest.raises(ValueError, match="holds no array"):
        open_volume(tmp_path / "none.zarr")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros(7), r"expected an image with 2 to 5 dimensions .* got 1D"),
        (np.zeros((1, 1, 1, 1, 2, 2)), "got 6D"),
        (np.zeros((0, 8, 8)), r"is empty: shape \(0, 8, 8\) has a zero-length axis"),
        (np.zeros((8, 0)), "is empty"),
        (np.zeros((4, 4), bool), "dtype bool: expected integer or floating-point"),
        (np.zeros((4, 4), complex), "dtype complex128"),
        (np.zeros((4, 4), object), "dtype object"),
    ],
)
def test_bad_arrays(data: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_volume(data)


def test_bad_level_limits_and_source_type() -> None:
    with pytest.raises(ValueError, match=r"level=1 is out of range: numpy array .* has 1 level"):
        open_volume(np.zeros((4, 4)), level=1)
    with pytest.raises(ValueError, match="level must be a non-negative integer"):
        open_volume(np.zeros((4, 4)), level=-1)
    with pytest.raises(ValueError, match="limits must be finite with low < high"):
        open_volume(np.zeros((4, 4)), limits=(10, 10))
    with pytest.raises(ValueError, match="limits must be two numbers"):
        open_volume(np.zeros((4, 4)), limits=(1, 2, 3))
    with pytest.raises(TypeError, match="cannot open a dict"):
        open_volume({"a": 1})


def test_bad_slice_and_region() -> None:
    vol = open_volume(ramp((3, 10, 12)))
    with pytest.raises(IndexError, match=r"slice z=3 is outside .* 3 slice\(s\) \(0\.\.2\)"):
        vol.read_slice(3)
    with pytest.raises(IndexError, match="z=-1"):
        vol.read_slice(-1)
    with pytest.raises(ValueError, match=r"non-empty window inside the slice of shape \(Y, X\)"):
        vol.read_slice(0, (0, 0, 11, 5))
    with pytest.raises(ValueError, match="non-empty window"):
        vol.read_slice(0, (5, 5, 5, 6))
    with pytest.raises(ValueError, match="four integers"):
        vol.read_slice(0, (1, 2))


def test_nan_refused_at_model_slice_and_ignored_by_limits() -> None:
    data = np.tile(np.linspace(0, 100, 50, dtype=np.float32), (4, 50, 1))
    data[2, 7, 9] = np.nan
    data[3, 0, 0] = np.inf
    vol = open_volume(data)
    assert np.isfinite(vol.limits).all()
    assert vol.model_slice(1).dtype == np.float32
    with pytest.raises(ValueError, match=r"slice z=2 of numpy array .* holds 1 NaN or infinite"):
        vol.model_slice(2)
    with pytest.raises(ValueError, match="slice z=3"):
        vol.model_slice(3)
    with pytest.raises(ValueError, match="hold no finite value; pass limits="):
        _ = open_volume(np.full((2, 4, 4), np.nan)).limits


def _open_files() -> set[str]:
    fds = Path("/proc/self/fd")
    return {os.path.realpath(fd) for fd in fds.iterdir() if fd.exists()}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to list open files")
def test_forgotten_tiff_volume_closes_its_file(tmp_path: Path) -> None:
    path = write_tiff_stack(tmp_path / "s.tif", ramp((2, 8, 8)))
    vol = open_volume(path)
    vol.read_slice(1)
    assert str(path.resolve()) in _open_files()
    del vol
    gc.collect()
    assert str(path.resolve()) not in _open_files()
    with pytest.raises(ValueError, match="level=1"):  # a refused open leaves nothing open
        open_volume(path, level=1)
    assert str(path.resolve()) not in _open_files()


def test_closed_tiff_volume_refuses_reads(tmp_path: Path) -> None:
    vol = open_volume(write_tiff_stack(tmp_path / "s.tif", ramp((2, 8, 8))))
    vol.close()
    vol.close()  # twice is fine
    with pytest.raises(ValueError, match="is closed"):
        vol.read_slice(0)


# --- normalisation ---------------------------------------------------------------------


def test_limits_decided_once_from_a_bounded_sample() -> None:
    array = SyntheticArray((40, 3000, 2500))
    vol = open_volume(array)
    assert array.reads == []  # opening reads no pixels
    limits = vol.limits
    assert len(array.reads) <= LIMIT_SLICES
    assert array.values_read <= LIMIT_SLICES * LIMIT_PIXELS
    sampled = sorted(index[0] for index in array.reads)
    assert sampled[0] == 0 and sampled[-1] == 39  # spread over the whole stack
    array.reset()
    assert vol.limits is limits
    vol.model_slice(5)
    assert len(array.reads) == 1  # only the slice itself: no re-sampling per slice
    assert vol.normalisation == {
        "method": "percentiles",
        "percentiles": [0.5, 99.5],
        "limits": list(limits),
    }


def test_limits_sampled_once_when_threads_ask_together() -> None:
    array = SyntheticArray((16, 500, 500))
    vol = open_volume(array)
    barrier = threading.Barrier(4)
    results = []

    def ask() -> None:
        barrier.wait()
        results.append(vol.limits)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1
    assert len(array.reads) <= LIMIT_SLICES


def test_limits_are_robust_and_shared_by_all_slices() -> None:
    data = np.zeros((4, 100, 100), np.uint16)
    data[:] = np.arange(100, dtype=np.uint16) * 10  # 0..990 on every slice
    data[0, 0, 0] = 60000  # one hot pixel must not squash the range
    data[3] //= 2  # a dimmer slice stays dimmer: no per-slice stretch
    vol = open_volume(data)
    low, high = vol.limits
    assert low < 10 and 900 < high < 1000
    assert vol.model_slice(3).max() < 0.6 * vol.model_slice(1).max()
    np.testing.assert_allclose(vol.model_slice(2), scale_to_model(data[2], vol.limits))


def test_explicit_limits_are_honoured_without_reading() -> None:
    array = SyntheticArray((5, 64, 64))
    vol = open_volume(array, limits=(100, 300))
    assert vol.limits == (100.0, 300.0)
    assert array.reads == []
    out = vol.model_slice(0, (0, 0, 8, 8))
    expected = np.clip((array[0, 0:8, 0:8].astype(np.float32) - 100) * (255 / 200), 0, 255)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert vol.normalisation == {"method": "explicit", "limits": [100.0, 300.0]}


def test_constant_volume_maps_to_a_constant() -> None:
    vol = open_volume(np.full((3, 16, 16), 7, np.uint16))
    assert vol.limits == (7.0, 8.0)
    out = vol.model_slice(1)
    assert out.dtype == np.float32 and out.shape == (16, 16) and np.all(out == 0)


def test_rgb_model_slice() -> None:
    data = ramp((2, 12, 10, 3), np.uint8)
    vol = open_volume(data)
    out = vol.model_slice(1, (2, 2, 6, 7))
    assert out.shape == (4, 5, 3) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 255
    np.testing.assert_allclose(out, scale_to_model(data[1, 2:6, 2:7], vol.limits))


def test_pickled_volume_reopens_with_the_same_limits(tmp_path: Path) -> None:
    """Batch workers receive a volume by pickle: same view, limits not decided again."""
    data = ramp((4, 2, 16, 12))
    path = write_ome_tiff(tmp_path / "cells.ome.tif", data, "CZYX")
    with open_volume(path, channel=1) as vol:
        limits = vol.limits
        clone = pickle.loads(pickle.dumps(vol))
    with clone:
        assert repr(clone) == repr(vol) and "channel=1" in repr(clone)
        assert clone.limits == limits and clone.normalisation == vol.normalisation
        np.testing.assert_array_equal(clone.read_slice(1), data[1, 1])
    array = SyntheticArray((6, 20, 20))
    sampled = open_volume(array)
    _ = sampled.limits
    copy = pickle.loads(pickle.dumps(sampled))
    copy._raw.array.reset()
    assert copy.limits == sampled.limits and copy._raw.array.reads == []
    explicit = pickle.loads(pickle.dumps(open_volume(array, limits=(1, 2))))
    assert explicit.normalisation == {"method": "explicit", "limits": [1.0, 2.0]}


# --- fingerprint -----------------------------------------------------------------------


def test_fingerprint_follows_sampled_content(tmp_path: Path) -> None:
    data = ramp((9, 50, 40))
    base = open_volume(data).fingerprint()
    assert len(base) == 64 and base == open_volume(data.copy()).fingerprint()
    on_disk = open_volume(write_zarr_array(tmp_path / "same.zarr", data, zarr_format=3))
    assert on_disk.fingerprint() == base  # content, not where it lives
    for z in (0, 4, 8):  # first, middle, last
        changed = data.copy()
        changed[z, 0, 0] += 1
        assert open_volume(changed).fingerprint() != base
    assert open_volume(ramp((9, 50, 40), seed=1)).fingerprint() != base
    assert open_volume(data.astype(np.float32)).fingerprint() != base
    assert open_volume(data[:, :, :39]).fingerprint() != base


def test_fingerprint_covers_the_axes_choice() -> None:
    data = ramp((2, 4, 10, 10))
    prints = {open_volume(data, axes="CZYX", channel=c).fingerprint() for c in (0, 1)}
    prints.add(open_volume(data, axes="TZYX", time=0).fingerprint())
    assert len(prints) == 3


def test_fingerprint_cost_is_bounded() -> None:
    array = SyntheticArray((500, 4000, 4000))
    vol = open_volume(array)
    vol.fingerprint()
    assert sorted(index[0] for index in array.reads) == [0, 250, 499]
    assert array.values_read <= 3 * FINGERPRINT_PIXELS


# --- laziness --------------------------------------------------------------------------

_CHILD = """
import json, resource, sys

def vm(key):  # VmHWM is this process's peak RSS; ru_maxrss would carry the parent's over exec
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) << 10 for line in status if line.startswith(key))

from napari_segany.volume.volume import open_volume  # numpy, zarr, tifffile; not torch
import numpy as np

path, cap = sys.argv[1], int(sys.argv[2])
window = tuple(json.loads(sys.argv[3]))
limit = vm("VmSize:") + cap
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # a hard cap on new memory
peak0 = vm("VmHWM:")
vol = open_volume(path)
limits, fingerprint = vol.limits, vol.fingerprint()
pixels = {}
for z in range(len(vol)):
    read = vol.model_slice(z, window) if z % 2 else vol.read_slice(z)
    pixels[z] = float(read[100, 200])
growth = vm("VmHWM:") - peak0
try:  # the cap is real: the whole volume does not fit under it
    np.ones(vol.shape, vol.dtype)
    fits = True
except MemoryError:
    fits = False
print(json.dumps({"limits": limits, "fingerprint": fingerprint, "pixels": pixels,
                  "rss_growth": growth, "shape": vol.shape, "whole_fits": fits}))
"""


class LargeContent:
    """The large files' content made on demand: what the child must have read."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape, self.dtype, self.ndim = shape, np.dtype(np.uint16), 3

    def __getitem__(self, index: tuple) -> np.ndarray:
        z, rows, cols = index
        return large_page(z, self.shape[1:])[rows, cols]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tiff", "zarr"])
def test_volume_larger_than_a_memory_cap(tmp_path: Path, kind: str) -> None:
    shape = (72, 2048, 2048)  # 604 MB of uint16
    cap = 256 << 20  # address space the child may add after its imports
    if kind == "tiff":
        path = write_large_tiff(tmp_path / "big.tif", shape)
    else:
        path = write_large_zarr(tmp_path / "big.zarr", shape)
    # glibc reserves 64 MB of address space per thread for malloc arenas; two arenas keep
    # the cap about the data read rather than about the size of zarr's thread pool.
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    window = (1000, 1000, 1512, 1512)  # model_slice of a tile on odd slices
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(cap), json.dumps(window)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert tuple(result["shape"]) == shape
    assert not result["whole_fits"]
    assert result["rss_growth"] < 128 << 20, f"peak RSS grew by {result['rss_growth'] >> 20} MB"
    expected = open_volume(LargeContent(shape))
    assert tuple(result["limits"]) == expected.limits
    assert result["fingerprint"] == expected.fingerprint()
    for z, value in result["pixels"].items():
        z = int(z)
        read = expected.model_slice(z, window) if z % 2 else expected.read_slice(z)
        assert value == pytest.approx(float(read[100, 200]))
    assert 0 < result["pixels"]["1"] < 255  # a tile pixel inside the limits, not clipped
