"""Staging folders: a store is built beside its final path and renamed into place, and the
folders of writers killed before the rename are removed by the next writer.

A staging folder is ``.<name>.<host>-<pid>-<token>.partial`` beside ``<name>``: the host
(a hash of its name) and process tell whether its writer still runs.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
import uuid
from pathlib import Path

__all__ = ["remove_leftovers", "staging_path"]


def _writer() -> str:
    """This process, as a staging folder names it: a hash of the host, and the pid."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f"{host}-{os.getpid()}"


def staging_path(path: Path) -> Path:
    """A new staging folder's path for ``path`` (beside it, so the rename stays on one disk)."""
    return path.parent / f".{path.name}.{_writer()}-{uuid.uuid4().hex[:12]}.partial"


def remove_leftovers(path: Path) -> list[Path]:
    """Remove the staging folders of ``path`` left by killed writers of this host.

    A folder whose process no longer runs on this host is a leftover. Folders of other
    hosts (a shared file system), of live processes, or named otherwise are left alone.
    Returns what was removed.
    """
    host = _writer().split("-")[0]
    removed = []
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        parts = leftover.name[len(path.name) + 2 : -len(".partial")].split("-")
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if _alive(int(parts[1])):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
