"""``napari-segany check STORE... [--repair] [--full]``: read back every chunk of our stores
and mend what can be mended (see :mod:`~napari_segany.store_check`)."""

from __future__ import annotations

import argparse
import sys

from .options import add_device_option

__all__ = ["add_check"]


def add_check(commands: argparse._SubParsersAction) -> None:
    """Declare the ``check`` subcommand."""
    check = commands.add_parser(
        "check",
        help="read back every chunk of stores; --repair mends the damaged ones",
        description=(
            "Read back every chunk of embedding stores, slice stores and labels and name "
            "the damaged ones. With --repair, damaged embeddings and slices are computed "
            "again and damaged labels rebuilt from the store's journal (labels a batch "
            "run wrote are linked again from their slices). Exit status 0: nothing left "
            "damaged; 1: something is."
        ),
    )
    check.add_argument("stores", nargs="+", metavar="STORE", help="the stores to check")
    check.add_argument("--repair", action="store_true", help="mend what can be mended")
    check.add_argument(
        "--full",
        action="store_true",
        help=(
            "embedding stores: also read the whole source and compare it with what was "
            "embedded (an edit anywhere is found; --repair then embeds those slices again)"
        ),
    )
    check.add_argument(
        "--model",
        default=None,
        help="model name or checkpoint to compute with (default: the one the store names)",
    )
    add_device_option(check)
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from ..labels.journal import JournalError
    from ..labels.lock import StoreLockedError
    from ..store_check import check_store

    status = 0
    for path in args.stores:
        try:
            report = check_store(
                path,
                repair=args.repair,
                full=args.full,
                model=args.model,
                device=args.device,
                progress=sys.stderr.isatty(),
            )
        except (OSError, ValueError, StoreLockedError, JournalError) as exc:
            print(f"napari-segany: error: {exc}", file=sys.stderr)
            status = 1
            continue
        print(report.summary())
        if not report.ok:
            status = 1
    return status
