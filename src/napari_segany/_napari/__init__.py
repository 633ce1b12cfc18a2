"""The napari adapters: the Segment Anything widget and its layers, the reader and writer, the
sample data and the plugin manifest (``napari.yaml``).

Only these modules import napari or Qt; nothing here is imported by the engine.
"""

from __future__ import annotations

__all__ = []
