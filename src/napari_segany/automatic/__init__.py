"""Automatic segmentation: every object of a slice or a volume without prompts, linked
through z.
"""

from __future__ import annotations

from .learn import learn_params
from .params import MODES, AutomaticParams
from .segment import (
    SegmentationCancelled,
    SliceLinker,
    link_slices,
    segment_automatic,
    segment_slice,
)

__all__ = [
    "MODES",
    "AutomaticParams",
    "SegmentationCancelled",
    "SliceLinker",
    "learn_params",
    "link_slices",
    "segment_automatic",
    "segment_slice",
]
