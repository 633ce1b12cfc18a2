"""The napari layers the widget works with: prompts in, preview and labels out.

Names the user sees: ``"<image> points"`` (positive points green, negative red),
``"<image> boxes"`` (yellow rectangles), ``"<image> preview"`` (the outlines, in magenta, of
what the current prompts give) and ``"<image> labels"`` (committed objects, filled in napari's
label colours, backed by the workspace's OME-Zarr labels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.colormaps import DirectLabelColormap
from scipy import ndimage

__all__ = [
    "NEGATIVE_COLOR",
    "POSITIVE_COLOR",
    "PREVIEW_COLOR",
    "SIGN",
    "FirstSlice",
    "add_session_layers",
    "color_points",
    "make_boxes",
    "make_labels",
    "make_points",
    "make_preview",
    "on_slice",
    "outline",
    "prompts_on_slice",
    "remove_prompts_on_slice",
    "set_sign",
    "show_preview",
    "slice_shape",
    "source_path",
    "unwrap",
]

POSITIVE_COLOR = np.array([0.1, 0.9, 0.2, 1.0])
NEGATIVE_COLOR = np.array([1.0, 0.15, 0.15, 1.0])
#: Every object of the preview, outlined: apart from the filled, many-coloured labels.
PREVIEW_COLOR = np.array([1.0, 0.0, 1.0, 1.0])
SIGN = "positive"


class FirstSlice:
    """A ``(Y, X)`` view of a ``(1, Y, X)`` array (a 2D image's labels store), writable."""

    def __init__(self, array: Any) -> None:
        self._array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def _key(self, key: Any) -> tuple:
        return (0, *(key if isinstance(key, tuple) else (key,)))

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._array[self._key(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._array[self._key(key)] = value

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.asarray(self._array[0])
        return out if dtype is None else out.astype(dtype)


def slice_shape(image: Image) -> tuple[int, int]:
    """``(Y, X)`` of the image's slices at full resolution."""
    shape = image.data[0].shape if image.multiscale else image.data.shape
    y, x = shape[-3:-1] if image.rgb else shape[-2:]
    return int(y), int(x)


def source_path(image: Image) -> str | None:
    """The file the image layer was opened from, if any."""
    path = getattr(image.source, "path", None)
    return str(path) if path else None


def unwrap(obj: Any) -> Any:
    """The object behind napari's public-only proxy (plugins get proxies of the viewer)."""
    return getattr(obj, "__wrapped__", obj)


def _geometry(image: Image) -> dict[str, Any]:
    return {"scale": tuple(image.scale), "translate": tuple(image.translate)}


def make_points(image: Image) -> Points:
    """An empty prompt-points layer over ``image``; new points are positive."""
    layer = Points(
        np.empty((0, image.ndim)),
        ndim=image.ndim,
        name=f"{image.name} points",
        features={SIGN: np.empty(0, dtype=bool)},
        face_color=POSITIVE_COLOR,
        border_color="white",
        size=max(4.0, min(slice_shape(image)) / 64),
        **_geometry(image),
    )
    layer.feature_defaults[SIGN] = True
    return layer


def color_points(points: Points | None) -> None:
    """Colour each point by its sign: positive green, negative red."""
    if points is None or not len(points.data):
        return
    signs = np.asarray(points.features[SIGN], dtype=bool)
    colors = np.where(signs[:, None], POSITIVE_COLOR, NEGATIVE_COLOR)
    if not np.array_equal(points.face_color, colors):
        points.face_color = colors


def set_sign(points: Points, positive: bool) -> None:
    """Make the next points positive (True) or negative (False)."""
    points.feature_defaults[SIGN] = positive
    points.current_face_color = POSITIVE_COLOR if positive else NEGATIVE_COLOR


def make_boxes(image: Image) -> Shapes:
    """An empty rectangles layer over ``image`` for box prompts."""
    layer = Shapes(
        ndim=image.ndim,
        name=f"{image.name} boxes",
        edge_color="yellow",
        face_color="transparent",
        edge_width=2,
        **_geometry(image),
    )
    return layer


def make_preview(image: Image) -> Labels:
    """A one-slice labels layer that shows the preview on the slice it belongs to.

    It draws every object in one colour (:data:`PREVIEW_COLOR`); given :func:`outline`
    labels, the preview never looks like committed labels, which napari fills in a colour
    per id.
    """
    yx = slice_shape(image)
    data = np.zeros((1, *yx) if image.ndim == 3 else yx, dtype=np.uint8)
    colormap = DirectLabelColormap(color_dict={None: PREVIEW_COLOR, 0: "transparent"})
    return Labels(data, name=f"{image.name} preview", colormap=colormap, **_geometry(image))


def outline(labels: np.ndarray) -> np.ndarray:
    """``(Y, X)`` labels kept only along each object's border (and the slice's edge).

    The border is a few screen pixels wide when the slice fills the canvas, whatever its
    size. Drawn by us rather than by napari's ``contour``: that one is several times
    slower on large slices and not drawn in 3D, where napari warns about it.

    Only the box around the objects, widened by the border's width, is filtered: beyond
    it every window holds background alone, so the result is the same as the whole
    slice's, in a fraction of the time when the objects are small (a 2048 x 2048 slice).
    """
    width = max(1, round(min(labels.shape[-2:]) / 256))
    out = np.zeros_like(labels)
    rows, cols = np.flatnonzero(labels.any(axis=1)), np.flatnonzero(labels.any(axis=0))
    if not len(rows):
        return out
    box = (
        slice(max(rows[0] - width, 0), rows[-1] + width + 1),
        slice(max(cols[0] - width, 0), cols[-1] + width + 1),
    )
    part = labels[box]
    around = {"size": 2 * width + 1, "mode": "constant", "cval": 0}
    border = ndimage.maximum_filter(part, **around) != ndimage.minimum_filter(part, **around)
    out[box] = np.where(border, part, 0)
    return out


def show_preview(preview_layer: Labels, image: Image, z: int, labels: np.ndarray | None) -> None:
    """Put ``labels`` (``(Y, X)``, None to clear) on slice ``z`` of the preview layer."""
    if image.ndim == 3:
        translate = list(image.translate)
        translate[0] = image.translate[0] + z * image.scale[0]
        if tuple(preview_layer.translate) != tuple(translate):
            preview_layer.translate = translate
        shape = preview_layer.data.shape[1:]
        preview_layer.data = np.zeros((1, *shape), np.uint8) if labels is None else labels[None]
    else:
        shape = preview_layer.data.shape
        preview_layer.data = np.zeros(shape, np.uint8) if labels is None else labels


def make_labels(image: Image, array: Any) -> Labels:
    """A Labels layer backed by the labels store's level-0 array (never copied whole)."""
    data = array if image.ndim == 3 else FirstSlice(array)
    return Labels(data, name=f"{image.name} labels", **_geometry(image))


def on_slice(coords: np.ndarray, z: int, ndim: int) -> np.ndarray:
    """Which rows of ``(N, ndim)`` coordinates lie on slice ``z`` (all of them in 2D)."""
    if ndim == 2 or len(coords) == 0:
        return np.ones(len(coords), dtype=bool)
    return np.round(coords[:, 0]).astype(int) == z


def prompts_on_slice(
    points: Points | None, boxes: Shapes | None, z: int, ndim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``(y, x)`` points, their signs and the ``(y0, x0, y1, x1)`` boxes on slice ``z``."""
    yx = np.empty((0, 2))
    signs = np.empty(0, dtype=bool)
    if points is not None and len(points.data):
        here = on_slice(points.data, z, ndim)
        yx = points.data[here][:, -2:]
        signs = np.asarray(points.features[SIGN], dtype=bool)[here]
    found = []
    if boxes is not None:
        for kind, vertices in zip(boxes.shape_type, boxes.data, strict=True):
            if kind != "rectangle" or not on_slice(vertices, z, ndim).all():
                continue
            y0, x0 = vertices[:, -2:].min(axis=0)
            y1, x1 = vertices[:, -2:].max(axis=0)
            found.append((y0, x0, y1, x1))
    return yx, signs, np.asarray(found, dtype=float).reshape(-1, 4)


def remove_prompts_on_slice(points: Points | None, boxes: Shapes | None, z: int, ndim: int) -> None:
    """Delete the prompts on slice ``z`` (after a commit: they are in the log now)."""
    if points is not None and len(points.data):
        here = np.flatnonzero(on_slice(points.data, z, ndim))
        if len(here):
            points.selected_data = set(here.tolist())
            points.remove_selected()
    if boxes is not None and len(boxes.data):
        boxed = [i for i, v in enumerate(boxes.data) if on_slice(v, z, ndim).all()]
        if boxed:
            boxes.selected_data = set(boxed)
            boxes.remove_selected()


def add_session_layers(
    viewer: Any, image: Image, labels: Any
) -> tuple[Labels, Labels, Shapes, Points]:
    """Add the layers of a session over ``image``: its labels, preview, boxes and points.

    A layer of the same name is replaced. ``labels`` is the labels store's level-0 array;
    the labels layer cannot be painted (objects change through commits, which are logged
    and undoable). The boxes and points layers are in add mode, ready for a click.
    """

    def add(layer: Any) -> Any:
        if layer.name in viewer.layers:
            viewer.layers.remove(layer.name)
        return viewer.add_layer(layer)

    labels_layer = add(make_labels(image, labels))
    labels_layer.editable = False
    preview, boxes, points = (
        add(make_preview(image)),
        add(make_boxes(image)),
        add(make_points(image)),
    )
    boxes.mode = "add_rectangle"  # after adding: the layer controls follow it then
    points.mode = "add"
    return labels_layer, preview, boxes, points
