"""The one OME-Zarr metadata reader: NGFF 0.4 and 0.5 stores written on disk, good and bad.

Stores are real: written in ``tmp_path`` with zarr by :mod:`tests.volume_files` (NGFF 0.5 in
zarr v3, 0.4 in zarr v2), their attributes read back from disk, then spoilt one way at a
time to check that every malformation is named in one line, with the store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from napari_segany.labels.store import LabelsStore
from napari_segany.ome import Axis, has_multiscales, ome_attributes, read_multiscale
from napari_segany.volume.volume import open_volume

from .volume_files import NGFF_VERSIONS, ramp, write_ome_zarr


def attributes(path: Path) -> dict[str, Any]:
    return zarr.open_group(path, mode="r").attrs.asdict()


def spoil(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to the first multiscales entry of the image at ``path``, on disk."""
    group = zarr.open_group(path, mode="r+")
    attrs = group.attrs.asdict()
    change(ome_attributes(attrs)["multiscales"][0])
    group.attrs.put(attrs)


@pytest.mark.parametrize("version", NGFF_VERSIONS)
def test_both_versions_read_the_same(tmp_path: Path, version: str) -> None:
    path = tmp_path / "cells.ome.zarr"
    write_ome_zarr(path, ramp((2, 3, 8, 8)), axes="czyx", version=version, levels=2)
    attrs = attributes(path)
    assert zarr.open_group(path, mode="r").metadata.zarr_format == (2 if version == "0.4" else 3)
    assert has_multiscales(attrs)

    multiscale = read_multiscale(attrs, str(path))
    assert multiscale is not None
    assert multiscale.version == version
    assert multiscale.nested == (version == "0.5")
    assert multiscale.name == "image"
    assert multiscale.names == ("c", "z", "y", "x")
    assert "".join(a.letter for a in multiscale.axes) == "CZYX"
    assert multiscale.axes[1] == Axis("z", "space", "micrometer")
    assert [d.path for d in multiscale.datasets] == ["0", "1"]
    assert [d.scale for d in multiscale.datasets] == [(1, 1, 1, 1), (1, 1, 2, 2)]
    assert multiscale.datasets[0].translation is None
    assert multiscale.scale is None and multiscale.translation is None


def test_transforms_axis_types_and_older_axes(tmp_path: Path) -> None:
    path = tmp_path / "timed.ome.zarr"
    write_ome_zarr(path, ramp((2, 3, 8, 8)), axes="tzyx", levels=1)

    def change(multiscale: dict[str, Any]) -> None:
        multiscale["axes"][0] = {"name": "when", "type": "time"}
        multiscale["axes"][1] = "z"  # NGFF 0.3 gave names only
        multiscale["datasets"][0]["coordinateTransformations"] = [
            {"type": "scale", "scale": [1, 2, 0.5, 0.5]},
            {"type": "translation", "translation": [0, 1, 2, 3]},
        ]
        multiscale["coordinateTransformations"] = [
            {"type": "scale", "path": "elsewhere"},  # by path: not read
            {"type": "scale", "scale": [1, 1, 4, 4]},
        ]

    spoil(path, change)
    multiscale = read_multiscale(attributes(path), str(path))
    assert multiscale is not None
    assert multiscale.names == ("when", "z", "y", "x")
    assert [a.letter for a in multiscale.axes] == ["T", "Z", "Y", "X"]
    assert multiscale.axes[1] == Axis("z")
    (level,) = multiscale.datasets
    assert level.scale == (1.0, 2.0, 0.5, 0.5) and level.translation == (0.0, 1.0, 2.0, 3.0)
    assert multiscale.scale == (1.0, 1.0, 4.0, 4.0) and multiscale.translation is None


def test_no_axes_means_ngff_01_implicit_tczyx(tmp_path: Path) -> None:
    path = tmp_path / "old.ome.zarr"
    write_ome_zarr(path, ramp((1, 2, 3, 8, 8)), axes="tczyx", version="0.4", levels=1)
    spoil(path, lambda multiscale: multiscale.pop("axes"))
    multiscale = read_multiscale(attributes(path), str(path))
    assert multiscale is not None and multiscale.axes == ()
    five = multiscale.axes_for(5)
    assert five is not None and "".join(a.letter for a in five) == "TCZYX"
    assert multiscale.axes_for(3) is None
    assert open_volume(path, channel=1).shape == (3, 8, 8)  # read as TCZYX


def test_a_group_without_multiscales_gives_none(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    group.create_array("raw", shape=(4, 4), dtype="u1")
    group.attrs["ome"] = {"version": "0.5", "labels": ["cells"]}
    attrs = attributes(tmp_path / "plain.zarr")
    assert read_multiscale(attrs, "plain.zarr") is None
    assert read_multiscale({"multiscales": []}, "empty.zarr") is None
    assert not has_multiscales(attrs)
    assert ome_attributes(attrs) == {"version": "0.5", "labels": ["cells"]}
    assert ome_attributes({"multiscales": []}) == {"multiscales": []}


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda multiscale: multiscale.__setitem__(key, value)


def _dataset(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda multiscale: change(multiscale["datasets"][-1])


MALFORMED = [
    (lambda m: m.pop("datasets"), r"multiscales\[0\] lists no datasets"),
    (_set("datasets", []), r"multiscales\[0\] lists no datasets"),
    (_dataset(lambda d: d.pop("path")), r"datasets\[1\] has no path"),
    (_set("axes", "zyx"), r"axes must be a list of names or \{'name': \.\.\.\} objects, got 'zyx'"),
    (_set("axes", [{"name": "z"}, {"type": "space"}, "x"]), r"axes\[1\] is not a name"),
    (_set("axes", [1, 2, 3]), r"axes\[0\] is not a name"),
    (
        _dataset(
            lambda d: d.__setitem__(
                "coordinateTransformations", [{"type": "scale", "scale": [1, 2]}]
            )
        ),
        r"datasets\[1\] scale has 2 values for 3 axes",
    ),
    (
        _set("coordinateTransformations", [{"type": "translation", "translation": "0 0 0"}]),
        r"multiscales\[0\] translation must be a list of numbers",
    ),
]


@pytest.mark.parametrize("version", NGFF_VERSIONS)
@pytest.mark.parametrize(("change", "problem"), MALFORMED)
def test_malformed_metadata_name_the_store_in_one_line(
    tmp_path: Path, version: str, change: Callable[[dict[str, Any]], None], problem: str
) -> None:
    path = tmp_path / "bad.ome.zarr"
    write_ome_zarr(path, ramp((3, 8, 8)), axes="zyx", version=version, levels=2)
    spoil(path, change)
    assert has_multiscales(attributes(path))  # still an image: never taken for anything else
    with pytest.raises(ValueError, match=problem) as raised:
        read_multiscale(attributes(path), str(path))
    message = str(raised.value)
    assert message.startswith(f"{path}: malformed OME-Zarr metadata: ") and "\n" not in message
    # Every reader of images says the same.
    with pytest.raises(ValueError, match=problem):
        open_volume(path)
    with pytest.raises(ValueError, match=f"image='{path}': malformed OME-Zarr metadata: "):
        LabelsStore.create(tmp_path / "labels.zarr", (3, 8, 8), image=path)


def test_multiscales_that_are_not_a_list_are_malformed() -> None:
    with pytest.raises(ValueError, match=r"^x\.zarr: malformed .* a list of objects, got \{\}$"):
        read_multiscale({"ome": {"version": "0.5", "multiscales": {}}}, "x.zarr")
    with pytest.raises(ValueError, match="a list of objects, got"):
        read_multiscale({"multiscales": ["image"]}, "x.zarr")


def test_labels_store_reads_its_levels_through_the_reader(tmp_path: Path) -> None:
    image = tmp_path / "cells.ome.zarr"
    write_ome_zarr(image, ramp((3, 16, 16)), axes="zyx", levels=2)
    with LabelsStore.create(image, (3, 16, 16), image=image, chunks=(1, 8, 8)) as store:
        store.commit(np.ones((16, 16), bool), z=1)
    label = image / "labels" / "segany"
    multiscale = read_multiscale(attributes(label), str(label))
    assert multiscale is not None and multiscale.nested and multiscale.version == "0.5"
    assert [d.scale for d in multiscale.datasets] == [(1, 1, 1), (1, 2, 2)]
    assert multiscale.axes == tuple(Axis(a, "space", "micrometer") for a in "zyx")
