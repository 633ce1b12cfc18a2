"""``napari-segany evaluate``: the field's interactive-segmentation scores on one image.

Only argparse is imported with this module; torch and the engine load when the command
runs, so ``napari-segany --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["add_evaluate", "default_out", "evaluate"]


def add_evaluate(commands: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand to the ``napari-segany`` parser."""
    from .options import add_device_option, add_model_option, add_progress_option, count_arg

    parser = commands.add_parser(
        "evaluate",
        help="score interactive segmentation against ground-truth labels (micro-sam's protocol)",
        description=(
            "Prompt every object of LABELS on IMAGE as a user would: a first prompt (the "
            "object's deepest interior point or its tight box), then corrective clicks at the "
            "deepest point of the larger error region. Prints mean IoU, mSA and SA50 after "
            "each click and the number of clicks to IoU 0.85 / 0.90; writes evaluation.json "
            "and evaluation.png into the output folder."
        ),
    )
    parser.add_argument("image", metavar="IMAGE", help="a 2D image or a 3D volume (TIFF, zarr)")
    parser.add_argument(
        "labels", metavar="LABELS", help="a TIFF of integer instance labels of the same shape"
    )
    add_model_option(parser)
    parser.add_argument(
        "--start",
        choices=("point", "box"),
        default="point",
        help="the first prompt of each object (default: %(default)s)",
    )
    parser.add_argument(
        "--iterations",
        metavar="N",
        type=count_arg,
        default=8,
        help="corrective clicks after the first prompt (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: <image name>.evaluation in the current folder)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="SAM's own choice of mask instead of the refined click, for comparison",
    )
    parser.add_argument(
        "--in-3d",
        action="store_true",
        help="a volume's 3D protocol instead: one prompt on each object's largest slice, "
        "carried through z; 3D IoU, mSA and the z-extent error (writes evaluation-3d.json)",
    )
    parser.add_argument(
        "--corrections",
        metavar="N",
        type=count_arg,
        default=0,
        help="with --in-3d: corrections on each object's worst slice after propagation, "
        "each followed by propagation again (default: %(default)s)",
    )
    add_device_option(parser)
    add_progress_option(parser)
    parser.set_defaults(handler=evaluate)


def default_out(image: str | os.PathLike[str]) -> Path:
    """``<image name>.evaluation`` in the current folder (``cells.tif`` -> ``cells.evaluation``)."""
    from ..naming import source_name

    return Path(f"{source_name(image)}.evaluation")


def evaluate(args: argparse.Namespace) -> int:
    """Run ``napari-segany evaluate``; the exit status: 0 done, 1 an error."""
    from ..device import choose_device
    from ..evaluate.runs import (
        InteractiveReport,
        PropagationReport,
        check_settings,
        evaluate_in_3d,
        evaluate_interactive,
    )
    from ..model import CheckpointError
    from ..weights import UnknownModelError, WeightsError
    from .errors import fail, unwritable

    out = Path(args.out) if args.out else default_out(args.image)
    problem = unwritable(out, "an output folder")
    if problem:
        return fail(problem)  # before a model is loaded and the image embedded
    try:
        choose_device(args.device)  # a typo in --device fails before any work
        check_settings(args.start, args.iterations)
        options = {
            "start": args.start,
            "refine": False if args.plain else None,
            "device": args.device,
            "progress": not args.no_progress,
        }
        report: InteractiveReport | PropagationReport
        if args.in_3d:
            report = evaluate_in_3d(
                args.model, args.image, args.labels, corrections=args.corrections, **options
            )
        elif args.corrections:
            return fail("--corrections goes with --in-3d (in 2D, use --iterations)")
        else:
            report = evaluate_interactive(
                args.model, args.image, args.labels, iterations=args.iterations, **options
            )
    except (WeightsError, UnknownModelError, CheckpointError, OSError, ValueError) as exc:
        return fail(exc)
    print(report.table())
    try:
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(report, PropagationReport):  # --in-3d
            written = [report.to_json(out / "evaluation-3d.json")]
        else:
            written = [
                report.to_json(out / "evaluation.json"),
                report.plot(out / "evaluation.png"),
            ]
    except OSError as exc:
        return fail(exc, path=out, doing="cannot write the results into")
    for path in written:
        print(f"wrote {path}")
    return 0
