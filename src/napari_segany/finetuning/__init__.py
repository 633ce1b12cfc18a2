"""Learning from the user's labels: the decoder tuned on their objects, kept only when it
scores better on held-back ones.

Named ``finetuning`` so that the package does not shadow :func:`napari_segany.finetune`.
"""

from __future__ import annotations

from .run import FinetuneCancelled, FinetuneReport, finetune

__all__ = [
    "FinetuneCancelled",
    "FinetuneReport",
    "finetune",
]
