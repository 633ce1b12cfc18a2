"""Make the screenshots of docs/napari.md: the Segment Anything widget at work.

Run from the repository root, with a display (a virtual one will do)::

    xvfb-run -a python docs/screenshots.py

It opens the bundled nuclei volume, starts the widget with the default model, commits one
nucleus, places a point and a box on two more (screenshot 1: the preview beside a
committed object), commits them, carries a fourth nucleus through z (screenshot 2: the
committed labels) and writes ``docs/images/*.png``. The session's embeddings and labels go
to a temporary folder, not the user's cache.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import napari

IMAGES = Path(__file__).resolve().parent / "images"
WINDOW = (1400, 860)
ANGLES = (0.0, 25.0, 45.0)  # camera (roll, elevation, azimuth) of the 3D screenshot
MAX_BYTES = 300_000
TIMEOUT = 300.0  # s: the encoder takes ~1-3 s per slice on a small CPU


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Run the Qt event loop until ``condition()`` holds (workers report through it)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        QApplication.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 0.5) -> None:
    """Let napari redraw for a while (the canvas paints on the event loop)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def nuclei_by_size(truth: np.ndarray, z: int) -> list[int]:
    """Ground-truth ids on slice ``z``, largest first."""
    ids, counts = np.unique(truth[z][truth[z] > 0], return_counts=True)
    return [int(i) for i in ids[np.argsort(-counts)]]


def centre(mask: np.ndarray) -> tuple[float, float]:
    """The centroid ``(y, x)`` of a 2D mask."""
    y, x = np.argwhere(mask).mean(axis=0)
    return float(y), float(x)


def save(viewer: napari.Viewer, path: Path) -> None:
    """Screenshot the whole window to ``path``; fewer colours, then smaller, when too big."""
    from PIL import Image

    # Long enough for the dock to lay out wrapped text again (a 3D canvas repaints slowly).
    settle(2.0)
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    rgb = Image.fromarray(np.asarray(pixels)).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = rgb
    image.save(path, optimize=True)
    while path.stat().st_size > MAX_BYTES:
        if image is not rgb:  # already a palette: smaller then
            rgb = rgb.resize((rgb.width * 7 // 8, rgb.height * 7 // 8), Image.LANCZOS)
        # A palette keeps the text sharp, unlike resizing; tried first.
        image = rgb.quantize(colors=256, dither=Image.Dither.NONE)
        image.save(path, optimize=True)
    print(f"wrote {path} ({image.width}x{image.height}, {path.stat().st_size // 1024} KB)")


def main() -> int:
    import napari

    sessions = tempfile.TemporaryDirectory(prefix="segany-screenshots-")
    os.environ["NAPARI_SEGANY_SESSIONS"] = sessions.name

    viewer = napari.Viewer(show=True, title="napari-segany")
    viewer.window._qt_window.resize(*WINDOW)
    viewer.open_sample("napari-segany", "nuclei")
    truth = np.asarray(viewer.layers["nuclei ground truth"].data)
    viewer.dims.axis_labels = ("z", "y", "x")
    camera = getattr(viewer, "scene", viewer).camera  # napari >= 0.9 moved it to the scene
    # The dock as napari sizes it, as a user first sees it (not widened for the picture).
    _, widget = viewer.window.add_plugin_dock_widget("napari-segany", "Segment Anything")
    try:
        widget.image_combo.setCurrentText("nuclei")
        widget.start()
        started = widget.start_button.isEnabled  # again, once the worker is done
        wait_until(lambda: widget.session is not None or started(), "the session")
        if widget.session is None:
            raise RuntimeError(widget.status.text())
        z = widget._current_z()
        # The slice on screen, then its neighbours: wait for all, for a steady picture.
        wait_until(lambda: widget.session.is_embedded(z), f"slice {z}'s embedding")
        wait_until(lambda: widget._embed_worker is None, "the neighbours' embeddings")

        # Screenshot 1: one nucleus committed, then a point on another and a box around a
        # third: the preview (outlined) beside the committed labels (filled).
        first, second, third, fourth, *_ = nuclei_by_size(truth, z)
        widget.points.add([z, *centre(truth[z] == first)])
        wait_until(lambda: widget.preview is not None, "the preview of the first nucleus")
        if len(widget.commit()) != 1:
            raise RuntimeError(f"the commit failed: {widget.status.text()}")
        widget.points.add([z, *centre(truth[z] == second)])
        (y, x) = np.nonzero(truth[z] == third)
        y0, y1, x0, x1 = y.min() - 3, y.max() + 3, x.min() - 3, x.max() + 3
        corners = [[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]]  # 3D: all four
        widget.boxes.add_rectangles(np.array(corners, dtype=float))
        wait_until(
            lambda: widget.preview is not None and len(widget.preview.predictions) == 2,
            "the preview",
        )
        points = viewer.layers["nuclei points"]
        viewer.layers.selection.active = points
        save(viewer, IMAGES / "widget-preview.png")

        if len(widget.commit()) != 2:
            raise RuntimeError(f"the commit failed: {widget.status.text()}")

        # Screenshot 2: a fourth nucleus carried through z, all objects committed.
        widget.points.add([z, *centre(truth[z] == fourth)])
        wait_until(lambda: widget.preview is not None, "the preview of the fourth nucleus")
        widget.propagate()
        wait_until(lambda: widget._propagate_worker is None, "the propagation", 3 * TIMEOUT)
        # In 3D: the committed objects are flat (one slice), the propagated one is not.
        labels = viewer.layers["nuclei labels"]
        if np.count_nonzero(np.asarray(labels.data[:]) == 4) <= (truth[z] == fourth).sum():
            raise RuntimeError(f"the propagation failed: {widget.status.text()}")
        viewer.layers.selection.active = labels
        for name in ("nuclei points", "nuclei boxes", "nuclei preview"):
            viewer.layers[name].visible = False
        image = viewer.layers["nuclei"]
        image.rendering, image.opacity = "mip", 0.6
        viewer.dims.ndisplay = 3
        camera.angles = ANGLES
        save(viewer, IMAGES / "widget-committed.png")
    finally:
        widget.close_session()
        viewer.close()
        sessions.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
