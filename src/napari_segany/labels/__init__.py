"""Labels: instance labels of a volume in OME-Zarr, committed object by object, with a journal
for undo, redo, crash safety and repair.
"""

from __future__ import annotations

from .store import JournalError, LabelsStore, StoreLockedError

__all__ = [
    "JournalError",
    "LabelsStore",
    "StoreLockedError",
]
