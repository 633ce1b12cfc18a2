"""Which files a batch run segments, and where each one's results go.

Every source gets three outputs in the output folder, named after it (``stack.tif``,
``stack.ome.tif`` and ``stack.ome.zarr`` are all ``stack``)::

    stack.embeddings-<model>.zarr   image embeddings (resumable, reusable)
    stack.slices.zarr               each slice's objects with slice-local ids, a done flag per slice
    stack.labels.ome.zarr           the result: OME-Zarr labels with volume-wide ids
    stack.labels.tif                the same as a TIFF, when asked for
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..naming import (
    LABELS_SUFFIX,
    LABELS_TIFF_SUFFIX,
    SLICES_SUFFIX,
    embeddings_name,
    source_name,
)

__all__ = ["Outputs", "expand_sources", "find_sources", "plan_outputs", "source_name"]

_GLOB = re.compile(r"[*?[]")


def expand_sources(patterns: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Paths from paths and glob patterns, as a shell expands them (quoted patterns too;
    ``**`` goes through folders).

    Matches of a pattern come sorted; a file named twice is kept once, where first named.

    Raises
    ------
    FileNotFoundError
        Some paths do not exist or some patterns match nothing: all of them are named.
    ValueError
        No source at all.
    """
    found: list[Path] = []
    unmatched: list[str] = []
    for pattern in patterns:
        text = os.path.expanduser(os.fspath(pattern))
        if _GLOB.search(text) and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                unmatched.append(f"{text!r} (matches nothing)")
            found += [Path(m) for m in matches]
        else:
            found.append(Path(text))
    return find_sources(found, also_missing=unmatched)


def find_sources(
    sources: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    also_missing: Sequence[str] = (),
) -> list[Path]:
    """The sources as absolute paths, without repeats, after checking they all exist.

    Raises
    ------
    FileNotFoundError
        Naming every missing source (and ``also_missing``), before any work is done.
    ValueError
        No source at all.
    """
    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    paths = list(dict.fromkeys(Path(os.path.abspath(os.path.expanduser(s))) for s in sources))
    missing = [*also_missing, *(repr(str(p)) for p in paths if not p.exists())]
    if missing:
        what = "source" if len(missing) == 1 else f"{len(missing)} sources"
        raise FileNotFoundError(f"no such {what}: {', '.join(missing)}; nothing was segmented")
    if not paths:
        raise ValueError("no source to segment: give TIFF files or (OME-)Zarr folders")
    return paths


@dataclass(frozen=True)
class Outputs:
    """Where one source's results go (see the module's description).

    Attributes
    ----------
    source
        The image file or folder.
    embeddings, slices, labels, tiff
        The embedding store, the per-slice results, the OME-Zarr labels and the TIFF.
    """

    source: Path
    embeddings: Path
    slices: Path
    labels: Path
    tiff: Path

    @classmethod
    def of(cls, source: Path, out_dir: Path, model_name: str) -> Outputs:
        """The outputs of ``source`` in ``out_dir`` for the model named ``model_name``."""
        name = source_name(source)
        return cls(
            source=source,
            embeddings=out_dir / embeddings_name(name, model_name),
            slices=out_dir / f"{name}{SLICES_SUFFIX}",
            labels=out_dir / f"{name}{LABELS_SUFFIX}",
            tiff=out_dir / f"{name}{LABELS_TIFF_SUFFIX}",
        )


def plan_outputs(sources: Sequence[Path], out_dir: Path, model_name: str) -> list[Outputs]:
    """Every source's outputs in ``out_dir``.

    Raises
    ------
    ValueError
        Two sources would write the same outputs (e.g. ``a/stack.tif`` and
        ``b/stack.tif``), or a source lies where an output goes.
    """
    plans = [Outputs.of(s, out_dir, model_name) for s in sources]
    by_name: dict[str, list[Path]] = {}
    for plan in plans:
        by_name.setdefault(plan.labels.name, []).append(plan.source)
    clashes = [paths for paths in by_name.values() if len(paths) > 1]
    if clashes:
        listed = "; ".join(" and ".join(repr(str(p)) for p in paths) for paths in clashes)
        raise ValueError(
            f"these sources would write the same outputs in {str(out_dir)!r}: {listed}; "
            "rename them or segment them into different output folders"
        )
    written = {p for plan in plans for p in (plan.embeddings, plan.slices, plan.labels, plan.tiff)}
    inside = [plan.source for plan in plans if plan.source in written]
    if inside:
        raise ValueError(f"a source lies where an output would go: {str(inside[0])!r}")
    return plans
