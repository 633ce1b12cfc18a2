"""LabelsStore: instance labels of a volume in OME-Zarr, committed object by object.

Labels are uint32 ids (0 is background) of a (Z, Y, X) volume, stored as an OME-Zarr label
image (NGFF 0.5 on zarr v3), either beside the image they label or in a store of their own.
Each :meth:`LabelsStore.commit` adds one object and rewrites only the chunks it touches;
commits can be undone and redone, every commit's record goes to an annotation log, and a
process killed mid-commit loses at most that object (see :mod:`.journal`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.storage

from .changes import Changes, ids_in, slices
from .export import write_tiff
from .files import (
    SIDECAR,
    check_chunks,
    check_history,
    check_name,
    check_shape,
    find_labels,
    make_labels,
)
from .from_array import import_labels
from .journal import Journal, JournalError, now
from .layout import DTYPE, Level, check_coarse_levels, open_levels, read_labels
from .lock import StoreLockedError
from .mask import check_z, object_region, record_to_json

__all__ = ["JournalError", "LabelsStore", "StoreLockedError"]

OVERLAP = ("keep", "overwrite")
MAX_ID = int(np.iinfo(DTYPE).max)


class LabelsStore:
    """Instance labels of a (Z, Y, X) volume in an OME-Zarr label image.

    Make one with :meth:`create` or :meth:`open`, not with the constructor.

    Attributes
    ----------
    path
        The OME-Zarr the labels are in (the image's, or a store of their own).
    name
        The label image's name: its data is ``path/labels/<name>``.
    shape
        ``(Z, Y, X)``; a 2D image has ``Z == 1``.
    chunks
        Chunk shape of the full-resolution array.
    read_only
        Whether commits, undo and redo are refused.
    """

    def __init__(self, *, path: Path, name: str, levels: list[Level], changes: Changes) -> None:
        self.path, self.name = path, name
        self._levels, self._changes = levels, changes
        self._closed = False
        self._scanned_top: int | None = None

    # -- making and opening -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        shape: Sequence[int],
        *,
        name: str = "segany",
        chunks: Sequence[int] = (1, 256, 256),
        image: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        history: int = 100,
    ) -> LabelsStore:
        """Create empty labels and open them for writing.

        Parameters
        ----------
        path
            Where the labels go. Without ``image``: a new OME-Zarr whose root group holds a
            ``labels`` group holding ``name``. When ``path`` is the OME-Zarr image ``image``
            itself, the labels go into ``<image>/labels/<name>`` with as many pyramid levels
            as the image. When both are given and differ, ``path`` is a new OME-Zarr whose
            labels name ``image`` as their source and copy its scale.
        shape
            ``(Z, Y, X)``, or ``(Y, X)`` for a 2D image (then ``Z == 1``). Must match the
            image's z, y, x sizes when ``image`` is given.
        name
            Name of the label image.
        chunks
            Chunk shape ``(z, y, x)``; one slice per chunk suits slice-wise annotation.
        image
            An OME-Zarr image (NGFF 0.5 to hold labels; 0.4 or 0.5 to be referred to).
        overwrite
            Replace existing labels of this name (or, standalone, the whole store at
            ``path``). Without it existing data is never touched.
        history
            How many commits can be undone; older ones stay but become permanent.

        Raises
        ------
        FileExistsError
            The labels (or the path) exist and ``overwrite`` is False, or ``path`` holds
            something that is not a labels store.
        ValueError
            Bad shape, chunks or name; a shape that does not match the image.
        StoreLockedError
            ``overwrite`` would replace labels another process is writing.
        """
        shape, chunks = check_shape(shape), check_chunks(chunks)
        depth = check_history(history)
        root, group = make_labels(
            Path(path).expanduser(),
            shape,
            name=check_name(name),
            chunks=chunks,
            image=None if image is None else Path(image).expanduser(),
            overwrite=overwrite,
        )
        levels = open_levels(group, str(root / "labels" / name))
        sidecar = root / "labels" / name / SIDECAR
        changes = Changes.writer(group, levels, sidecar, depth=depth, new=True)
        return cls(path=root, name=name, levels=levels, changes=changes)

    @classmethod
    def from_array(
        cls,
        path: str | os.PathLike[str],
        data: Any,
        *,
        name: str = "segany",
        chunks: Sequence[int] = (1, 256, 256),
        image: str | os.PathLike[str] | None = None,
        scale: Sequence[float] | None = None,
        translation: Sequence[float] | None = None,
        overwrite: bool = False,
        history: int = 100,
    ) -> LabelsStore:
        """Labels holding ``data``, e.g. a whole segmentation, opened for writing.

        Goes where :meth:`create` puts labels, under the same rules for what may be
        replaced. ``data`` (numpy, dask, zarr, any array-like) is read a band of chunks at a
        time and written beside ``path`` first: until the labels are complete nothing at
        ``path`` changes, so bad values or a crash leave what was there as it was (see
        :mod:`.from_array`). The ids in ``data`` count as already used; the new labels
        start with an empty log.

        Parameters
        ----------
        path, name, chunks, image, overwrite, history
            As for :meth:`create`.
        data
            Integer or bool ids, ``(Z, Y, X)`` or ``(Y, X)``; cast to uint32.
        scale, translation
            ``(z, y, x)`` or ``(y, x)`` physical pixel size and offset of a store of its own
            (with ``image`` they come from the image).

        Raises
        ------
        TypeError
            ``data`` is not integer or bool.
        ValueError
            Negative ids or ids above ``2**32 - 1``, and what :meth:`create` refuses.
        FileExistsError, StoreLockedError
            As for :meth:`create`.
        """
        path = Path(path).expanduser()
        import_labels(
            path,
            data,
            name=check_name(name),
            chunks=check_chunks(chunks),
            image=None if image is None else Path(image).expanduser(),
            scale=scale,
            translation=translation,
            overwrite=overwrite,
        )
        return cls.open(path, name=name, history=history)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str = "segany",
        read_only: bool = False,
        history: int = 100,
    ) -> LabelsStore:
        """Open existing labels: ours, or an OME-Zarr 0.5 label image written by another tool.

        Opening for writing takes the writer lock and first rolls back a change a crash
        interrupted, so the store holds exactly the objects whose commits finished.

        Parameters
        ----------
        path
            The OME-Zarr holding ``labels/<name>``, or the label image group itself.
        name
            Name of the label image.
        read_only
            Read without the lock; commits, undo and redo are refused. A change a crash
            interrupted stays visible until a writer opens the store.
        history
            How many commits can be undone.

        Raises
        ------
        FileNotFoundError
            No such labels (the message lists the label images there are).
        StoreLockedError
            Opening for writing while another live process writes.
        ValueError
            Not a (z, y, x) integer label image; writing needs uint32.
        """
        depth = check_history(history)
        root, name = find_labels(Path(path).expanduser(), name)
        label_dir = root / "labels" / name
        store = zarr.storage.LocalStore(root, read_only=read_only)
        group = zarr.open_group(store, path=f"labels/{name}", mode="r" if read_only else "r+")
        levels = open_levels(group, str(label_dir))
        if read_only:
            changes = Changes(group, levels, Journal(label_dir / SIDECAR), lock=None, depth=depth)
        elif levels[0].array.dtype != DTYPE:
            raise ValueError(
                f"{str(label_dir)!r} holds {levels[0].array.dtype} labels; LabelsStore writes "
                "uint32 (open it with read_only=True to read it)"
            )
        else:
            changes = Changes.writer(group, levels, label_dir / SIDECAR, depth=depth)
        return cls(path=root, name=name, levels=levels, changes=changes)

    def close(self) -> None:
        """Release the writer lock: reading still works, changes are refused. Safe to call twice."""
        if self._changes.lock is not None:
            self._changes.lock.release()
        self._closed = True

    def __enter__(self) -> LabelsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writable"
        return f"LabelsStore({str(self.path)!r}, name={self.name!r}, shape={self.shape}, {mode})"

    # -- reading --------------------------------------------------------------------------

    @property
    def array(self) -> zarr.Array:
        """The full-resolution ``(Z, Y, X)`` uint32 array, e.g. to back a napari layer.

        Read it freely; write objects through :meth:`commit` (direct writes bypass the
        log, undo and the lower pyramid levels).
        """
        return self._levels[0].array

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = (int(n) for n in self._levels[0].array.shape)
        return z, y, x

    @property
    def chunks(self) -> tuple[int, int, int]:
        z, y, x = (int(n) for n in self._levels[0].array.chunks)
        return z, y, x

    @property
    def read_only(self) -> bool:
        return self._changes.lock is None

    def read(self, z: int | None = None) -> np.ndarray:
        """Slice ``z`` as a (Y, X) array, or with ``z=None`` the whole (Z, Y, X) volume."""
        if z is None:
            return read_labels(self._levels[0].array, slice(None))
        return read_labels(self._levels[0].array, check_z(z, self.shape[0]))

    def read_region(
        self, zslice: slice | int, yslice: slice | int, xslice: slice | int
    ) -> np.ndarray:
        """The labels at ``[zslice, yslice, xslice]`` (ints drop their axis, as in NumPy)."""
        return read_labels(self._levels[0].array, (zslice, yslice, xslice))

    def next_id(self) -> int:
        """The id the next commit gets: 1 + the largest id ever committed or found.

        Ids are never handed out twice, not even after undo.
        """
        return max(self._changes.current().max_id, self._foreign_top()) + 1

    def _foreign_top(self) -> int:
        if self._changes.journal.exists():
            return 0  # the journal lists the ids that were there before it
        if self._scanned_top is None:  # labels of another tool opened read-only
            self._scanned_top = max(ids_in(self._levels[0].array), default=0)
        return self._scanned_top

    def log(self) -> list[dict[str, Any]]:
        """The annotation log: one entry per live (committed, not undone) object, in order.

        Each entry holds ``id``, ``z`` (first and last + 1 slice), ``bbox`` (``[[z0, z1],
        [y0, y1], [x0, x1]]``, stops exclusive), ``voxels`` (how many got the id),
        ``overlap``, ``time`` (UTC, ISO 8601) and ``record``: the dict given to commit.
        """
        return self._changes.current().log()

    def to_tiff(self, path: str | os.PathLike[str], *, imagej: bool = False) -> Path:
        """Write the labels to a TIFF file, one page per slice, never all in memory.

        Parameters
        ----------
        path
            The file to write (replaced if it exists).
        imagej
            False: a (Z, Y, X) uint32 TIFF with tifffile's shape metadata. True: an ImageJ
            hyperstack, which has no uint32, so uint16: refused when an id exceeds 65535.

        Returns
        -------
        Path
            The file written.
        """
        history = self._changes.current()
        top = max(max(history.live_ids() | history.existing, default=0), self._foreign_top())
        return write_tiff(self._levels[0].array, Path(path).expanduser(), imagej=imagej, top=top)

    # -- changing -------------------------------------------------------------------------

    def commit(
        self,
        mask: np.ndarray,
        *,
        label_id: int | None = None,
        z: int | None = None,
        overlap: str = "keep",
        record: dict[str, Any] | None = None,
    ) -> int:
        """Add one object; rewrites only the chunks its bounding box touches.

        Parameters
        ----------
        mask
            The object: bool ``(Y, X)`` on slice ``z``, or bool ``(Z, Y, X)`` through the
            volume (``z=None``). 0/1 integer or float arrays are accepted.
        label_id
            The object's id; None takes :meth:`next_id`. An id in use is refused:
            commit adds new objects, it does not extend existing ones.
        z
            The slice of a (Y, X) mask; may be omitted for a 2D image (``Z == 1``).
        overlap
            ``"keep"``: voxels already labelled keep their label, the object fills only
            background; ``"overwrite"``: the object wins.
        record
            JSON-able dict for the annotation log (prompts, model name and sha256,
            parameters); NumPy values are stored as JSON numbers and lists.

        Returns
        -------
        int
            The object's id.

        Raises
        ------
        ValueError
            Wrong mask shape, empty mask, values other than 0/1, z out of range, an id in
            use or out of range, unknown overlap, a record that is not JSON-able, or an
            object lying wholly under existing labels with ``overlap="keep"``.
        PermissionError
            The store is read-only.

        Nothing is written when an error is raised.
        """
        self._check_writable("commit")
        if overlap not in OVERLAP:
            raise ValueError(f"overlap must be one of {OVERLAP}, got {overlap!r}")
        box, inside = object_region(mask, z, self.shape)
        record_json = record_to_json(record)
        label_id = self._choose_id(label_id)
        self._changes.settle()
        check_coarse_levels(self._levels, box)
        before = read_labels(self._levels[0].array, slices(box))
        paint = inside if overlap == "overwrite" else inside & (before == 0)
        voxels = int(np.count_nonzero(paint))
        if voxels == 0:
            raise ValueError(
                "the object lies wholly under existing labels: with overlap='keep' nothing "
                "would be written (use overlap='overwrite' to replace them)"
            )
        after = before.copy()
        after[paint] = label_id
        seq = self._changes.history.last_seq + 1
        self._changes.journal.save_region(seq, box, before, after)
        begin = {
            "op": "begin",
            "seq": seq,
            "action": "commit",
            "id": label_id,
            "bbox": [list(b) for b in box],
            "voxels": voxels,
            "overlap": overlap,
            "time": now(),
            "record": record_json,
        }
        self._changes.apply(begin, box, after, before)
        return label_id

    def undo(self) -> int | None:
        """Revert the last commit, restoring the exact voxels it replaced.

        Returns the id of the object removed, or None when there is nothing to undo (undo
        reaches back ``history`` commits).

        Raises
        ------
        RuntimeError
            The object's region changed since its commit, outside this store.
        """
        self._check_writable("undo")
        return self._changes.step("undo")

    def redo(self) -> int | None:
        """Re-apply the last undone commit; None when there is none (a commit clears redo)."""
        self._check_writable("redo")
        return self._changes.step("redo")

    def _choose_id(self, label_id: int | None) -> int:
        if label_id is None:
            label_id = self.next_id()
            if label_id > MAX_ID:
                raise ValueError(f"no ids left: all ids up to {MAX_ID} have been used")
            return label_id
        if isinstance(label_id, bool) or not isinstance(label_id, (int, np.integer)):
            raise TypeError(f"label_id must be an integer, got {type(label_id).__name__}")
        label_id = int(label_id)
        if not 1 <= label_id <= MAX_ID:
            raise ValueError(f"label_id must be in 1..{MAX_ID} (0 is background), got {label_id}")
        if self._changes.history.in_use(label_id):
            raise ValueError(
                f"label id {label_id} is already in use in this store: commit() adds new "
                "objects only (adding voxels to an existing object is a separate operation); "
                f"leave label_id=None to get a new id ({self.next_id()})"
            )
        return label_id

    def _check_writable(self, what: str) -> None:
        if self._closed:
            raise ValueError(f"cannot {what}: the LabelsStore at {str(self.path)!r} is closed")
        if self.read_only:
            raise PermissionError(
                f"cannot {what}: the labels at {str(self.path)!r} were opened read-only "
                "(open them with read_only=False to change them)"
            )
