"""How our outputs and stores are named after their source: every naming rule, once.

``stack.tif``, ``stack.ome.tif`` and ``stack.ome.zarr`` are all ``stack``; a batch run writes
``stack.embeddings-<model>.zarr``, ``stack.slices.zarr``, ``stack.labels.ome.zarr`` and
``stack.labels.tif`` (see :mod:`.batch.files`). Light: the command line imports it at start.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "LABELS_SUFFIX",
    "LABELS_TIFF_SUFFIX",
    "SLICES_SUFFIX",
    "SOURCE_SUFFIXES",
    "embeddings_name",
    "model_tag",
    "output_name",
    "source_name",
]

SOURCE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".btf")
"""Suffixes dropped from a source's name to name its outputs (the longest first)."""

LABELS_SUFFIX = ".labels.ome.zarr"
"""A batch run's labels: ``<name>.labels.ome.zarr``."""

LABELS_TIFF_SUFFIX = ".labels.tif"
"""The same labels as a TIFF, when asked for."""

SLICES_SUFFIX = ".slices.zarr"
"""A batch run's per-slice objects: ``<name>.slices.zarr``."""


def source_name(source: str | os.PathLike[str]) -> str:
    """A source's name less its image suffix: ``stack.ome.tif`` gives ``stack``."""
    name = Path(os.path.abspath(os.fspath(source))).name
    for suffix in SOURCE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def model_tag(model_name: str) -> str:
    """A model name fit for a file name: ``mobile_sam``; ``my_sam.pth`` gives ``my_sam``."""
    stem = Path(model_name).stem if Path(model_name).suffix in (".pt", ".pth") else model_name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "model"


def embeddings_name(name: str, model_name: str) -> str:
    """The embedding store of ``name``'s source for a model: ``<name>.embeddings-<tag>.zarr``."""
    return f"{name}.embeddings-{model_tag(model_name)}.zarr"


def output_name(path: str | os.PathLike[str]) -> str:
    """The name an output store was made for: ``cells.labels.ome.zarr`` gives ``cells``."""
    name = Path(path).name
    for suffix in (LABELS_SUFFIX, ".ome.zarr", ".zarr"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name
