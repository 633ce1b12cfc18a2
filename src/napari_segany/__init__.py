"""napari-segany: Segment Anything for large microscopy volumes."""

__version__ = "0.1.0"
