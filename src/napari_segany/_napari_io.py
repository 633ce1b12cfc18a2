"""napari file contributions: open OME-Zarr images and labels, save labels as OME-Zarr.

The manifest's reader and writer commands point here; the work is done in
:mod:`._napari_reader` (layers, lazily, with the layer metadata keys documented there) and
:mod:`._napari_writer` (Labels layers to :class:`~napari_segany.labels.LabelsStore`).
"""

from __future__ import annotations

from ._napari_reader import METADATA_KEY, get_reader, read_ome_zarr
from ._napari_writer import write_labels

__all__ = ["METADATA_KEY", "get_reader", "read_ome_zarr", "write_labels"]
