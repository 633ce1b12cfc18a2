"""Shared by the benchmark scripts: interleaved timing, percentiles, machine facts, output.

Timings on a shared machine drift with the load of other processes, so variants are never
timed one after the other: every round runs each variant once, in an order that rotates
from round to round, and the ratios come from the same rounds.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Summary:
    """Milliseconds of one variant: median, 95th percentile, best and the number of runs."""

    p50: float
    p95: float
    min: float
    n: int

    def cell(self) -> str:
        """``"p50 / p95"`` for a table cell."""
        return f"{_fmt(self.p50)} / {_fmt(self.p95)}"


def _fmt(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(seconds: Sequence[float]) -> Summary:
    """Summary in milliseconds of timings in seconds."""
    ms = [s * 1e3 for s in seconds]
    return Summary(percentile(ms, 50), percentile(ms, 95), min(ms), len(ms))


def interleaved(
    variants: Mapping[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Time each variant ``repeats`` times, alternating between variants; seconds per call.

    Parameters
    ----------
    variants
        Name -> a callable doing one unit of work (its result is discarded after ``sync``).
    repeats
        Timed rounds; each round calls every variant once.
    warmup
        Untimed rounds first (lazy initialisation, allocator and cache warm-up).
    sync
        Called before the clock stops, e.g. ``torch.cuda.synchronize`` for GPU work.
    """
    names = list(variants)
    done = sync or (lambda: None)
    for _ in range(warmup):
        for name in names:
            variants[name]()
        done()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            start = time.perf_counter()
            variants[name]()
            done()
            times[name].append(time.perf_counter() - start)
    return times


def _cpu_model() -> str:
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def machine() -> dict[str, object]:
    """What the numbers depend on: hardware, torch build and threads, and when."""
    info: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):
        info["load_average"] = list(os.getloadavg())
    return info


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with padded columns (readable in a terminal and in docs)."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def write_json(path: str | Path, payload: Mapping[str, object]) -> None:
    """Write results as indented JSON (dataclasses such as :class:`Summary` as dicts)."""

    def default(obj: object) -> object:
        if isinstance(obj, Summary):
            return asdict(obj)
        raise TypeError(f"cannot write {type(obj).__name__} to JSON")

    Path(path).write_text(json.dumps(payload, indent=1, default=default) + "\n")


def find_pairs(folder: Path, only: list[str] | None, tool: str) -> list[tuple[str, Path, Path]]:
    """``(name, image, labels)`` of every ``NAME_image.tif`` with a ``NAME_labels.tif``."""
    pairs = []
    for image in sorted(folder.glob("*_image.tif")):
        name = image.name.removesuffix("_image.tif")
        labels = folder / f"{name}_labels.tif"
        if labels.exists() and (not only or name in only):
            pairs.append((name, image, labels))
    missing = sorted(set(only or ()) - {name for name, _, _ in pairs})
    if missing:
        raise SystemExit(f"{tool}: no image/labels pair for {', '.join(missing)}")
    return pairs


def peak_mb() -> float:
    """This process's peak resident memory so far (Linux: kB; macOS: bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)
