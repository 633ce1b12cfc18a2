"""Tile windows of large slices, and the window that serves a prompt."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segany.tiling import TileGrid, tile_grid


def test_small_slices_are_not_tiled() -> None:
    grid = tile_grid((1500, 1200))
    assert not grid.tiled and grid.windows == ((0, 0, 1500, 1200),)


@pytest.mark.parametrize("shape", [(2048, 2048), (1600, 5000), (900, 4000), (3001, 1999)])
def test_windows_cover_the_slice_with_the_halo_overlap(shape: tuple[int, int]) -> None:
    grid = tile_grid(shape, tile_size=1024, halo=128)
    covered = np.zeros(shape, dtype=np.uint8)
    for y0, x0, y1, x1 in grid.windows:
        assert 0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]
        assert y1 - y0 == min(1024, shape[0]) and x1 - x0 == min(1024, shape[1])
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    # every pixel is at least `halo` deep inside some window (or on the slice border)
    for y, x in np.random.default_rng(0).integers(0, shape, size=(300, 2)):
        best = grid.window_for_point(y, x)
        assert grid.depth(best, y, x) >= 128


def test_point_goes_to_the_window_it_is_deepest_in() -> None:
    grid = tile_grid((2048, 2048), tile_size=1024, halo=128)
    index = grid.window_for_point(1000, 1010)
    y0, x0, y1, x1 = grid.windows[index]
    assert y0 + 128 <= 1000 < y1 - 128 and x0 + 128 <= 1010 < x1 - 128


def test_box_goes_to_a_window_that_holds_it_whole() -> None:
    grid = tile_grid((2048, 2048), tile_size=1024, halo=128)
    box = (800.0, 800.0, 1000.0, 1010.0)  # crosses the first window's core border (896)
    y0, x0, y1, x1 = grid.windows[grid.window_for_box(box)]
    assert y0 <= box[0] and x0 <= box[1] and box[2] <= y1 and box[3] <= x1
    huge = (10.0, 10.0, 2000.0, 2000.0)  # fits no window: the centre decides
    assert grid.window_for_box(huge) == grid.window_for_point(1005, 1005)


def test_grid_round_trips_through_attributes() -> None:
    grid = tile_grid((2500, 3100), tile_size=1024, halo=100)
    assert TileGrid.from_attrs(grid.to_attrs()) == grid


def test_bad_tiling_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="twice the halo"):
        tile_grid((4000, 4000), tile_size=200, halo=100)
    with pytest.raises(ValueError, match="empty slice"):
        tile_grid((0, 10))
