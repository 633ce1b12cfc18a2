"""The ``napari-segany`` command: list and fetch checkpoints, check the setup, run a demo,
embed a volume into a resumable store, segment many volumes (:mod:`.segment`).

torch, napari and Qt are imported only by the subcommands that need them, so
``napari-segany --help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.metadata
import os
import platform
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__, weights
from ..argument_errors import ArgumentError
from ..weights import UnknownModelError, WeightsError

if TYPE_CHECKING:
    from ..embeddings import EmbeddingStore
    from ..model import SamModel


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
    token = _RUN.set(_Run(options=getattr(args, "options", {}), debug=args.debug))
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
        if _expected(exc):
            # The message says what to do; a traceback would only hide it.
            return _error(exc)
        return _error(f"{type(exc).__name__}: {describe(exc)} (run with --debug for the traceback)")
    finally:
        _RUN.reset(token)


_PACKAGE = __name__.split(".")[0]

_EXPECTED = (WeightsError, UnknownModelError, ArgumentError, OSError)
"""Errors the user can fix, from any subcommand: said without the hint about --debug."""


def _expected(error: Exception) -> bool:
    """An error the user can fix; a damaged chunk names the command that repairs it (its
    module is loaded only where a store was read, so it is looked up, not imported)."""
    damage = sys.modules.get(f"{_PACKAGE}.damage")
    return isinstance(error, _EXPECTED) or (
        damage is not None and isinstance(error, damage.DamagedChunkError)
    )


@dataclass(frozen=True)
class _Run:
    """How the running subcommand speaks: its options by the API's argument names."""

    options: dict[str, str]
    debug: bool = False


_RUN: ContextVar[_Run | None] = ContextVar("napari_segany_cli_run", default=None)


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
    models.set_defaults(handler=_models)

    fetch = commands.add_parser(
        "fetch",
        help="download and verify a checkpoint",
        description="Download a checkpoint into the cache and check its sha256.",
    )
    fetch.add_argument("name", metavar="NAME", help="a model name (see `napari-segany models`)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.set_defaults(handler=_fetch)

    doctor = commands.add_parser(
        "doctor",
        help="report Python, torch, device, display, napari and the cache",
        description="Report Python, torch, the device, the display, napari and the model cache.",
    )
    doctor.set_defaults(handler=_doctor)

    demo = commands.add_parser(
        "demo",
        help="segment the sample volume: one click, then every object automatically",
        description=(
            "Segment the bundled sample volume with the default model: one click on a "
            "nucleus, then every nucleus found automatically and linked through z."
        ),
    )
    demo.add_argument("--out", default="segany-demo", help="output folder (default: %(default)s)")
    demo.add_argument(
        "--model", default=weights.DEFAULT_MODEL, help="model name or checkpoint path"
    )
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    demo.add_argument(
        "--click-only",
        action="store_true",
        help="only the one-click part (skip embedding and segmenting the whole volume)",
    )
    demo.add_argument(
        "--points-per-side",
        type=_positive,
        default=16,
        help=(
            "automatic segmentation: point prompts per slice side (default: %(default)s, "
            "not `segment`'s 32: on the sample's 256 x 256 slices that is a point every 16 "
            "pixels, closer than its nuclei are wide (about 18 pixels), at a quarter of "
            "the prompts)"
        ),
    )
    demo.set_defaults(handler=_demo)

    _add_embed(commands)
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


def _add_embed(commands: argparse._SubParsersAction) -> None:
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
    embed.add_argument(
        "--model",
        metavar="NAME",
        default=weights.DEFAULT_MODEL,
        help="model name or checkpoint path (default: %(default)s)",
    )
    embed.add_argument(
        "--out",
        metavar="STORE",
        help="the store's folder (default: <source name>.embeddings.zarr beside the source)",
    )
    embed.add_argument(
        "--axes",
        metavar="AXES",
        help="the source's axes, e.g. ZYX or TCZYX (default: metadata, else shape)",
    )
    embed.add_argument(
        "--level", metavar="N", type=_count, default=0, help="pyramid level, 0 = full resolution"
    )
    embed.add_argument("--channel", metavar="C", type=_count, help="index on the C axis")
    embed.add_argument("--time", metavar="T", type=_count, help="index on the T axis")
    embed.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive,
        help="tiles per encoder pass (default: from free GPU memory; 1 on the CPU)",
    )
    embed.add_argument(
        "--device", metavar="DEV", default="auto", help="auto, cpu, cuda, mps (default: auto)"
    )
    embed.add_argument(
        "--tile-size",
        metavar="N",
        type=_positive,
        help="window side for slices longer than 1.5 windows (default: 1024)",
    )
    embed.add_argument(
        "--halo", metavar="N", type=_count, help="overlap on each side of a window (default: 128)"
    )
    embed.add_argument(
        "--recompute",
        action="store_true",
        help="replace an existing store made from another model, source or settings "
        "(a matching store is resumed, not recomputed)",
    )
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")
    embed.set_defaults(handler=_embed)


def _count(text: str) -> int:
    return _integer(text, minimum=0)


def _positive(text: str) -> int:
    return _integer(text, minimum=1)


def _integer(text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {minimum} or more, got {text}")
    return value


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _models(args: argparse.Namespace) -> int:
    rows = [("", "name", "architecture", "size", "description", "cached")]
    for name in weights.list_models():
        checkpoint = weights.get_checkpoint(name)
        path = weights.cached_path(checkpoint)
        rows.append(
            (
                "*" if name == weights.DEFAULT_MODEL else "",
                name,
                checkpoint.architecture,
                _size(checkpoint.size),
                checkpoint.description,
                f"yes  {path}" if path else "no",
            )
        )
    # The cached path is long and varies: last, so it does not widen the other columns.
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]))
    print(f"\n* default model. Cache: {weights.cache_dir()} (set {weights.CACHE_ENV} to move it)")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    path = weights.fetch(args.name, progress=not args.no_progress)
    print(path)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    report: list[tuple[str, str]] = [
        ("napari-segany", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        *_torch_report(),
        ("display", _display()),
        ("qt", _qt()),
        ("napari", _installed_version("napari")),
        ("cache", f"{weights.cache_dir()}" + _cache_origin()),
    ]
    width = max(len(key) for key, _ in report)
    for key, value in report:
        print(f"{key.ljust(width)}  {value}")

    print("\ncheckpoints:")
    for name in weights.list_models():
        status = weights.check_cached(name)
        if status is None:
            print(f"  {name}: not downloaded")
        elif status:
            print(f"  {name}: ok  {weights.cached_path(name)}")
        else:
            print(
                f"  {name}: bad (checksum mismatch) {weights.cached_path(name)}"
                f" -> run `napari-segany fetch {name}` to replace it"
            )
    known = {weights.get_checkpoint(name).filename for name in weights.list_models()}
    for path in sorted(weights.cache_dir().iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix != ".verified":
            if path.name not in known:
                print(f"  (not in the registry) {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        from ..demo import run_demo  # pulls in torch and the engine: only when asked for
    except ModuleNotFoundError as exc:
        if exc.name != f"{_PACKAGE}.demo":
            raise
        return _error("this installation has no demo module")
    from ..device import choose_device
    from ..model import CheckpointError

    out = Path(args.out)
    try:
        choose_device(args.device)  # a typo in --device fails here, before any work
    except ValueError as exc:
        return _error(exc)
    problem = unwritable(out, "an output folder")
    if problem:
        return _error(problem)
    try:
        result = run_demo(
            out=out,
            model=args.model,
            device=args.device,
            pipeline=not args.click_only,
            points_per_side=args.points_per_side,
        )
    except CheckpointError as exc:  # e.g. --model pointing at a file that is not SAM's
        return _error(exc)
    except OSError as exc:  # a read-only or full file system
        return _error(exc, path=out, doing="cannot write into the output folder")
    print(result.summary())
    return 0


_SOURCE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr")


def default_store_path(source: str | os.PathLike[str]) -> Path:
    """Where ``embed`` puts a source's store: ``<name>.embeddings.zarr`` beside it.

    ``stack.tif``, ``stack.ome.tif``, ``cells.ome.zarr`` and ``cells.zarr`` give
    ``stack.embeddings.zarr`` and ``cells.embeddings.zarr`` in the same folder.
    """
    path = Path(os.path.abspath(source))
    return path.with_name(f"{source_stem(path)}.embeddings.zarr")


def source_stem(source: str | os.PathLike[str]) -> str:
    """A source's name without its image suffix: ``stack.ome.tif`` gives ``stack``."""
    name = Path(os.path.abspath(source)).name
    for suffix in _SOURCE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _error(
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
    run = _RUN.get()
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
        run = _RUN.get()
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
}
if hasattr(errno, "EDQUOT"):
    _OS_WORDS[errno.EDQUOT] = "disk quota exceeded"


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


def _embed(args: argparse.Namespace) -> int:
    # torch and the engine load here, not at `napari-segany --help`.
    from ..device import choose_device
    from ..embeddings import StoreMismatchError, embed
    from ..model import CheckpointError, load_model
    from ..volume.volume import open_volume

    try:
        choose_device(args.device)  # a typo in --device fails before any work
        volume = open_volume(
            args.source, axes=args.axes, level=args.level, channel=args.channel, time=args.time
        )
    except (OSError, ValueError, TypeError) as exc:  # missing file, bad axes, level, ...
        return _error(exc, path=args.source, doing="cannot read")
    out = Path(args.out) if args.out else default_store_path(args.source)
    with volume:
        problem = unwritable(out, "an embedding store")
        if problem:
            return _error(problem)  # before loading (perhaps downloading) a model
        try:
            model = load_model(args.model, device=args.device, progress=not args.no_progress)
        except (WeightsError, UnknownModelError, CheckpointError) as exc:
            return _error(exc)
        tiling = {
            key: value
            for key, value in (("tile_size", args.tile_size), ("halo", args.halo))
            if value is not None
        }
        try:
            store = embed(volume, model, out, compute=False, recompute=args.recompute, **tiling)
        except StoreMismatchError as exc:  # its fix is --recompute
            return _error(exc)
        except OSError as exc:  # PermissionError, read-only or full file system
            return _error(exc, path=out, doing="cannot write the embedding store")
        except ValueError as exc:  # --out is something else; bad tiling; unusable intensities
            return _error(exc)
        return _fill(store, model, args)


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
    if _read_only(parent):
        return f"cannot create the {name} {path}: {parent} is on a read-only file system"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create the {name} {path}: permission denied on {parent}"
    return None


def _read_only(path: Path) -> bool:
    if not hasattr(os, "statvfs"):  # Windows: os.access tells
        return False
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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
    with _stop_on_ctrl_c(stop):
        try:
            report = store.fill(
                batch_size=args.batch_size, progress=not args.no_progress, cancel=stop.is_set
            )
        except KeyboardInterrupt:  # a second Ctrl-C: stopped within the batch
            return _interrupted(store, before)
        except (OSError, ValueError) as exc:  # ValueError: a slice the model cannot see (NaN)
            done = int(store.done().sum())
            return _error(
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


@contextlib.contextmanager
def _stop_on_ctrl_c(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C: finish the batch in flight, then stop. Second: stop at once."""
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


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "?"
    if nbytes >= 1e9:
        return f"{nbytes / 1e9:.2f} GB"
    return f"{nbytes / 1e6:.1f} MB"


def _torch_report() -> list[tuple[str, str]]:
    try:
        import torch

        from ..device import choose_device
    except ImportError as exc:
        return [("torch", f"not importable ({exc})")]
    cuda = "none"
    if torch.cuda.is_available():
        cuda = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return [
        ("torch", f"{torch.__version__} ({torch.get_num_threads()} CPU threads)"),
        ("device (auto)", str(choose_device("auto"))),
        ("cuda device", cuda),
    ]


def _display() -> str:
    if sys.platform != "linux":
        return f"assumed ({sys.platform})"
    variables = ("DISPLAY", "WAYLAND_DISPLAY")
    found = [f"{var}={os.environ[var]}" for var in variables if os.environ.get(var)]
    if found:
        return ", ".join(found)
    return "none: DISPLAY and WAYLAND_DISPLAY are unset (the GUI needs one, e.g. xvfb-run)"


def _qt() -> str:
    try:
        import qtpy
    except Exception as exc:  # qtpy raises its own error when no binding is installed
        return f"not available ({type(exc).__name__}: {exc}); install napari-segany[qt]"
    return f"{qtpy.API_NAME} {qtpy.QT_VERSION}"


def _installed_version(distribution: str) -> str:
    # Read the metadata instead of importing: importing napari takes seconds.
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cache_origin() -> str:
    if os.environ.get(weights.CACHE_ENV):
        return f" (from {weights.CACHE_ENV})"
    return f" (platform default; set {weights.CACHE_ENV} to move it)"
