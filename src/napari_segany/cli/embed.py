"""``napari-segany embed``: a volume into a resumable embedding store."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..naming import source_name
from ..weights import UnknownModelError, WeightsError
from .errors import fail, unwritable
from .options import (
    add_device_option,
    add_model_option,
    add_progress_option,
    add_volume_options,
    count_arg,
    positive_arg,
    stop_on_ctrl_c,
    volume_options,
)

if TYPE_CHECKING:
    from ..embeddings import EmbeddingStore
    from ..model import SamModel

__all__ = [
    "add_embed",
    "default_store_path",
]


def add_embed(commands: argparse._SubParsersAction) -> None:
    """Add the ``embed`` subcommand to the ``napari-segany`` parser."""
    embed = commands.add_parser(
        "embed",
        help="compute the image embeddings of a volume into a store (resumable)",
        description=(
            "Embed every slice of a TIFF, zarr or OME-Zarr volume into an embedding store "
            "(a zarr folder). A rerun computes only the slices still missing; Ctrl-C keeps "
            "every finished slice."
        ),
    )
    embed.add_argument("source", metavar="SOURCE", help="a TIFF file or a (OME-)zarr directory")
    add_model_option(embed)
    embed.add_argument(
        "--out",
        metavar="STORE",
        help="the store's folder (default: <source name>.embeddings.zarr beside the source)",
    )
    add_volume_options(embed)
    embed.add_argument(
        "--batch-size",
        metavar="N",
        type=positive_arg,
        help="tiles per encoder pass (default: from free GPU memory; 1 on the CPU)",
    )
    add_device_option(embed)
    embed.add_argument(
        "--tile-size",
        metavar="N",
        type=positive_arg,
        help="window side for slices longer than 1.5 windows (default: 1024)",
    )
    embed.add_argument(
        "--halo",
        metavar="N",
        type=count_arg,
        help="overlap on each side of a window (default: 128)",
    )
    embed.add_argument(
        "--recompute",
        action="store_true",
        help="replace an existing store made from another model, source or settings "
        "(a matching store is resumed, not recomputed)",
    )
    add_progress_option(embed)
    embed.set_defaults(handler=_embed)


def default_store_path(source: str | os.PathLike[str]) -> Path:
    """Where ``embed`` puts a source's store: ``<name>.embeddings.zarr`` beside it.

    ``stack.tif``, ``stack.ome.tif``, ``cells.ome.zarr`` and ``cells.zarr`` give
    ``stack.embeddings.zarr`` and ``cells.embeddings.zarr`` in the same folder.
    """
    path = Path(os.path.abspath(source))
    return path.with_name(f"{source_name(path)}.embeddings.zarr")


def _embed(args: argparse.Namespace) -> int:
    # torch and the engine load here, not at `napari-segany --help`.
    from ..device import choose_device
    from ..embeddings import StoreMismatchError, embed
    from ..model import CheckpointError, load_model
    from ..volume.volume import open_volume

    try:
        choose_device(args.device)  # a typo in --device fails before any work
        volume = open_volume(args.source, **volume_options(args).keywords())
    except (OSError, ValueError, TypeError) as exc:  # missing file, bad axes, level, ...
        return fail(exc, path=args.source, doing="cannot read")
    out = Path(args.out) if args.out else default_store_path(args.source)
    with volume:
        problem = unwritable(out, "an embedding store")
        if problem:
            return fail(problem)  # before loading (perhaps downloading) a model
        try:
            model = load_model(args.model, device=args.device, progress=not args.no_progress)
        except (WeightsError, UnknownModelError, CheckpointError) as exc:
            return fail(exc)
        tiling = {
            key: value
            for key, value in (("tile_size", args.tile_size), ("halo", args.halo))
            if value is not None
        }
        try:
            store = embed(volume, model, out, compute=False, recompute=args.recompute, **tiling)
        except StoreMismatchError as exc:  # its fix is --recompute
            return fail(exc)
        except OSError as exc:  # PermissionError, read-only or full file system
            return fail(exc, path=out, doing="cannot write the embedding store")
        except ValueError as exc:  # --out is something else; bad tiling; unusable intensities
            return fail(exc)
        return _fill(store, model, args)


def _fill(store: EmbeddingStore, model: SamModel, args: argparse.Namespace) -> int:
    total, tiles = len(store), len(store.grid)
    before = int(store.done().sum())
    height, width = store.grid.slice_shape
    print(f"store   {store.path}")
    print(
        f"volume  {total} slice(s) of {height} x {width}, {tiles} tile(s) per slice; "
        f"model {model.name} on {model.device}"
    )
    if before:
        print(f"resume  {before} of {total} slice(s) already embedded, {total - before} to go")

    stop = threading.Event()
    with stop_on_ctrl_c(stop):
        try:
            report = store.fill(
                batch_size=args.batch_size, progress=not args.no_progress, cancel=stop.is_set
            )
        except KeyboardInterrupt:  # a second Ctrl-C: stopped within the batch
            return _interrupted(store, before)
        except (OSError, ValueError) as exc:  # ValueError: a slice the model cannot see (NaN)
            done = int(store.done().sum())
            return fail(
                exc,
                path=store.path,
                doing="cannot write the embedding store",
                note=f"{done} of {total} slice(s) embedded are kept",
            )
    if report.cancelled:
        return _interrupted(store, before)
    computed = len(report.computed)
    rate = f"{computed / report.seconds:.2f} slices/s" if computed else "-"
    print(
        f"slices  {computed} computed, {report.skipped} already done, "
        f"{int(store.done().sum())} of {total} in the store"
    )
    print(f"tiles   {tiles} per slice" + ("" if store.grid.tiled else " (not tiled)"))
    print(f"time    {report.seconds:.1f} s, {rate}")
    return 0


def _interrupted(store: EmbeddingStore, before: int) -> int:
    now = int(store.done().sum())
    print(
        f"napari-segany: interrupted: {now - before} slice(s) embedded in this run, "
        f"{now} of {len(store)} in {store.path}; rerun the same command to resume",
        file=sys.stderr,
    )
    return 130
