"""One writer at a time: a lock file created with ``O_CREAT | O_EXCL`` that names its owner.

The file holds the owner's host, pid and a random token. A lock whose process is gone (same
host, pid no longer running) is stale and is taken over; a lock held by a live process, or by
a process on another host (which cannot be checked from here), is refused with a message
that says who holds it and how to remove it if that process is really gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import weakref
from pathlib import Path

__all__ = [
    "StoreLockedError",
    "WriterLock",
    "refuse_if_locked",
]


class StoreLockedError(RuntimeError):
    """Another live process (or this one, through another object) writes to the store."""


class WriterLock:
    """An acquired writer lock on ``path``; :meth:`release` (or garbage collection) frees it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._token = uuid.uuid4().hex
        self._acquire()
        # Freed when the owner is garbage collected too, so a store dropped without
        # close() does not keep others out for the rest of the process's life.
        self._finalizer = weakref.finalize(self, _remove_if_ours, self.path, self._token)

    def release(self) -> None:
        """Free the lock (only if it is still ours); safe to call twice."""
        self._finalizer()

    def _acquire(self) -> None:
        content = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self._token,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        ).encode()
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_holder(self.path, patience=1.0)
                if holder is not None and _is_live(holder):
                    raise StoreLockedError(_held_message(self.path, holder)) from None
                self._take_over(holder)
                continue
            try:
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        raise StoreLockedError(
            f"could not take the writer lock {str(self.path)!r}: other processes keep taking it"
        )

    def _take_over(self, stale: dict | None) -> None:
        """Remove a stale lock without ever removing a fresh one another process just took."""
        moved = self.path.with_name(f"{self.path.name}.stale.{self._token}")
        try:
            # A rename succeeds for one process only, so two recovering at once do not race.
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        taken = _read_holder(moved)
        if stale is not None and taken is not None and taken.get("token") != stale.get("token"):
            # Between our read and the rename someone replaced the stale lock: give it back
            # (os.link never overwrites, so a third process's lock would stay).
            try:
                os.link(moved, self.path)
            except FileExistsError:
                pass
        moved.unlink(missing_ok=True)


def _remove_if_ours(path: Path, token: str) -> None:
    holder = _read_holder(path)
    if holder is not None and holder.get("token") == token:
        path.unlink(missing_ok=True)


def _read_holder(path: Path, patience: float = 0.0) -> dict | None:
    """The lock's owner, or None when the file is gone or unreadable.

    A lock file is empty for an instant between its creation and its write; ``patience``
    seconds of re-reading tell that apart from a file torn by a crash.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            holder = json.loads(path.read_text())
            return holder if isinstance(holder, dict) else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


def _is_live(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot check a process on another machine: assume it runs
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _held_message(path: Path, holder: dict) -> str:
    who = f"process {holder.get('pid')} on {holder.get('host')}"
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        who = "this process (another LabelsStore object; close() it first)"
    return (
        f"the labels store is open for writing by {who} since {holder.get('time')}; one writer "
        f"at a time. Open it with read_only=True to read, or, if that process is gone, delete "
        f"the lock file {str(path)!r}"
    )


def refuse_if_locked(path: Path) -> None:
    """Raise :class:`StoreLockedError` if a live process holds the lock at ``path``."""
    holder = _read_holder(path, patience=1.0)
    if holder is not None and _is_live(holder):
        raise StoreLockedError(_held_message(path, holder))
