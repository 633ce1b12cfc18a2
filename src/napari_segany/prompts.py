"""Prompts from the user's frame to the model's frame: the one place where axes swap.

Users give NumPy/napari order in image pixels: points ``(y, x)``, boxes
``(y0, x0, y1, x1)``. The networks take ``(x, y)`` in the resized model input.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "as_tensor",
    "boxes_to_model",
    "mask_fraction",
    "mask_to_logits",
    "points_to_model",
]


def _scale_xy(original: tuple[int, int], resized: tuple[int, int]) -> np.ndarray:
    return np.array([resized[1] / original[1], resized[0] / original[0]], dtype=np.float64)


def points_to_model(
    points_yx: np.ndarray, original: tuple[int, int], resized: tuple[int, int]
) -> np.ndarray:
    """``(..., 2)`` points ``(y, x)`` in image pixels to ``(x, y)`` in model-input pixels."""
    pts = np.asarray(points_yx, dtype=np.float64)
    return pts[..., ::-1] * _scale_xy(original, resized)


def boxes_to_model(
    boxes_yxyx: np.ndarray, original: tuple[int, int], resized: tuple[int, int]
) -> np.ndarray:
    """``(..., 4)`` boxes ``(y0, x0, y1, x1)`` to ``(x0, y0, x1, y1)`` in model-input pixels."""
    boxes = np.asarray(boxes_yxyx, dtype=np.float64)
    corners = points_to_model(boxes.reshape(*boxes.shape[:-1], 2, 2), original, resized)
    return corners.reshape(boxes.shape)


def as_tensor(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A numpy array as a tensor on ``device`` (one copy)."""
    return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=device)


def mask_fraction(mask: np.ndarray, resized: tuple[int, int], frame: int = 1024) -> np.ndarray:
    """The share of each cell of the decoder's ``(256, 256)`` logit grid that a boolean
    image-sized mask covers, float32 in 0-1.

    The mask is taken to the model frame (resized bilinearly, zero-padded) and averaged
    over each grid cell.
    """
    from PIL import Image

    grid = frame // 4
    pil = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    in_frame = np.zeros((frame, frame), dtype=np.float32)
    resized_mask = np.asarray(pil.resize((resized[1], resized[0]), Image.Resampling.BILINEAR))
    in_frame[: resized[0], : resized[1]] = resized_mask / 255.0
    return in_frame.reshape(grid, 4, grid, 4).mean(axis=(1, 3))


def mask_to_logits(mask: np.ndarray, resized: tuple[int, int], frame: int = 1024) -> np.ndarray:
    """A boolean image-sized mask as the decoder's ``(256, 256)`` low-resolution logits.

    The covered fraction of each grid cell (:func:`mask_fraction`) turned into a logit,
    clipped at +-10 so a hand-drawn mask guides the decoder without saturating it.
    """
    eps = np.float32(1e-4)
    fraction = np.clip(mask_fraction(mask, resized, frame), eps, 1 - eps)
    return np.clip(np.log(fraction / (1 - fraction)), -10, 10).astype(np.float32)
