"""Prompts from the user's frame to the model's frame: the one place where axes swap.

Users give NumPy/napari order in image pixels: points ``(y, x)``, boxes
``(y0, x0, y1, x1)``. The networks take ``(x, y)`` in the resized model input.
"""

from __future__ import annotations

import numpy as np
import torch


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
