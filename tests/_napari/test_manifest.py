"""The npe2 manifest and its sample data, opened in a real napari viewer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from napari import Viewer
from napari.layers import Image, Labels
from npe2 import PluginManifest

from napari_segany.sample_data import coins, nuclei_volume

PLUGIN = "napari-segany"


def test_manifest_is_valid_and_importable() -> None:
    manifest = PluginManifest.from_distribution(PLUGIN)
    manifest.validate_imports()
    assert manifest.name == PLUGIN
    samples = {sample.key: sample.display_name for sample in manifest.contributions.sample_data}
    assert samples == {"coins": "Coins (2D)", "nuclei": "Synthetic nuclei (3D)"}


def _assert_screenshot_shows_something(viewer: Viewer) -> None:
    screenshot = viewer.screenshot(canvas_only=False, flash=False)
    assert screenshot.ndim == 3 and screenshot.shape[2] == 4
    assert screenshot.shape[0] > 100 and screenshot.shape[1] > 100
    assert np.ptp(screenshot[..., :3]) > 0
    # The canvas itself rendered the data (OpenGL works on this display), not a blank.
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    assert np.unique(canvas[..., :3]).size > 16


@pytest.mark.gui
def test_coins_sample_opens(make_napari_viewer: Callable[..., Viewer]) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "coins")

    assert [layer.name for layer in viewer.layers] == ["coins"]
    layer = viewer.layers["coins"]
    assert isinstance(layer, Image)
    np.testing.assert_array_equal(layer.data, coins())
    _assert_screenshot_shows_something(viewer)


@pytest.mark.gui
def test_nuclei_sample_opens(make_napari_viewer: Callable[..., Viewer]) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "nuclei")

    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei ground truth"]
    image, labels = nuclei_volume()
    image_layer, labels_layer = viewer.layers
    assert isinstance(image_layer, Image)
    assert isinstance(labels_layer, Labels)
    np.testing.assert_array_equal(image_layer.data, image)
    np.testing.assert_array_equal(labels_layer.data, labels)
    assert not labels_layer.visible
    # A z-stack: the viewer shows one slice at a time and can step through all of them.
    assert viewer.dims.ndim == 3
    assert viewer.dims.range[0].stop == image.shape[0] - 1
    _assert_screenshot_shows_something(viewer)
