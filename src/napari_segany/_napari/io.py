"""napari file contributions: open OME-Zarr images and labels, save labels as OME-Zarr.

The manifest's reader and writer commands point here; the work is done in
:mod:`.reader` (layers, lazily, with the layer metadata keys documented there) and
:mod:`.writer` (Labels layers to :class:`~napari_segany.labels.store.LabelsStore`).
"""

from __future__ import annotations

from .reader import METADATA_KEY, get_reader, read_ome_zarr
from .writer import write_labels

__all__ = ["METADATA_KEY", "get_reader", "read_ome_zarr", "write_labels"]
