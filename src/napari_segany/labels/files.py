"""Where labels go on disk: finding a label image, making a new one, replacing an old one.

Labels live at ``<root>/labels/<name>``. ``<root>`` is either the OME-Zarr image they label
or a store of their own whose root group holds only ``labels``. Existing data is replaced
only when asked, only if it is a zarr group, and never while another process writes to it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import zarr
import zarr.storage

from ..ome import has_multiscales
from .layout import NGFF_VERSION, create_label_group, image_geometry, json_attributes
from .lock import refuse_if_locked

__all__ = [
    "SIDECAR",
    "check_chunks",
    "check_history",
    "check_name",
    "check_replaceable_labels",
    "check_replaceable_store",
    "check_shape",
    "find_labels",
    "make_labels",
]

SIDECAR = "napari-segany"
"""Folder in the label image group holding the journal, saved regions and the writer lock."""


def make_labels(
    path: Path,
    shape: tuple[int, int, int],
    *,
    name: str,
    chunks: tuple[int, int, int],
    image: Path | None,
    overwrite: bool,
) -> tuple[Path, zarr.Group]:
    """Create empty labels as :meth:`LabelsStore.create` describes; returns root and group."""
    geometry, source = None, None
    if image is not None:
        geometry, image_group = image_geometry(image)
        if geometry.shapes[0] != shape:
            raise ValueError(
                f"shape {shape} does not match the image's (z, y, x) size {geometry.shapes[0]} "
                f"({str(image)!r})"
            )
    if image is not None and path.exists() and path.resolve() == image.resolve():
        if image_group.metadata.zarr_format != 3:
            raise ValueError(
                f"{str(image)!r} is OME-Zarr 0.4 (zarr v2): NGFF 0.5 labels cannot go inside "
                "it; give another path for a separate labels store"
            )
        root_group = zarr.open_group(zarr.storage.LocalStore(path), mode="r+")
        _clear_labels(path / "labels" / name, overwrite, what=f"labels {name!r} in {str(path)!r}")
        source = "../../"
    else:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            _clear_store(path, overwrite)
        root_group = zarr.open_group(zarr.storage.LocalStore(path), mode="w", zarr_format=3)
        root_group.attrs["ome"] = {"version": NGFF_VERSION}
        if geometry is not None:
            # Labels in a store of their own point back at their image and copy its
            # full-resolution scale; they keep one level (the pyramid rule is for labels
            # inside an image).
            assert image is not None
            rel = os.path.relpath(image.resolve(), (path / "labels" / name).resolve())
            source = Path(rel).as_posix() + "/"
            geometry = replace(
                geometry, shapes=geometry.shapes[:1], transforms=geometry.transforms[:1]
            )
    group = create_label_group(root_group, name, shape, chunks, geometry=geometry, source=source)
    return path, group


def find_labels(path: Path, name: str) -> tuple[Path, str]:
    """The root and name of the labels ``path`` and ``name`` point at.

    ``path`` may be the OME-Zarr holding ``labels/<name>`` or the label image group itself.
    """
    if (path / "labels" / name / "zarr.json").is_file():
        return path, name
    if _is_label_image(path):
        return path.parent.parent, path.name
    raise FileNotFoundError(_missing_message(path, name))


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(shape)
    if len(values) == 2:
        values = (1, *values)
    if len(values) != 3 or not all(_positive_int(n) for n in values):
        raise ValueError(f"shape must be (Z, Y, X) or (Y, X) positive integers, got {shape!r}")
    z, y, x = (int(n) for n in values)
    return z, y, x


def check_chunks(chunks: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(chunks)
    if len(values) != 3 or not all(_positive_int(n) for n in values):
        raise ValueError(f"chunks must be three positive integers (z, y, x), got {chunks!r}")
    z, y, x = (int(n) for n in values)
    return z, y, x


def check_name(name: str) -> str:
    if (
        not isinstance(name, str)
        or not name
        or "/" in name
        or name in (".", "..")
        or name.startswith("__")
    ):
        raise ValueError(f"name must be a plain group name such as 'segany', got {name!r}")
    return name


def check_history(history: int) -> int:
    if not (_positive_int(history) or (type(history) is int and history == 0)):
        raise ValueError(f"history must be a non-negative integer, got {history!r}")
    return int(history)


def _positive_int(n: object) -> bool:
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool) and bool(n > 0)


def _is_label_image(path: Path) -> bool:
    if not (path / "zarr.json").is_file():
        return False
    group = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r")
    ome = group.attrs.get("ome")
    return isinstance(ome, dict) and "image-label" in ome


def _missing_message(root: Path, name: str) -> str:
    if not root.exists():
        return f"no such OME-Zarr: {str(root)!r}"
    names: list[str] = []
    if (root / "labels" / "zarr.json").is_file():
        store = zarr.storage.LocalStore(root / "labels", read_only=True)
        attrs = json_attributes(zarr.open_group(store, mode="r"))
        names = list((attrs.get("ome") or {}).get("labels", []))
    there = f"label images there: {', '.join(names)}" if names else "it holds no labels"
    return f"no labels {name!r} in {str(root)!r} ({there})"


def _clear_labels(label_dir: Path, overwrite: bool, *, what: str) -> None:
    """Make room for new labels at ``label_dir``, deleting old ones only when allowed."""
    if check_replaceable_labels(label_dir, overwrite, what=what):
        shutil.rmtree(label_dir)


def check_replaceable_labels(label_dir: Path, overwrite: bool, *, what: str) -> bool:
    """Whether labels exist at ``label_dir``; raises unless they may be replaced."""
    if not label_dir.exists():
        return False
    if not overwrite:
        raise FileExistsError(f"{what} already exist; pass overwrite=True to replace them")
    if not (label_dir / "zarr.json").is_file():
        raise FileExistsError(f"{str(label_dir)!r} exists but is not a zarr group: not touching it")
    refuse_if_locked(label_dir / SIDECAR / "lock")
    return True


def _clear_store(root: Path, overwrite: bool) -> None:
    """Make room for a labels store of its own at ``root``, deleting only an old one."""
    check_replaceable_store(root, overwrite)
    shutil.rmtree(root)


def check_replaceable_store(root: Path, overwrite: bool) -> None:
    """Raise unless the existing ``root`` may be replaced by a labels store of its own."""
    if not overwrite:
        raise FileExistsError(
            f"{str(root)!r} already exists; pass overwrite=True to replace it, or "
            f"image={str(root)!r} to add labels to the OME-Zarr image there"
        )
    if not root.is_dir() or not (root / "zarr.json").is_file():
        raise FileExistsError(f"{str(root)!r} exists and is not a zarr store: not touching it")
    if json.loads((root / "zarr.json").read_text()).get("node_type") != "group":
        raise FileExistsError(
            f"{str(root)!r} is a zarr array, not a labels store: not touching it; give another path"
        )
    group = zarr.open_group(zarr.storage.LocalStore(root, read_only=True), mode="r")
    if has_multiscales(json_attributes(group)):
        raise FileExistsError(
            f"{str(root)!r} is an OME-Zarr image: pass image={str(root)!r} to add labels to it "
            "(overwrite=True replaces only a labels store of its own)"
        )
    # A labels store of its own holds its labels group and nothing else: any other zarr
    # data there (an embedding store, someone's arrays) is not ours to delete.
    others = sorted(p.name for p in root.iterdir() if p.name not in ("zarr.json", "labels"))
    if others or not _is_labels_group(root / "labels"):
        found = f" (it holds {', '.join(others[:3])})" if others else ""
        raise FileExistsError(
            f"{str(root)!r} is a zarr store but not a labels store{found}: not touching it; "
            "give another path"
        )
    for lock in (root / "labels").glob(f"*/{SIDECAR}/lock"):
        refuse_if_locked(lock)


def _is_labels_group(path: Path) -> bool:
    """Whether ``path`` is an OME-Zarr ``labels`` group (its ``ome.labels`` list)."""
    if not (path / "zarr.json").is_file():
        return False
    group = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r")
    attrs = json_attributes(group)
    return "labels" in (attrs.get("ome") or {}) or "labels" in attrs
