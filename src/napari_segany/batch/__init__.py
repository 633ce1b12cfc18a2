"""Batch runs: automatic segmentation of many files, resumable, in this process or on dask
workers.
"""

from __future__ import annotations

from .segment import BatchResult, SchedulerUnreachableError, WorkerModelError, segment_files

__all__ = [
    "BatchResult",
    "SchedulerUnreachableError",
    "WorkerModelError",
    "segment_files",
]
