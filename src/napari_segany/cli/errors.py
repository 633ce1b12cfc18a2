"""Errors said in the command's own words: one line on stderr, the subcommand's options
for the API's arguments, the user's paths for our files, ``--debug`` for the traceback."""

from __future__ import annotations

import errno
import os
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..argument_errors import ArgumentError
from ..weights import UnknownModelError, WeightsError

if TYPE_CHECKING:
    pass

__all__ = [
    "PACKAGE",
    "RUN",
    "Run",
    "describe",
    "fail",
    "is_expected",
    "is_read_only",
    "unwritable",
]


PACKAGE = __name__.split(".")[0]


_EXPECTED = (WeightsError, UnknownModelError, ArgumentError, OSError)
"""Errors the user can fix, from any subcommand: said without the hint about --debug."""


def is_expected(error: Exception) -> bool:
    """An error the user can fix; a damaged chunk names the command that repairs it (its
    module is loaded only where a store was read, so it is looked up, not imported)."""
    damage = sys.modules.get(f"{PACKAGE}.damage")
    return isinstance(error, _EXPECTED) or (
        damage is not None and isinstance(error, damage.DamagedChunkError)
    )


@dataclass(frozen=True)
class Run:
    """How the running subcommand speaks: its options by the API's argument names."""

    options: dict[str, str]
    debug: bool = False


RUN: ContextVar[Run | None] = ContextVar("napari_segany_cli_run", default=None)


def fail(
    problem: BaseException | str,
    *,
    path: str | os.PathLike[str] | None = None,
    doing: str = "",
    note: str = "",
) -> int:
    """Say ``problem`` on stderr in one line; the exit status 1.

    Parameters
    ----------
    problem
        An exception (said in the subcommand's words, see :func:`describe`) or a message.
        With ``--debug`` an exception is raised again instead, traceback and all.
    path, doing
        The user's path that an OSError is about and what was done with it, e.g. ``doing=
        "cannot write the embedding store"``: see :func:`describe`.
    note
        Said after the problem, in parentheses (what was kept, ...).
    """
    run = RUN.get()
    if isinstance(problem, BaseException):
        if run is not None and run.debug:
            raise problem
        problem = describe(problem, path=path, doing=doing)
    if note:
        problem = f"{problem} ({note})"
    print(f"napari-segany: error: {_one_line(problem)}", file=sys.stderr)
    return 1


def describe(
    error: BaseException, *, path: str | os.PathLike[str] | None = None, doing: str = ""
) -> str:
    """An error in the running subcommand's words.

    An :class:`~napari_segany.argument_errors.ArgumentError` names the subcommand's options
    (``--time 3``, ``use --recompute``) and drops a fix that has none. An OSError says the
    problem in words (read-only file system, no space left, ...) and names ``path``, the
    user's path it is about, rather than a file of ours inside or beside it (a store's
    chunk, a staging folder); ``doing`` starts the line (``cannot write the store``).
    """
    if isinstance(error, ArgumentError):
        run = RUN.get()
        return error.said(run.options.get if run is not None else None)
    if isinstance(error, OSError):
        return _os_error(error, path, doing)
    return str(error) or type(error).__name__


_OS_WORDS = {
    errno.EROFS: "read-only file system",
    errno.EEXIST: "it already exists",
    errno.ENOSPC: "no space left on the device",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTEMPTY: "the folder is not empty",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error (a failing disk or network file system?)",
    getattr(errno, "EDQUOT", -1): "disk quota exceeded",  # no EDQUOT: a key never met
}


def _os_error(error: OSError, path: str | os.PathLike[str] | None, doing: str) -> str:
    if error.errno is None:  # raised in words of its own, which name the file
        return str(error) or type(error).__name__
    words = _OS_WORDS.get(error.errno) or (error.strerror or str(error)).lower()
    file = error.filename
    if path is not None and (file is None or _belongs_to(file, path)):
        return f"{doing} {path}: {words}" if doing else f"{path}: {words}"
    if file is not None:
        return f"{file}: {words}"
    return f"{doing}: {words}" if doing else words


def _belongs_to(file: str | bytes | int | os.PathLike, path: str | os.PathLike[str]) -> bool:
    """Whether ``file`` is ``path``, inside it, or a hidden sibling named after it (where
    stores are built before they are renamed into place)."""
    if isinstance(file, (bytes, int)):
        return False
    mine, target = Path(os.path.abspath(file)), Path(os.path.abspath(path))
    if mine == target or target in mine.parents:
        return True
    return mine.parent == target.parent and mine.name.startswith(f".{target.name}")


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def unwritable(path: Path, what: str) -> str | None:
    """Why the folder ``path`` cannot be made or written into, as far as can be told
    without writing; None when it may be. ``what`` names it: ``"an output folder"``.

    An existing folder is left to the writes themselves (a finished output on read-only
    media can still be checked and skipped).
    """
    if path.exists():
        return None if path.is_dir() else f"{path} is a file, not {what}"
    parent = path.parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    name = what.removeprefix("an ").removeprefix("a ")
    if not parent.is_dir():
        return f"cannot create the {name} {path}: {parent} is a file, not a folder"
    if is_read_only(parent):
        return f"cannot create the {name} {path}: {parent} is on a read-only file system"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create the {name} {path}: permission denied on {parent}"
    return None


def is_read_only(path: Path) -> bool:
    if not hasattr(os, "statvfs"):  # Windows: os.access tells
        return False
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
