"""Non-maximum suppression of candidate masks: keep the best of each group of duplicates.

Automatic segmentation prompts every object many times (several grid points fall in it,
each giving three candidates), so the same object comes back as many near-identical
masks. Greedy non-maximum suppression keeps the highest-scored mask and drops every
lower-scored one that overlaps it by at least a threshold, then repeats with the next
mask left. Two overlap measures: the IoU of the masks' bounding boxes (cheap, all pairs
at once, as SAM's automatic mask generator does) and the IoU of the masks themselves
(exact, for masks given as crops in their boxes).

Boxes are ``(y0, x0, y1, x1)`` in pixels, stops exclusive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["box_iou", "box_nms", "mask_iou", "mask_nms"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``(N, 4)`` with every box in ``b`` ``(M, 4)``: ``(N, M)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom - top, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _greedy(order: np.ndarray, overlaps: np.ndarray, threshold: float) -> np.ndarray:
    """Walk ``order`` (best first); keep an item unless it overlaps a kept one enough."""
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i] >= threshold
    return np.asarray(keep, dtype=np.int64)


def box_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS on box IoU, best score first.

    Parameters
    ----------
    boxes
        ``(N, 4)`` ``(y0, x0, y1, x1)``.
    scores
        ``(N,)``; ties keep the earlier box.
    threshold
        A box overlapping a kept, better box with IoU at least this is dropped.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    return _greedy(order, box_iou(boxes, boxes), threshold)


def mask_iou(
    box_a: Sequence[int], crop_a: np.ndarray, box_b: Sequence[int], crop_b: np.ndarray
) -> float:
    """IoU of two boolean masks, each given as a crop placed at its box."""
    y0, x0 = max(box_a[0], box_b[0]), max(box_a[1], box_b[1])
    y1, x1 = min(box_a[2], box_b[2]), min(box_a[3], box_b[3])
    area_a, area_b = int(crop_a.sum()), int(crop_b.sum())
    if y1 <= y0 or x1 <= x0:
        return 0.0
    part_a = crop_a[y0 - box_a[0] : y1 - box_a[0], x0 - box_a[1] : x1 - box_a[1]]
    part_b = crop_b[y0 - box_b[0] : y1 - box_b[0], x0 - box_b[1] : x1 - box_b[1]]
    inter = int(np.count_nonzero(part_a & part_b))
    union = area_a + area_b - inter
    return inter / union if union else 0.0


def mask_nms(
    boxes: np.ndarray, crops: Sequence[np.ndarray], scores: np.ndarray, threshold: float
) -> np.ndarray:
    """Indices of the masks kept by greedy NMS on mask IoU, best score first.

    Parameters
    ----------
    boxes
        ``(N, 4)`` tight boxes of the masks.
    crops
        ``N`` boolean masks, each of its box's shape.
    scores
        ``(N,)``; ties keep the earlier mask.
    threshold
        A mask overlapping a kept, better mask with IoU at least this is dropped.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(scores)
    overlaps = np.zeros((n, n))
    # only pairs whose boxes meet can overlap: compare those alone
    for i, j in zip(*np.nonzero(np.triu(box_iou(boxes, boxes) > 0, k=1)), strict=True):
        overlaps[i, j] = overlaps[j, i] = mask_iou(boxes[i], crops[i], boxes[j], crops[j])
    return _greedy(np.argsort(-scores, kind="stable"), overlaps, threshold)
