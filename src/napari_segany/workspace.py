"""Where an annotation session keeps its embeddings and labels.

Every image gets a workspace folder: beside its file (``<file>.segany/``) when the image
came from a file whose folder can be written, otherwise in the cache
(``<cache>/sessions/<fingerprint>/``, see :func:`napari_segany.weights.cache_dir`; the
environment variable ``NAPARI_SEGANY_SESSIONS`` names another folder for these). The
fingerprint is the volume's content signature, so the same data opened again, from a file
or pasted from memory, finds its earlier embeddings and labels. Nothing is ever written
into the user's own image files.
"""

from __future__ import annotations

import os
from pathlib import Path

from .naming import model_tag

__all__ = [
    "LABELS",
    "SESSIONS_ENV",
    "SUFFIX",
    "embeddings_name",
    "workspace_for",
]

SUFFIX = ".segany"
SESSIONS_ENV = "NAPARI_SEGANY_SESSIONS"
LABELS = "labels.ome.zarr"


def embeddings_name(model_name: str) -> str:
    """The embedding store's folder name inside a workspace, one per model.

    The model is named by :func:`napari_segany.naming.model_tag`, as batch outputs are.
    Stores named by the rule before it (``embeddings-tuned.pth.zarr``) are still found, by
    their encoder (:meth:`napari_segany.session.Session.open`).
    """
    return f"embeddings-{model_tag(model_name)}.zarr"


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def workspace_for(source: str | os.PathLike[str] | None, fingerprint: str) -> Path:
    """The workspace folder for an image (not created here).

    Parameters
    ----------
    source
        The image's file or folder (e.g. a napari layer's ``source.path``), or None for
        data without one.
    fingerprint
        :attr:`napari_segany.Volume.fingerprint` of the image.
    """
    if source is not None:
        path = Path(source).expanduser().resolve()
        beside = path.with_name(path.name + SUFFIX)
        if _writable(beside):
            return beside
    override = os.environ.get(SESSIONS_ENV)
    if override:
        return Path(override).expanduser() / fingerprint[:24]
    from .weights import cache_dir

    return cache_dir() / "sessions" / fingerprint[:24]
