"""The ``napari-segany`` command: list and fetch checkpoints, check the setup, run a demo,
embed a volume into a resumable store, segment many volumes (:mod:`.segment`).

torch, napari and Qt are imported only by the subcommands that need them, so
``napari-segany --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .. import __version__
from .embed import add_embed
from .errors import RUN, Run, describe, fail, is_expected
from .getting_started import demo_command, doctor_command, fetch_command, models_command
from .options import add_device_option, add_model_option, add_progress_option, positive_arg

if TYPE_CHECKING:
    pass

__all__ = [
    "main",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Every error is one line on stderr, ``napari-segany: error: ...``, in the command's
    own words (its options, the user's paths); ``--debug`` lets the traceback through.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments without the program name; ``sys.argv[1:]`` if None.

    Returns
    -------
    int
        The exit status: 0 on success, 1 on an error, 130 when interrupted.
    """
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    token = RUN.set(Run(options=getattr(args, "options", {}), debug=args.debug))
    try:
        return handler(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("napari-segany: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if is_expected(exc):
            # The message says what to do; a traceback would only hide it.
            return fail(exc)
        return fail(f"{type(exc).__name__}: {describe(exc)} (run with --debug for the traceback)")
    finally:
        RUN.reset(token)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-segany",
        description="Segment Anything for large microscopy volumes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    parser.set_defaults(handler=lambda _args: _print_help(parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    models = commands.add_parser(
        "models",
        help="list the known checkpoints and what is cached",
        description="List the known checkpoints (the default marked *) and which are cached.",
    )
    models.set_defaults(handler=models_command)

    fetch = commands.add_parser(
        "fetch",
        help="download and verify a checkpoint",
        description="Download a checkpoint into the cache and check its sha256.",
    )
    fetch.add_argument("name", metavar="NAME", help="a model name (see `napari-segany models`)")
    add_progress_option(fetch)
    fetch.set_defaults(handler=fetch_command)

    doctor = commands.add_parser(
        "doctor",
        help="report Python, torch, device, display, napari and the cache",
        description="Report Python, torch, the device, the display, napari and the model cache.",
    )
    doctor.set_defaults(handler=doctor_command)

    demo = commands.add_parser(
        "demo",
        help="segment the sample volume: one click, then every object automatically",
        description=(
            "Segment the bundled sample volume with the default model: one click on a "
            "nucleus, then every nucleus found automatically and linked through z."
        ),
    )
    demo.add_argument("--out", default="segany-demo", help="output folder (default: %(default)s)")
    add_model_option(demo)
    add_device_option(demo)
    demo.add_argument(
        "--click-only",
        action="store_true",
        help="only the one-click part (skip embedding and segmenting the whole volume)",
    )
    demo.add_argument(
        "--points-per-side",
        type=positive_arg,
        default=16,
        help=(
            "automatic segmentation: point prompts per slice side (default: %(default)s, "
            "not `segment`'s 32: on the sample's 256 x 256 slices that is a point every 16 "
            "pixels, closer than its nuclei are wide (about 18 pixels), at a quarter of "
            "the prompts)"
        ),
    )
    demo.set_defaults(handler=demo_command)

    add_embed(commands)
    from .segment import add_segment  # the batch command lives in a module of its own

    add_segment(commands)
    from .evaluate import add_evaluate  # the evaluation command lives in its own module

    add_evaluate(commands)
    from .finetune import add_finetune  # fine-tuning on the user's labels, its own module

    add_finetune(commands)
    from .check import add_check  # verifying and repairing stores, its own module

    add_check(commands)
    for sub in commands.choices.values():
        # Also after the subcommand; SUPPRESS keeps the subcommand from resetting it.
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
        )
        sub.set_defaults(options=_options(sub))
    return parser


_DEBUG_HELP = "on an error, show the traceback instead of the one-line message"


def _options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """A subcommand's options by destination, which is the Python API's argument name
    where both have one (``axes`` is ``--axes``, ``recompute`` is ``--recompute``)."""
    options = {}
    for action in parser._actions:
        long = [name for name in action.option_strings if name.startswith("--")]
        if long:
            options[action.dest] = long[0]
    return options


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0
