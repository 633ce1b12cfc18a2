"""The write-ahead journal of a labels store: every change, the regions it replaced, the log.

A change (commit, undo, redo) is made in four steps, each durable before the next:

1. the region it will change is saved as ``undo/<seq>.npz`` (its voxels before and after);
2. a ``begin`` line is appended to ``journal.jsonl`` and fsync'd;
3. the chunks are written;
4. an ``end`` line is appended and fsync'd.

A ``begin`` with no ``end`` after it is a change a crash interrupted: the next writer puts the
region back as it was (:meth:`History.pending`) and appends ``rollback``. The journal is
append-only JSON lines and also the annotation log: a commit's ``begin`` line holds the
caller's record verbatim with the id, region, overlap policy and time. The state (which
objects are live, what undo and redo do next) is the journal replayed: :class:`History`.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .layout import Box

__all__ = [
    "FORMAT",
    "JOURNAL",
    "REGIONS",
    "VERSION",
    "History",
    "Journal",
    "JournalError",
    "Region",
    "now",
]

FORMAT = "napari-segany.labels-journal"
VERSION = 1
JOURNAL = "journal.jsonl"
REGIONS = "undo"


class JournalError(RuntimeError):
    """The journal cannot be understood: edited by hand, or written by an unknown version."""


@dataclass(frozen=True)
class Region:
    """A saved region: the box and its level-0 voxels before and after one commit."""

    box: Box
    before: np.ndarray
    after: np.ndarray


class Journal:
    """The journal file and saved regions in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.file = self.directory / JOURNAL
        self.regions = self.directory / REGIONS

    def exists(self) -> bool:
        return self.file.is_file()

    def start(self, existing_ids: list[int]) -> None:
        """Begin a journal; ``existing_ids`` are ids already in the labels (never reused)."""
        self.regions.mkdir(parents=True, exist_ok=True)
        self.append(
            {
                "op": "init",
                "format": FORMAT,
                "version": VERSION,
                "existing_ids": existing_ids,
                "time": now(),
            }
        )

    def entries(self, *, repair: bool) -> list[dict[str, Any]]:
        """Every complete entry; a line torn by a crash at the end is ignored (and cut if
        ``repair``: appending after it would glue two entries together)."""
        data = self.file.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if repair and len(complete) < len(data):
            with open(self.file, "r+b") as f:
                f.truncate(len(complete))
                os.fsync(f.fileno())
        entries = []
        for number, line in enumerate(complete.splitlines(), start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                raise JournalError(f"{self.file}: line {number} is not JSON") from None
            if not isinstance(entry, dict) or "op" not in entry:
                raise JournalError(f"{self.file}: line {number} is not a journal entry")
            entries.append(entry)
        if not entries or entries[0].get("format") != FORMAT:
            raise JournalError(f"{self.file} is not a napari-segany labels journal")
        if entries[0].get("version", 0) > VERSION:
            raise JournalError(
                f"{self.file} was written by a newer napari-segany (journal version "
                f"{entries[0]['version']}); upgrade to write to this store"
            )
        return entries

    def append(self, entry: dict[str, Any]) -> None:
        """Append one line and wait until it is on disk."""
        line = (json.dumps(entry, separators=(",", ":"), allow_nan=False) + "\n").encode()
        fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write: a crash leaves the line whole or torn at the end
            os.fsync(fd)
        finally:
            os.close(fd)

    def save_region(self, seq: int, box: Box, before: np.ndarray, after: np.ndarray) -> None:
        """Save a region durably, under its final name only once complete."""
        final = self._region_file(seq)
        partial = final.with_name(f"{final.name}.{uuid.uuid4().hex}.partial")
        with open(partial, "wb") as f:
            # An .npz (np.load reads it) with fast deflate: labels compress well at level 1,
            # and a large 3D object's region is saved in a fraction of the default's time.
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as npz:
                for name, array in (
                    ("box", np.asarray(box, dtype=np.int64)),
                    ("before", before),
                    ("after", after),
                ):
                    with npz.open(f"{name}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.ascontiguousarray(array))
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, final)

    def load_region(self, seq: int) -> Region:
        # Opened here, not by np.load: a file that is not a zip would leave np.load's open.
        with open(self._region_file(seq), "rb") as f, np.load(f) as saved:
            z, y, x = ((int(a), int(b)) for a, b in saved["box"])
            return Region((z, y, x), saved["before"], saved["after"])

    def has_region(self, seq: int) -> bool:
        return self._region_file(seq).is_file()

    def prune(self, keep: set[int]) -> None:
        """Delete saved regions (and crash leftovers) no longer needed for undo or redo."""
        for path in self.regions.glob("*"):
            seq = path.name.split(".")[0]
            if path.name.endswith(".partial") or not seq.isdigit() or int(seq) not in keep:
                path.unlink(missing_ok=True)

    def _region_file(self, seq: int) -> Path:
        return self.regions / f"{seq:08d}.npz"


class History:
    """The store's state, replayed from the journal entries fed to it in order."""

    def __init__(self, entries: Iterable[dict[str, Any]] = ()) -> None:
        self.existing: set[int] = set()  # ids in the labels before the journal began
        self.commits: dict[int, dict[str, Any]] = {}  # seq -> begin entry, finished commits
        self.live: list[int] = []  # seqs of the commits whose objects are in the labels
        self.redo: list[int] = []  # seqs of undone commits, the next to redo last
        self.pending: dict[str, Any] | None = None  # a begun change with no end yet
        self.last_seq = 0
        self.max_id = 0
        self._live_ids: set[int] = set()
        for entry in entries:
            self.feed(entry)

    def feed(self, entry: dict[str, Any]) -> None:
        op = entry["op"]
        if op == "init":
            self.existing = {int(i) for i in entry.get("existing_ids", [])}
            self.max_id = max(self.existing, default=0)
        elif op == "begin":
            if self.pending is not None or entry["seq"] <= self.last_seq:
                raise JournalError(f"journal entry out of order: {entry}")
            self.pending, self.last_seq = entry, entry["seq"]
            if entry["action"] == "commit":
                # Counted at begin: an id is never handed out twice, even if rolled back.
                self.max_id = max(self.max_id, int(entry["id"]))
        elif op in ("end", "rollback"):
            if self.pending is None or self.pending["seq"] != entry["seq"]:
                raise JournalError(f"journal entry out of order: {entry}")
            if op == "end":
                self._finish(self.pending)
            self.pending = None
        else:
            raise JournalError(f"unknown journal entry: {entry}")

    def _finish(self, begin: dict[str, Any]) -> None:
        action, seq = begin["action"], begin["seq"]
        if action == "commit":
            self.commits[seq] = begin
            self.live.append(seq)
            self._live_ids.add(int(begin["id"]))
            self.redo.clear()
        elif action == "undo":
            target = self.live.pop()
            self._live_ids.discard(int(self.commits[target]["id"]))
            self.redo.append(target)
        elif action == "redo":
            target = self.redo.pop()
            self.live.append(target)
            self._live_ids.add(int(self.commits[target]["id"]))

    def log(self) -> list[dict[str, Any]]:
        """The annotation log: what each live commit's ``begin`` recorded, in commit order."""
        return [_log_entry(self.commits[seq]) for seq in self.live]

    def in_use(self, label_id: int) -> bool:
        """The id labels an object now (committed and not undone, or there before)."""
        return label_id in self._live_ids or label_id in self.existing

    def live_ids(self) -> set[int]:
        return set(self._live_ids)

    def managed_ids(self) -> set[int]:
        """Every id this journal ever committed."""
        return {int(c["id"]) for c in self.commits.values()}

    def needed_regions(self, depth: int) -> set[int]:
        """Seqs whose saved regions undo (``depth`` deep), redo or a rollback still need."""
        keep = set(self.live[-depth:] if depth > 0 else []) | set(self.redo)
        if self.pending is not None:
            keep.add(self.pending.get("target", self.pending["seq"]))
        return keep


def _log_entry(begin: dict[str, Any]) -> dict[str, Any]:
    bbox = [list(b) for b in begin["bbox"]]
    return {
        "id": begin["id"],
        "z": list(bbox[0]),
        "bbox": bbox,
        "voxels": begin["voxels"],
        "overlap": begin["overlap"],
        "time": begin["time"],
        # A copy: callers may change what they get without changing the history.
        "record": json.loads(json.dumps(begin["record"])),
    }


def now() -> str:
    """UTC time, ISO 8601 with milliseconds."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
