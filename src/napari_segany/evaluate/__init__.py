"""Evaluation the field's way: interactive prompts then corrective clicks (mean IoU, mSA, NoC),
in 2D and through z.
"""

from __future__ import annotations

from .runs import InteractiveReport, PropagationReport, evaluate_in_3d, evaluate_interactive

__all__ = [
    "InteractiveReport",
    "PropagationReport",
    "evaluate_in_3d",
    "evaluate_interactive",
]
