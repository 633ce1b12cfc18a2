"""Each slice's automatic objects, with slice-local ids, kept on disk until they are linked.

Layout of the zarr v3 group ``<name>.slices.zarr``::

    labels  (Z, Y, X) uint32, chunks one slice deep: each slice's objects, ids 1..n
    done    (Z,) uint8, one chunk per slice, set once the slice's labels are written
    attrs   what the slices depend on (model, parameters, source, tiles) and, once
            they are made, a record of the linked labels made from them

Every slice has chunks of its own, so processes on any machine write their slices at
once without conflict. Chunk writes are atomic (a temporary file renamed) and a slice is
marked done after its labels, so a run killed at any moment leaves each slice done and
valid, or not done: the next run segments only the others. Every chunk ends in a CRC-32C
checksum (:mod:`~napari_segany.damage`); a slice whose labels or flag are damaged counts as not
done.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .. import damage
from ..argument_errors import Fix, Setting
from ..automatic.params import AutomaticParams
from ..embeddings import StoreMismatchError
from ..staging import remove_leftovers, staging_path

__all__ = ["SliceStore", "slice_signature"]

FORMAT = "napari-segany.slices"
VERSION = 1
_CHUNK = 2048
"""Largest chunk side: a slice is written by one process, in one or more chunks."""
_LINKING = ("link_iou", "min_signal_ratio")
"""Parameters that only the linking uses: changing them relinks, it does not resegment."""


def slice_signature(embeddings: dict[str, Any], params: AutomaticParams) -> dict[str, Any]:
    """What each slice's objects depend on: the embeddings' model, preprocessing, tiles and
    source (from their store's signature) and the segmentation parameters."""
    source = embeddings["source"]
    signature = {
        "format": FORMAT,
        "version": VERSION,
        "model": {k: embeddings["model"][k] for k in ("name", "architecture", "sha256")},
        "preprocessing": embeddings["preprocessing"],
        "tiles": embeddings["tiles"],
        "source": {k: source[k] for k in ("shape", "dtype", "rgb", "fingerprint")},
        "params": {k: v for k, v in params.to_dict().items() if k not in _LINKING},
    }
    return json.loads(json.dumps(signature))  # as it reads back from the attributes


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    out = []
    for key in ("format", "version", "preprocessing", "tiles"):
        if stored.get(key) != wanted[key]:
            out.append(f"{key} differs")
    if stored.get("model", {}).get("sha256") != wanted["model"]["sha256"]:
        out.append(
            f"model {stored.get('model', {}).get('name')!r}, not {wanted['model']['name']!r}"
        )
    if stored.get("source") != wanted["source"]:
        out.append("the source changed")
    s_params, w_params = stored.get("params", {}), wanted["params"]
    for name in sorted(set(s_params) | set(w_params)):
        if s_params.get(name) != w_params.get(name):
            out.append(f"{name} {s_params.get(name)!r} (now {w_params.get(name)!r})")
    return out


class SliceStore:
    """Slice-local automatic labels of one volume, with a done flag per slice.

    Make or reopen one with :meth:`open_or_create` (checks what it was made from), or
    reopen it with :meth:`open`.

    Attributes
    ----------
    path
        The store's folder.
    signature
        What its slices were segmented from (see :func:`slice_signature`).
    """

    def __init__(self, group: zarr.Group, path: Path) -> None:
        self._group = group
        self.path = path
        self._labels = _array(group, "labels")
        self._done = _array(group, "done")
        self.signature = {k: v for k, v in group.attrs.items() if k != "linked"}

    def __repr__(self) -> str:
        return f"SliceStore({str(self.path)!r}, {int(self.done().sum())}/{len(self)} slices)"

    def __len__(self) -> int:
        return int(self._done.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` of the volume."""
        depth, height, width = (int(n) for n in self._labels.shape)
        return depth, height, width

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SliceStore:
        """Reopen an existing store for writing slices.

        Raises
        ------
        FileNotFoundError
            No store at ``path``.
        ValueError
            ``path`` holds something else.
        """
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(f"no slice store at {str(path)!r}")
        group = zarr.open_group(path, mode="r+")
        if group.attrs.get("format") != FORMAT:
            raise ValueError(f"{str(path)!r} is a zarr group but not a napari-segany slice store")
        return cls(group, path)

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        signature: dict[str, Any],
        *,
        recompute: bool = False,
    ) -> SliceStore:
        """The store at ``path`` for slices segmented as ``signature`` says: reopened when
        it matches, created when there is none.

        Parameters
        ----------
        path
            The store's folder.
        signature
            From :func:`slice_signature`; its source shape is the store's shape.
        recompute
            Replace a store made from another model, source or parameters.

        Raises
        ------
        StoreMismatchError
            The store holds slices made otherwise (and ``recompute`` is False); nothing
            is changed.
        ValueError
            ``path`` holds something that is not a slice store.
        """
        path = Path(path)
        if not (path / "zarr.json").is_file():
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise ValueError(f"{str(path)!r} exists and is not a slice store")
            _create_atomically(path, signature)
        store = cls.open(path)
        diffs = _differences(store.signature, signature)
        if not diffs:
            return store
        if not recompute:
            raise StoreMismatchError(
                f"the slices in {str(path)!r} were segmented otherwise: {'; '.join(diffs)}. "
                "Nothing was changed",
                fix=Fix(
                    (Setting("recompute"),),
                    then=" to recompute them, or choose another output folder",
                ),
            )
        shutil.rmtree(path)
        _create_atomically(path, signature)
        return cls.open(path)

    def done(self) -> np.ndarray:
        """Boolean ``(Z,)``: which slices are segmented (a damaged flag reads as not)."""
        return damage.flags(self._done)

    def missing(self, *, verify: bool = False) -> list[int]:
        """The slices not segmented yet, in order.

        With ``verify``, every done slice's labels are read back first, and those damaged
        are marked not done (so they are segmented again).
        """
        if verify:
            self.forget(self.damaged())
        return [int(z) for z in np.flatnonzero(~self.done())]

    def damaged(self) -> dict[int, str]:
        """The slices whose labels or done flag are damaged, and why."""
        out = {
            z: f"its done flag is damaged: {why}" for (z,), why in damage.damaged_chunks(self._done)
        }
        rows, cols = damage.grid_shape(self._labels)[1:]
        chunks = [
            (int(z), r, c)
            for z in np.flatnonzero(self.done())
            for r in range(rows)
            for c in range(cols)
        ]
        for (z, *_), why in damage.damaged_chunks(self._labels, chunks):
            out.setdefault(z, f"its labels are damaged: {why}")
        return dict(sorted(out.items()))

    def forget(self, slices: Iterable[int]) -> None:
        """Mark ``slices`` not segmented (their chunks deleted), so that the next run
        segments them again."""
        rows, cols = damage.grid_shape(self._labels)[1:]
        for z in slices:
            damage.discard(self._done, (z,))
            for r, c in itertools.product(range(rows), range(cols)):
                damage.discard(self._labels, (z, r, c))

    def is_done(self, z: int) -> bool:
        """Whether slice ``z`` is segmented."""
        return damage.flag(self._done, z)

    def write(self, z: int, labels: np.ndarray) -> None:
        """Store slice ``z``'s labels, then mark it done."""
        labels = np.asarray(labels)
        if labels.shape != self.shape[1:]:
            raise ValueError(f"slice labels of shape {labels.shape}, expected {self.shape[1:]}")
        self._labels[z] = labels.astype(np.uint32, copy=False)
        self._done[z] = 1  # after the labels: a crash never marks a slice done

    def read(self, z: int) -> np.ndarray:
        """Slice ``z``'s labels (slice-local ids; zeros for a slice not done)."""
        hint = f"`napari-segany check --repair {self.path}` segments it again"
        return np.asarray(
            damage.read(self._labels, z, store=f"the slice store {self.path}", hint=hint)
        )

    @property
    def linked(self) -> dict[str, Any] | None:
        """The record of the linked labels last made from these slices, or None."""
        record = self._group.attrs.get("linked")
        if not record:
            return None
        assert isinstance(record, Mapping), "mark_linked writes a JSON object"
        return dict(record)

    def mark_linked(self, record: dict[str, Any] | None) -> None:
        """Remember (or with None, forget) the linked labels made from these slices."""
        if record is None:
            self._group.attrs.pop("linked", None)
        else:
            self._group.attrs["linked"] = json.loads(json.dumps(record))


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of a slice store's group (every store made here has it as an array)."""
    node = group[name]
    assert isinstance(node, zarr.Array), f"{name} in a slice store is not an array"
    return node


def _create_atomically(path: Path, signature: dict[str, Any]) -> None:
    """Build the store beside ``path`` and rename it into place in one step, so that other
    processes see no store or a complete one (another process winning the race is fine)."""
    depth, height, width = (int(n) for n in signature["source"]["shape"])
    remove_leftovers(path)
    staging = staging_path(path)
    try:
        group = zarr.open_group(staging, mode="w-")
        group.create_array(
            "labels",
            shape=(depth, height, width),
            chunks=(1, min(height, _CHUNK), min(width, _CHUNK)),
            dtype="uint32",
            compressors=damage.default_compressors(),
            fill_value=0,
        )
        damage.create_done_flags(group, depth)
        group.attrs.update(signature)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.rmdir()  # an empty folder: rename needs the name free
        os.rename(staging, path)
    except OSError:
        if not (path / "zarr.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
