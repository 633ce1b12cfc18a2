"""``napari-segany segment``: automatic segmentation of many volumes, here or on a dask cluster.

Only argparse is imported with this module; torch, dask and the engine load when the
command runs, so ``napari-segany --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from ..batch.segment import BatchResult

__all__ = ["add_segment", "segment"]

#: ``--mode``: AutomaticParams' modes, default first (not imported from .automatic, which
#: pulls in scipy; a test keeps the two in step).
_MODES = ("sparse", "seeded", "grid")


def add_segment(commands: argparse._SubParsersAction) -> None:
    """Add the ``segment`` subcommand to the ``napari-segany`` parser."""
    from .options import (
        add_device_option,
        add_model_option,
        add_progress_option,
        add_volume_options,
        positive_arg,
    )

    parser = commands.add_parser(
        "segment",
        help="segment every object of many volumes into OME-Zarr labels (resumable, dask)",
        description=(
            "Automatic segmentation of each SOURCE (TIFF files, zarr or OME-Zarr folders; "
            "globs such as 'data/*.tif' are expanded, quoted or not) into "
            "<name>.labels.ome.zarr in the output folder, with its embeddings and per-slice "
            "results beside it. A rerun skips finished volumes and slices; Ctrl-C keeps "
            "every finished slice. Runs in this process, on a local dask cluster "
            "(--workers, --scheduler local) or on a running dask scheduler (--scheduler)."
        ),
    )
    parser.add_argument("source", metavar="SOURCE", nargs="+", help="image files or globs")
    parser.add_argument("--out", metavar="DIR", required=True, help="the output folder")
    add_model_option(parser)
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="'local' for a dask LocalCluster on this machine, or a scheduler address such "
        "as tcp://10.0.0.5:8786 (default: this process)",
    )
    parser.add_argument(
        "--workers",
        metavar="N",
        type=positive_arg,
        help="worker processes of the local cluster (implies --scheduler local; "
        "default with --scheduler local: one per four cores)",
    )
    parser.add_argument(
        "--threads",
        metavar="N",
        type=positive_arg,
        help="torch threads of each process that segments (default: the cores shared out)",
    )
    parser.add_argument(
        "--points-per-side",
        metavar="N",
        type=positive_arg,
        help="the finest grid of N x N point prompts per slice (default: 32)",
    )
    parser.add_argument(
        "--mode",
        choices=_MODES,
        help="which prompts are decoded: sparse skips what is already found (fast), seeded "
        "starts at bright blobs, grid decodes every point (default: sparse)",
    )
    parser.add_argument(
        "--no-link", action="store_true", help="keep each slice's objects apart (2D stacks)"
    )
    parser.add_argument("--tiff", action="store_true", help="also write <name>.labels.tif")
    parser.add_argument(
        "--recompute",
        action="store_true",
        help="replace embeddings and slices made with another model, parameters or source",
    )
    add_device_option(parser)
    add_volume_options(parser)
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=10.0,
        help="seconds to wait for the scheduler (default: %(default)s)",
    )
    parser.add_argument(
        "--prompts",
        metavar="FILE",
        help="segment the objects given by points and boxes in FILE (a CSV file or a "
        "labels store's annotation log, see docs/batch.md) instead of every object; "
        "exactly one SOURCE",
    )
    parser.add_argument(
        "--no-propagate",
        action="store_true",
        help="with --prompts: segment each object on its slice only, not through z",
    )
    add_progress_option(parser)
    parser.set_defaults(handler=segment)


def segment(args: argparse.Namespace) -> int:
    """Run ``napari-segany segment``; the exit status: 0 all done, 1 an error or a failed
    source, 130 interrupted."""
    from pathlib import Path

    from ..batch.files import expand_sources
    from ..batch.segment import SchedulerUnreachableError, WorkerModelError, segment_files
    from ..device import choose_device
    from ..model import CheckpointError
    from .errors import fail, unwritable
    from .options import stop_on_ctrl_c, volume_options

    if args.prompts is not None:
        return _segment_prompts(args)
    if args.no_propagate:
        return fail("--no-propagate goes with --prompts")
    client = args.scheduler
    if args.workers is not None:
        if client not in (None, "local"):
            return fail("--workers sizes a local cluster; it cannot size one at an address")
        client = "local"
    out = Path(args.out).expanduser()
    try:
        choose_device(args.device)  # a typo in --device fails before any work
        sources = expand_sources(args.source)
    except (OSError, ValueError) as exc:
        return fail(exc)
    problem = unwritable(out, "an output folder")
    if problem:
        return fail(problem)  # before loading a model or starting a cluster
    where = {None: "this process", "local": "a local dask cluster"}.get(client, client)
    print(f"segmenting {len(sources)} volume(s) into {args.out} with {args.model} on {where}")
    overrides = {
        key: value
        for key, value in (("points_per_side", args.points_per_side), ("mode", args.mode))
        if value is not None
    }
    stop = threading.Event()
    with stop_on_ctrl_c(stop):
        try:
            results = segment_files(
                sources,
                args.out,
                model=args.model,
                client=client,
                n_workers=args.workers,
                link=not args.no_link,
                tiff=args.tiff,
                recompute=args.recompute,
                device=args.device,
                timeout=args.timeout,
                torch_threads=args.threads,
                progress=not args.no_progress,
                cancel=stop.is_set,
                **volume_options(args).keywords(),
                **overrides,
            )
        except KeyboardInterrupt:  # a second Ctrl-C
            print(_INTERRUPTED, file=sys.stderr)
            return 130
        except OSError as exc:  # the output folder (read-only, full), the model's cache
            return fail(exc, path=out, doing="cannot write into the output folder")
        except (SchedulerUnreachableError, WorkerModelError, CheckpointError, ValueError) as exc:
            return fail(exc)
    return _report(results, out)


def _segment_prompts(args: argparse.Namespace) -> int:
    """``segment SOURCE --prompts FILE``: the objects of a prompts file, through z."""
    from pathlib import Path

    from ..batch.files import expand_sources
    from ..device import choose_device
    from ..model import CheckpointError
    from ..naming import LABELS_SUFFIX, source_name
    from ..prompt_batch import segment_with_prompts
    from .errors import fail, unwritable
    from .options import volume_options

    if args.scheduler is not None or args.workers is not None:
        return fail("--prompts runs in this process: drop --scheduler and --workers")
    folder = Path(args.out).expanduser()
    try:
        choose_device(args.device)
        sources = expand_sources(args.source)
        if len(sources) != 1:
            raise ValueError(
                f"--prompts takes exactly one SOURCE, got {len(sources)}: run once per volume"
            )
        name = source_name(sources[0])
        problem = unwritable(folder, "an output folder")
        if problem:
            return fail(problem)
        out = folder / f"{name}{LABELS_SUFFIX}"
        print(f"segmenting {sources[0]} from {args.prompts} into {out} with {args.model}")
        result = segment_with_prompts(
            sources[0],
            args.prompts,
            out,
            model=args.model,
            propagate=not args.no_propagate,
            recompute=args.recompute,
            device=args.device,
            progress=not args.no_progress,
            **volume_options(args).keywords(),
        )
    except KeyboardInterrupt:
        print("napari-segany: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the outputs (read-only, full), the prompts file, the source
        return fail(exc, path=folder, doing="cannot write into the output folder")
    except (CheckpointError, ValueError) as exc:
        return fail(exc)
    print(result.summary())
    if args.tiff:
        from ..labels.store import LabelsStore

        tiff = folder / f"{name}.labels.tif"
        try:
            with LabelsStore.open(result.labels, read_only=True) as labels:
                print(f"wrote {labels.to_tiff(tiff)}")
        except OSError as exc:
            return fail(exc, path=tiff, doing="cannot write")
    return 0


_INTERRUPTED = (
    "napari-segany: interrupted: finished slices are kept; rerun the same command to resume"
)


def _report(results: Sequence[BatchResult], out: Path) -> int:
    from dataclasses import replace

    from .errors import describe

    for result in results:
        if result.exception is not None:  # said in the command's words
            doing = "cannot write into the output folder"
            result = replace(result, error=describe(result.exception, path=out, doing=doing))
        print(result.summary(), file=sys.stderr if result.status == "failed" else sys.stdout)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    cancelled = sum(r.status == "cancelled" for r in results)
    print(
        f"volumes {counts['done']} done, {counts['skipped']} already done, "
        f"{counts['failed']} failed" + (f", {cancelled} interrupted" if cancelled else "")
    )
    if cancelled:
        print(_INTERRUPTED, file=sys.stderr)
        return 130
    if counts["failed"]:
        others = "; the others are complete" if counts["failed"] < len(results) else ""
        print(
            f"napari-segany: error: {counts['failed']} of {len(results)} volume(s) failed "
            f"(see above){others}",
            file=sys.stderr,
        )
        return 1
    return 0
