"""Images to the encoders' input: 8-bit levels, longest side resized to the model's size.

The official SAM pipeline resizes 8-bit images with PIL's bilinear filter (antialiased,
two passes with 8-bit rounding between them); doing exactly the same here keeps masks
identical to the reference's, where another kernel would flip ambiguous candidates.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .models import input_size

__all__ = [
    "model_input",
    "resize_longest_side",
    "to_uint8",
]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip values already scaled to 0-255 to ``uint8`` (no copy for uint8 input)."""
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError("the image holds NaN or infinite values")
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def resize_longest_side(image: np.ndarray, long_side: int = 1024) -> np.ndarray:
    """Resize a ``(H, W)`` or ``(H, W, 3)`` ``uint8`` image so its longest side is ``long_side``."""
    h, w = image.shape[:2]
    new_h, new_w = input_size((h, w), long_side)
    if (new_h, new_w) == (h, w):
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))


def model_input(image: np.ndarray, long_side: int = 1024) -> np.ndarray:
    """A ``(h, w, 3)`` uint8 RGB image with the longest side resized to ``long_side``.

    Parameters
    ----------
    image
        ``(H, W)`` grey or ``(H, W, 3)`` RGB, values in 0-255 (uint8 or float).
    long_side
        The model's input size.
    """
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected a (H, W) grey or (H, W, 3) RGB image, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"the image is empty: shape {array.shape}")
    resized = resize_longest_side(to_uint8(array), long_side)
    if resized.ndim == 2:  # grey: resize once, then the three identical channels
        resized = np.repeat(resized[:, :, None], 3, axis=2)
    elif not resized.flags.writeable:  # PIL's (or a reader's) buffer: torch cannot share it
        resized = resized.copy()
    return resized
