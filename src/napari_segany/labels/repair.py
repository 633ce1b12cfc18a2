"""Damaged chunks of a label image, found and rebuilt from the store's journal.

Every change a labels store makes saves the whole box it changes, before and after
(:mod:`.journal`). A damaged full-resolution chunk is rebuilt by replaying, in the
journal's order, the saved boxes of the changes that finished: each sets every voxel of
its box. Voxels no saved box covers keep the value they had before the journal began
(background, for labels the journal created empty), unless a change whose box was pruned
(older than the undo history) or labels imported before the journal may have set them:
those are unknown and set to background, and the report counts them. A change a crash
interrupted is left out (the next writer rolls it back). Coarser levels are sampled again
from the rebuilt full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import zarr

from .. import damage
from .journal import History, Journal, JournalError, Region
from .layout import Box, Level, read_labels, sample_index

__all__ = ["LabelsDamage", "find_damage", "rebuild"]


@dataclass
class LabelsDamage:
    """The damaged chunks of one label image and, after :func:`rebuild`, what became of them.

    Attributes
    ----------
    chunks
        ``(level, chunk coordinates, why)`` of every damaged chunk.
    unreadable_regions
        Journal seqs whose saved boxes cannot be read (their zip checksum fails).
    unknown_voxels
        After a rebuild: voxels of rebuilt chunks whose value nothing recorded (set to 0).
    """

    chunks: list[tuple[int, tuple[int, ...], str]] = field(default_factory=list)
    unreadable_regions: list[int] = field(default_factory=list)
    unknown_voxels: int = 0


def find_damage(levels: list[Level], journal: Journal) -> LabelsDamage:
    """Read back every chunk of every level, and every saved box of the journal."""
    found = LabelsDamage()
    for n, level in enumerate(levels):
        found.chunks += [(n, c, why) for c, why in damage.damaged_chunks(level.array)]
    if journal.regions.is_dir():
        for path in sorted(journal.regions.glob("*.npz")):
            seq = int(path.name.split(".")[0])
            try:
                journal.load_region(seq)
            except Exception:  # zipfile.BadZipFile, a CRC error, a cut-short member, ...
                found.unreadable_regions.append(seq)
    return found


def rebuild(levels: list[Level], journal: Journal, found: LabelsDamage) -> None:
    """Rewrite the damaged chunks in ``found`` from the journal (see the module's text).

    Updates ``found.unknown_voxels``. The store must be locked for writing (or unused).
    """
    history, changes = _finished_changes(journal)
    known_zero = not history.existing and all(
        journal.has_region(target) and target not in found.unreadable_regions
        for _, target in changes
    )
    regions: dict[int, Region] = {}
    for level_index, chunk, _ in sorted(found.chunks):
        if level_index != 0:
            continue
        box = _chunk_box(levels[0].array, chunk)
        values = np.zeros(tuple(b - a for a, b in box), dtype=levels[0].array.dtype)
        known = np.zeros(values.shape, dtype=bool)
        for action, target in changes:
            if target in found.unreadable_regions or not journal.has_region(target):
                continue
            if target not in regions:
                regions[target] = journal.load_region(target)
            region = regions[target]
            overlap = _intersect(box, region.box)
            if overlap is None:
                continue
            new = region.before if action == "undo" else region.after
            values[_within(overlap, box)] = new[_within(overlap, region.box)]
            known[_within(overlap, box)] = True
        if not known_zero:
            found.unknown_voxels += int(np.count_nonzero(~known))
        _replace_chunk(levels[0].array, chunk, box, values)
    for level_index, chunk, _ in sorted(found.chunks):
        if level_index == 0:
            continue
        level = levels[level_index]
        box = _chunk_box(level.array, chunk)
        index = [
            sample_index(np.arange(a, b), f) for (a, b), f in zip(box, level.factors, strict=True)
        ]
        source = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
        base = read_labels(levels[0].array, source)
        values = base[np.ix_(*(i - i.min() for i in index))]
        _replace_chunk(level.array, chunk, box, values)


def _finished_changes(journal: Journal) -> tuple[History, list[tuple[str, int]]]:
    """The journal's finished changes in order: (action, seq of the saved box it used)."""
    if not journal.exists():
        raise JournalError(f"no journal in {journal.directory}: nothing to rebuild from")
    entries = journal.entries(repair=False)
    history = History(entries)
    changes, begun = [], None
    for entry in entries:
        if entry["op"] == "begin":
            begun = entry
        elif entry["op"] == "end" and begun is not None:
            changes.append((begun["action"], int(begun.get("target", begun["seq"]))))
            begun = None
        elif entry["op"] == "rollback":
            begun = None
    return history, changes


def _chunk_box(array: zarr.Array, chunk: tuple[int, ...]) -> Box:
    z, y, x = (
        (c * size, min((c + 1) * size, n))
        for c, size, n in zip(chunk, array.chunks, array.shape, strict=True)
    )
    return z, y, x


def _intersect(a: Box, b: Box) -> Box | None:
    z, y, x = ((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b, strict=True))
    out = (z, y, x)
    return None if any(lo >= hi for lo, hi in out) else out


def _within(inner: Box, outer: Box) -> tuple[slice, ...]:
    return tuple(slice(a - o, b - o) for (a, b), (o, _) in zip(inner, outer, strict=True))


def _replace_chunk(array: zarr.Array, chunk: tuple[int, ...], box: Box, values: np.ndarray) -> None:
    """Write a chunk whole; the damaged one is deleted first (zarr would read it to merge)."""
    damage.discard(array, chunk)
    array[tuple(slice(a, b) for a, b in box)] = values
