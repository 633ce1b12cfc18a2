"""Shared test configuration.

GUI tests (marker ``gui``) use a real napari viewer, which needs a real X
display with OpenGL: pytest-xvfb starts a virtual one (Xvfb) for the whole
run. Qt's ``offscreen`` platform cannot host napari's OpenGL canvas, so it is
refused here with a clear message instead of crashing or silently skipping.
napari's ``make_napari_viewer`` fixture comes from napari's own pytest plugin
(``napari.utils._testsupport``), registered through its entry point.
"""

from __future__ import annotations

import os
import sys

import pytest

_HEADLESS_QT_PLATFORMS = {"offscreen", "minimal", "vnc"}


def _display_problem() -> str | None:
    """Why the GUI tests cannot run here, or None when they can."""
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0].lower()
    if platform in _HEADLESS_QT_PLATFORMS:
        return (
            f"QT_QPA_PLATFORM={platform!r} cannot host napari's OpenGL canvas; "
            "unset it and let pytest-xvfb provide an X display"
        )
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return (
            "no display: install Xvfb (Debian/Ubuntu: apt-get install xvfb xauth) so that "
            "pytest-xvfb can start one, or run the tests under xvfb-run -a"
        )
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gui") is not None:
        problem = _display_problem()
        if problem is not None:
            pytest.fail(f"GUI test cannot run: {problem}", pytrace=False)
