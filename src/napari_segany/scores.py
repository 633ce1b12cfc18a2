"""How well instance labels match a ground truth: precision, recall and F1 at an IoU."""

from __future__ import annotations

import numpy as np


def instance_scores(found: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict:
    """Precision, recall and F1 of instance matching at IoU above ``threshold``.

    With ``threshold >= 0.5`` a match (IoU strictly above it) is one to one by
    construction, so no assignment is needed. Two empty label images score F1 = 1.
    """
    f, t = found.ravel().astype(np.int64), truth.ravel().astype(np.int64)
    f_ids, f_inv = np.unique(f, return_inverse=True)
    t_ids, t_inv = np.unique(t, return_inverse=True)
    both = np.zeros((f_ids.size, t_ids.size), dtype=np.int64)
    np.add.at(both, (f_inv, t_inv), 1)
    f_area, t_area = both.sum(axis=1), both.sum(axis=0)
    iou = both / (f_area[:, None] + t_area[None, :] - both)
    iou = iou[f_ids > 0][:, t_ids > 0]
    matches = int((iou > threshold).sum())
    n_found, n_truth = iou.shape
    precision = matches / max(n_found, 1)
    recall = matches / max(n_truth, 1)
    f1 = 2 * matches / (n_found + n_truth) if n_found + n_truth else 1.0
    return {"precision": precision, "recall": recall, "f1": f1, "matches": matches}
