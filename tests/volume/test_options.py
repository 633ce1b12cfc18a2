"""VolumeOptions: the view of a source, carried to workers and into store signatures."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_segany as sg
from napari_segany.volume.options import VolumeOptions


def test_options_round_trip_through_json_and_refuse_unknown_names() -> None:
    options = VolumeOptions(axes="TCZYX", level=1, channel=2, time=0)
    assert VolumeOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    assert VolumeOptions.from_dict(None) == VolumeOptions.from_dict({}) == VolumeOptions()
    assert options.keywords() == {"axes": "TCZYX", "level": 1, "channel": 2, "time": 0}
    with pytest.raises(ValueError, match="unknown volume option\\(s\\) 'zoom'"):
        VolumeOptions.from_dict({"level": 0, "zoom": 2})


def test_a_volume_keeps_its_options_as_plain_ints_and_through_pickling(tmp_path: Path) -> None:
    path = tmp_path / "two-channels.tif"
    data = np.arange(3 * 2 * 16 * 16, dtype=np.uint16).reshape(3, 2, 16, 16)
    tifffile.imwrite(path, data, metadata={"axes": "ZCYX"})
    with sg.open_volume(path, channel=np.int64(1)) as volume:
        assert volume.options == VolumeOptions(channel=1)
        assert type(volume.options.channel) is int  # JSON-able, as a signature needs
        assert volume.opened_from == path
        again = pickle.loads(pickle.dumps(volume))
        assert again.options == volume.options
        np.testing.assert_array_equal(again[2], data[2, 1])
        again.close()
    view = data[:, 0]
    array = sg.open_volume(view)
    assert array.options == VolumeOptions() and array.opened_from is view
