"""How well instance labels match a ground truth: IoU of every pair of instances, F1 at one
IoU, and the segmentation accuracy the field reports (mSA over IoU 0.5:0.95).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

__all__ = [
    "SA_THRESHOLDS",
    "instance_scores",
    "iou_matrix",
    "paired_accuracy",
    "segmentation_accuracy",
    "split_components",
    "true_positives",
]

SA_THRESHOLDS = np.arange(0.5, 1.0, 0.05)
"""IoU thresholds of the mean segmentation accuracy: 0.5, 0.55, ..., 0.95 (as elf builds them)."""


def iou_matrix(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of every instance of ``found`` (rows) with every instance of ``truth`` (columns).

    Label 0 is background in both and has no row or column; rows and columns follow the
    instances' ids in increasing order.
    """
    f, t = found.ravel(), truth.ravel()
    f_ids, f_inv = np.unique(f, return_inverse=True)
    t_ids, t_inv = np.unique(t, return_inverse=True)
    pairs = f_inv.astype(np.int64) * t_ids.size + t_inv
    both = np.bincount(pairs, minlength=f_ids.size * t_ids.size).reshape(f_ids.size, t_ids.size)
    f_area, t_area = both.sum(axis=1), both.sum(axis=0)
    iou = both / (f_area[:, None] + t_area[None, :] - both)
    return iou[f_ids != 0][:, t_ids != 0]


def true_positives(iou: np.ndarray, threshold: float) -> int:
    """Pairs matched one to one with IoU of at least ``threshold``.

    The matching that pairs the most instances (IoU as tie-break) is found by linear
    assignment, as elf's ``mean_segmentation_accuracy`` does; at thresholds of 0.5 and
    above a pair is unambiguous anyway except at exactly 0.5.
    """
    if iou.size == 0 or not (iou >= threshold).any():
        return 0
    cost = -(iou >= threshold).astype(np.float64) - iou / (2 * min(iou.shape))
    rows, cols = linear_sum_assignment(cost)
    return int((iou[rows, cols] >= threshold).sum())


def segmentation_accuracy(
    found: np.ndarray, truth: np.ndarray, thresholds: np.ndarray = SA_THRESHOLDS
) -> np.ndarray:
    """Segmentation accuracy ``TP / (TP + FP + FN)`` at each IoU threshold.

    As in elf (and the DSB 2018 challenge) an accuracy is 0 when nothing is matched; the
    mean over :data:`SA_THRESHOLDS` is the mSA, the value at 0.5 the SA50.
    """
    iou = iou_matrix(found, truth)
    n_found, n_truth = iou.shape
    accuracy = np.zeros(len(thresholds))
    for i, threshold in enumerate(thresholds):
        tp = true_positives(iou, float(threshold))
        if tp:
            accuracy[i] = tp / (n_found + n_truth - tp)
    return accuracy


def paired_accuracy(ious: np.ndarray) -> np.ndarray:
    """Segmentation accuracy of masks each made for one known object, at every threshold.

    Each mask is paired with the object it was prompted for, so no matching is needed:
    at threshold t the k pairs with IoU >= t are true positives, and each other pair is
    one false positive (its mask) and one false negative (its object), so SA(t) =
    k / (k + 2 (n - k)). A better mask never lowers it.

    Parameters
    ----------
    ious
        ``(n, ...)`` IoU of each of n masks with its object.

    Returns
    -------
    numpy.ndarray
        ``(len(SA_THRESHOLDS), ...)``.
    """
    ious = np.asarray(ious, dtype=np.float64)
    n = ious.shape[0]
    hits = np.stack([(ious >= t - 1e-12).sum(axis=0) for t in SA_THRESHOLDS])
    return hits / np.maximum(2 * n - hits, 1)


def split_components(labels: np.ndarray) -> np.ndarray:
    """Each 4-connected (6- in 3D) piece of each instance as an instance of its own.

    micro-sam labels the connected components of its predictions (and, when it scores,
    of the ground truth) before matching; pixels of different ids never join.
    """
    ids, inverse = np.unique(labels, return_inverse=True)
    sequential = inverse.reshape(labels.shape).astype(np.int64)
    if ids[0] != 0:  # no background: ids start at 1 after shifting
        sequential += 1
    out = np.zeros(labels.shape, dtype=np.uint32)
    structure = ndimage.generate_binary_structure(labels.ndim, 1)
    count = 0
    for index, where in enumerate(ndimage.find_objects(sequential), start=1):
        if where is None:
            continue
        pieces, n = ndimage.label(sequential[where] == index, structure=structure)
        inside = pieces > 0
        out[where][inside] = pieces[inside] + count
        count += n
    return out


def instance_scores(found: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict:
    """Precision, recall and F1 of instance matching at IoU above ``threshold``.

    With ``threshold >= 0.5`` a match (IoU strictly above it) is one to one by
    construction, so no assignment is needed. Two empty label images score F1 = 1.
    """
    iou = iou_matrix(found, truth)
    matches = int((iou > threshold).sum())
    n_found, n_truth = iou.shape
    precision = matches / max(n_found, 1)
    recall = matches / max(n_truth, 1)
    f1 = 2 * matches / (n_found + n_truth) if n_found + n_truth else 1.0
    return {"precision": precision, "recall": recall, "f1": f1, "matches": matches}
