"""PNG previews: an image with masks drawn over it, for reports and quick looks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "PALETTE",
    "overlay",
    "save_png",
]

#: Distinct colours for successive objects (RGB).
PALETTE = np.array(
    [(255, 160, 0), (0, 200, 255), (255, 60, 160), (120, 230, 60), (170, 120, 255)], dtype=np.uint8
)


def overlay(
    image: np.ndarray,
    masks: list[np.ndarray],
    *,
    points: np.ndarray | None = None,
    alpha: float = 0.4,
    zoom: int = 1,
) -> np.ndarray:
    """An RGB ``uint8`` picture: the grey/RGB image, each mask tinted and outlined.

    Parameters
    ----------
    image
        ``(H, W)`` or ``(H, W, 3)`` values in 0-255.
    masks
        Boolean ``(H, W)`` masks, one colour each.
    points
        ``(N, 2)`` ``(y, x)`` points to mark (e.g. the clicks that made the masks).
    alpha
        Opacity of the tint inside each mask.
    zoom
        Integer upscaling of the picture (nearest neighbour) for small images.
    """
    rgb = np.clip(np.asarray(image, dtype=np.float32), 0, 255)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    for i, mask in enumerate(masks):
        colour = PALETTE[i % len(PALETTE)].astype(np.float32)
        inside = np.asarray(mask, dtype=bool)
        rgb[inside] = (1 - alpha) * rgb[inside] + alpha * colour
        rgb[inside & ~ndimage.binary_erosion(inside)] = colour
    out = rgb.astype(np.uint8)
    if zoom > 1:
        out = out.repeat(zoom, axis=0).repeat(zoom, axis=1)
    if points is not None:
        for y, x in np.asarray(points, dtype=float).reshape(-1, 2):
            cy, cx, r = round(y * zoom), round(x * zoom), 2 * zoom
            out[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1] = (255, 255, 255)
            out[max(cy - r // 2, 0) : cy + r // 2 + 1, max(cx - r // 2, 0) : cx + r // 2 + 1] = 0
    return out


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """Write an RGB ``uint8`` array as a PNG file."""
    path = Path(path)
    Image.fromarray(picture).save(path)
    return path
