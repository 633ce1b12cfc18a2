"""``napari-segany models``, ``fetch``, ``doctor`` and ``demo``: the checkpoints, the
setup, and the first run."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__, weights
from .errors import PACKAGE, fail, unwritable

if TYPE_CHECKING:
    pass

__all__ = [
    "demo_command",
    "doctor_command",
    "fetch_command",
    "models_command",
]


def models_command(args: argparse.Namespace) -> int:
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


def fetch_command(args: argparse.Namespace) -> int:
    path = weights.fetch(args.name, progress=not args.no_progress)
    print(path)
    return 0


def doctor_command(args: argparse.Namespace) -> int:
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


def demo_command(args: argparse.Namespace) -> int:
    try:
        from ..demo import run_demo  # pulls in torch and the engine: only when asked for
    except ModuleNotFoundError as exc:
        if exc.name != f"{PACKAGE}.demo":
            raise
        return fail("this installation has no demo module")
    from ..device import choose_device
    from ..model import CheckpointError

    out = Path(args.out)
    try:
        choose_device(args.device)  # a typo in --device fails here, before any work
    except ValueError as exc:
        return fail(exc)
    problem = unwritable(out, "an output folder")
    if problem:
        return fail(problem)
    try:
        result = run_demo(
            out=out,
            model=args.model,
            device=args.device,
            pipeline=not args.click_only,
            points_per_side=args.points_per_side,
        )
    except CheckpointError as exc:  # e.g. --model pointing at a file that is not SAM's
        return fail(exc)
    except OSError as exc:  # a read-only or full file system
        return fail(exc, path=out, doing="cannot write into the output folder")
    print(result.summary())
    return 0


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
