"""The ``napari-segany`` command (:func:`main`), one module per group of subcommands."""

from __future__ import annotations

from .main import main

__all__ = [
    "main",
]
