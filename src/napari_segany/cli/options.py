"""Options, option types and Ctrl-C handling that the subcommands share.

Each option that more than one subcommand takes is declared here once, so its name,
default, metavar and help read the same everywhere. Only argparse is imported with this
module; :func:`volume_options` imports the volume package when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .. import weights

if TYPE_CHECKING:
    from ..volume.options import VolumeOptions

__all__ = [
    "MODEL_HELP",
    "add_device_option",
    "add_model_option",
    "add_progress_option",
    "add_volume_options",
    "count_arg",
    "positive_arg",
    "stop_on_ctrl_c",
    "volume_options",
]

#: ``--model``'s help where the subcommand has no more to say about the model.
MODEL_HELP = "model name or checkpoint path (default: %(default)s)"


def count_arg(text: str) -> int:
    """An option's value as an integer 0 or more (an index, a count); argparse's ``type``.

    Raises ``argparse.ArgumentTypeError`` for anything else.
    """
    return _integer(text, minimum=0)


def positive_arg(text: str) -> int:
    """An option's value as an integer 1 or more (a size, a number of workers); argparse's
    ``type``. Raises ``argparse.ArgumentTypeError`` for anything else."""
    return _integer(text, minimum=1)


def _integer(text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {minimum} or more, got {text}")
    return value


def add_model_option(parser: argparse.ArgumentParser, *, help: str = MODEL_HELP) -> None:
    """Add ``--model NAME`` (default: the default model) to a subcommand.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The subcommand's parser.
    help : str, optional
        The option's help, where the subcommand says more (``finetune``: the model to tune).
    """
    parser.add_argument("--model", metavar="NAME", default=weights.DEFAULT_MODEL, help=help)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--device DEV`` (default: auto) to a subcommand.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The subcommand's parser.
    """
    parser.add_argument(
        "--device", metavar="DEV", default="auto", help="auto, cpu, cuda, mps (default: auto)"
    )


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--no-progress`` (destination ``no_progress``) to a subcommand.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The subcommand's parser.
    """
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_volume_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--axes``, ``--level``, ``--channel`` and ``--time``, the view of a source.

    :func:`volume_options` reads them back as a
    :class:`~napari_segany.volume.options.VolumeOptions`.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The subcommand's parser.
    """
    parser.add_argument(
        "--axes",
        metavar="AXES",
        help="the source's axes, e.g. ZYX or TCZYX (default: metadata, else shape)",
    )
    parser.add_argument(
        "--level", metavar="N", type=count_arg, default=0, help="pyramid level, 0 = full resolution"
    )
    parser.add_argument("--channel", metavar="C", type=count_arg, help="index on the C axis")
    parser.add_argument("--time", metavar="T", type=count_arg, help="index on the T axis")


def volume_options(args: argparse.Namespace) -> VolumeOptions:
    """The view that :func:`add_volume_options`' options chose.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line of a subcommand with the volume options.

    Returns
    -------
    VolumeOptions
        Its axes, level, channel and time; ``open_volume(source, **options.keywords())``.
    """
    from ..volume.options import VolumeOptions

    return VolumeOptions(axes=args.axes, level=args.level, channel=args.channel, time=args.time)


@contextlib.contextmanager
def stop_on_ctrl_c(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C: finish the batch in flight, then stop. Second: stop at once.

    Parameters
    ----------
    stop : threading.Event
        Set by the first Ctrl-C; the work polls it between batches. The second Ctrl-C
        raises KeyboardInterrupt. Off the main thread, Ctrl-C is left as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            "\nnapari-segany: stopping after the batch in flight (Ctrl-C again to stop now)",
            file=sys.stderr,
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
