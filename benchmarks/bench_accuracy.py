"""Interactive accuracy on real data: SAM's plain path against the refined one, side by side.

For every ``NAME_image.tif`` / ``NAME_labels.tif`` pair in a folder (2D images and 3D
volumes, e.g. ``../shared/data``), the image is embedded once (in memory, only the slices
with objects) and two Segmenters share the store: ``refine=False`` (SAM's plain path) and
``refine=True``. Each is scored with micro-sam's interactive protocol
(:func:`napari_segany.evaluate_interactive`; the objects of every ``--every``-th slice of a
volume), starting from a point and from a box, with
``--iterations`` corrective clicks: mean IoU at the first prompt and after the last click,
mSA at both, NoC@85 and NoC@90 (the cap is iterations + 1).

Then the latency: single ``Segmenter.predict`` calls with the mask in hand, a click at an
object's deepest point or its tight box, plain and refined interleaved (``_timing.py``);
and the process's peak memory after each image (``ru_maxrss``).

Usage::

    python benchmarks/bench_accuracy.py DATA_DIR [--iterations 8] [--model mobile_sam]
        [--every 10] [--out results.json] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

import napari_segany as sg
from _timing import (
    find_pairs,
    interleaved,
    machine,
    markdown_table,
    peak_mb,
    summarize,
    write_json,
)
from napari_segany.evaluate.prompts import deepest_point, tight_box
from napari_segany.evaluate.runs import fit_labels, read_labels
from napari_segany.segmenter import Segmenter

VARIANTS = {"plain": False, "refined": True}
STARTS = ("point", "box")


def click_prompts(truth: np.ndarray, limit: int = 32) -> tuple[int, list[dict]]:
    """The slice with the most objects and, for up to ``limit`` of its objects, the
    ``predict`` arguments of a click (deepest point) and of a box (tight box)."""
    counts = [np.unique(s).size - 1 for s in truth]
    z = int(np.argmax(counts))
    ids = np.unique(truth[z])
    ids = ids[ids != 0][:limit]
    prompts = []
    for i in ids:
        prompts.append({"points": [deepest_point(truth[z] == i)], "labels": [1]})
        prompts.append({"box": tight_box(truth[z] == i)})
    return z, prompts


def run_image(
    name: str, image: Path, labels: Path, model: sg.SamModel, args: argparse.Namespace
) -> dict:
    volume = sg.open_volume(image)
    with volume:
        truth = fit_labels(read_labels(labels), (len(volume), *volume.slice_shape))
        if len(truth) > 1 and args.every > 1:  # a volume: every Nth slice, as 2D objects
            kept = np.zeros_like(truth)
            kept[:: args.every] = truth[:: args.every]
            truth = kept
        with_objects = [z for z in range(len(truth)) if truth[z].any()]
        t0 = time.perf_counter()
        store = sg.embed(volume, model, None, slices=with_objects, progress=False)
        embed_s = time.perf_counter() - t0
        segmenters = {v: Segmenter(model, store, refine=r) for v, r in VARIANTS.items()}
        reports = {}
        for start, (variant, seg) in itertools.product(STARTS, segmenters.items()):
            print(f"{name}: start={start}, {variant}", file=sys.stderr)
            report = sg.evaluate_interactive(
                seg, None, truth, start=start, iterations=args.iterations, progress=args.progress
            )
            reports[f"{start}/{variant}"] = report.as_dict()
        z, prompts = click_prompts(truth)
        clicks = {}
        for kind in ("points", "box"):
            chosen = [p for p in prompts if kind in p]
            cycles = {v: itertools.cycle(chosen) for v in segmenters}

            def click(variant: str, cycles=cycles):
                seg, where = segmenters[variant], cycles[variant]  # the same prompts in turn
                return lambda: seg.predict(z, **next(where)).mask

            timed = interleaved({v: click(v) for v in segmenters}, args.repeats, warmup=2)
            clicks.update({f"{kind}/{v}": s for v, s in timed.items()})
    return {
        "name": name,
        "shape": list(truth.shape),
        "objects": next(iter(reports.values()))["objects"],
        "embed_seconds": embed_s,
        "reports": reports,
        "click_ms": {v: summarize(s) for v, s in clicks.items()},
        "peak_mb": peak_mb(),
    }


def _pair(result: dict, start: str, value) -> str:
    cells = [value(result["reports"][f"{start}/{v}"]) for v in VARIANTS]
    return " / ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells)


def tables(results: list[dict], iterations: int) -> str:
    last = f"+{iterations} clicks"
    headers = ["image", "start", "objects", "IoU 1st", f"IoU {last}", "mSA 1st", f"mSA {last}"]
    headers += ["NoC@85", "NoC@90"]
    rows = []
    for result, start in itertools.product(results, STARTS):
        rows.append(
            [
                result["name"],
                start,
                str(result["objects"]),
                _pair(result, start, lambda r: r["rows"][0]["mean_iou"]),
                _pair(result, start, lambda r: r["rows"][-1]["mean_iou"]),
                _pair(result, start, lambda r: r["rows"][0]["msa"]),
                _pair(result, start, lambda r: r["rows"][-1]["msa"]),
                _pair(result, start, lambda r: r["noc85"]),
                _pair(result, start, lambda r: r["noc90"]),
            ]
        )
    speed = [
        [
            r["name"],
            " x ".join(map(str, r["shape"])),
            f"{r['embed_seconds']:.1f}",
            " / ".join(f"{r['click_ms'][f'points/{v}'].p50:.1f}" for v in VARIANTS),
            " / ".join(f"{r['click_ms'][f'box/{v}'].p50:.1f}" for v in VARIANTS),
            f"{r['peak_mb']:.0f}",
        ]
        for r in results
    ]
    return "\n\n".join(
        [
            "accuracy (plain / refined):",
            markdown_table(headers, rows),
            "latency, median ms with the mask (plain / refined), and peak memory:",
            markdown_table(["image", "shape", "embed s", "click ms", "box ms", "peak MB"], speed),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, metavar="DATA_DIR", help="folder of image/labels pairs")
    parser.add_argument("--iterations", type=int, default=8, help="corrective clicks (default 8)")
    parser.add_argument("--model", default="mobile_sam", help="model name or checkpoint path")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    parser.add_argument("--repeats", type=int, default=20, help="timed click rounds (default 20)")
    parser.add_argument(
        "--every",
        type=int,
        default=10,
        metavar="N",
        help="volumes: evaluate the objects of every Nth slice (default 10)",
    )
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these pairs, e.g. em2d_01")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()

    pairs = find_pairs(args.data, args.only, "bench_accuracy")
    model = sg.load_model(args.model, device=args.device)
    results = [run_image(name, image, labels, model, args) for name, image, labels in pairs]
    print(tables(results, args.iterations))
    if args.out:
        payload = {
            "machine": machine(),
            "model": model.name,
            "device": str(model.device),
            "iterations": args.iterations,
            "images": results,
        }
        write_json(args.out, payload)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
