"""Objects carried through z, scored in 3D: today's propagation on real and synthetic volumes.

For every 3D ``NAME_image.tif`` / ``NAME_labels.tif`` pair in a folder (e.g.
``../shared/data``), and for the bundled synthetic nuclei volume, each object gets one
prompt on its largest slice (a box, then a point) and is carried through the volume by
:meth:`napari_segany.Segmenter.propagate` (:func:`napari_segany.evaluate_in_3d`). Reported
per volume and start: mean 3D IoU, mSA, SA50, median and mean z-extent error, seconds per
object, and the process's peak memory. Embeddings can be kept between runs with
``--stores DIR``.

Also timed: one object carried through 30 embedded slices with a stop rule that never
stops (the cost of 29 slice steps; median of 3), on every volume that deep. With
``--automatic``: automatic segmentation of the synthetic sample, linked through z, scored
against its truth before and after each object's ends are trimmed (F1 at IoU 0.5, median
3D IoU of matched objects, labels on slices with no object, voxels found over true).

The script runs on older versions of the package too (it only uses what they had), so
today's path can be measured side by side with an earlier commit's::

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before/src python benchmarks/bench_propagation.py DATA_DIR

Usage::

    python benchmarks/bench_propagation.py DATA_DIR [--only NAME ...] [--stores DIR]
        [--automatic] [--out results.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

import napari_segany as sg
from _timing import machine, markdown_table, peak_mb, write_json
from napari_segany.sample_data import nuclei_volume

STARTS = ("box", "point")


def volumes(folder: Path, only: list[str] | None) -> list[tuple[str, object, np.ndarray]]:
    """``(name, image, labels)`` of the 3D pairs in ``folder`` and the synthetic sample."""
    found = []
    for image in sorted(folder.glob("*_image.tif")):
        name = image.name.removesuffix("_image.tif")
        labels = folder / f"{name}_labels.tif"
        truth = tifffile.imread(labels) if labels.exists() else None
        if truth is not None and truth.ndim == 3 and (not only or name in only):
            found.append((name, str(image), truth))
    if not only or "synthetic" in only:
        volume, truth = nuclei_volume()
        found.append(("synthetic", volume, truth))
    return found


def run(name: str, image: object, truth: np.ndarray, model: sg.SamModel, args) -> dict:
    volume = sg.open_volume(image)
    path = None if args.stores is None else args.stores / f"{name}.embeddings.zarr"
    t0 = time.perf_counter()
    store = sg.embed(volume, model, path, progress=args.progress)
    embed_s = time.perf_counter() - t0
    segmenter = sg.Segmenter(model, store)
    through = through_slices(segmenter, truth)
    reports = {}
    for start in STARTS:
        print(f"{name}: start={start}", file=sys.stderr)
        report = sg.evaluate_in_3d(segmenter, None, truth, start=start, progress=args.progress)
        reports[start] = report.as_dict()
    return {
        "name": name,
        "shape": list(truth.shape),
        "embed_seconds": embed_s,
        "through_30_slices_s": through,
        "reports": reports,
        "peak_mb": peak_mb(),
    }


def never_stops():
    """A stop rule with every check off, in whatever fields this version's rule has."""
    from napari_segany.propagate import StopRule

    off = {"max_area_ratio": float("inf")}
    return StopRule(**{f.name: off.get(f.name, 0) for f in dataclasses.fields(StopRule)})


def through_slices(segmenter, truth: np.ndarray, depth: int = 30) -> float | None:
    """Median seconds to carry the biggest object through ``depth`` slices (3 runs)."""
    if truth.shape[0] < depth:
        return None
    ids, counts = np.unique(truth[truth > 0], return_counts=True)
    label = ids[np.argmax(counts)]
    areas = (truth == label).sum(axis=(1, 2))
    z = int(np.argmax(areas))
    lo = min(max(z - depth // 2, 0), truth.shape[0] - depth)
    rule, times = never_stops(), []
    for _ in range(3):
        t0 = time.perf_counter()
        segmenter.propagate(z, truth[z] == label, z_range=(lo, lo + depth - 1), stop=rule)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def automatic(model: sg.SamModel, args) -> dict:
    """Automatic 3D labels of the synthetic sample, scored before and after trimming."""
    from scipy.optimize import linear_sum_assignment

    volume, truth = nuclei_volume()
    path = None if args.stores is None else args.stores / "synthetic.embeddings.zarr"
    segmenter = sg.Segmenter(model, sg.embed(sg.open_volume(volume), model, path, progress=False))
    fields = {f.name for f in dataclasses.fields(sg.AutomaticParams)}
    untrimmed = {"min_signal_ratio": 0.0} if "min_signal_ratio" in fields else {}
    t0 = time.perf_counter()
    linked = sg.segment_automatic(segmenter, progress=args.progress, **untrimmed)
    seconds = time.perf_counter() - t0
    found = {"linked": linked}
    if untrimmed:
        from napari_segany.automatic.segment import _trim_ends

        trimmed = linked.copy()
        _trim_ends(trimmed, range(len(trimmed)), segmenter.store.volume.model_slice, 0.4)
        found["linked and trimmed"] = trimmed

    def score(labels: np.ndarray) -> dict:
        t_ids, p_ids = np.unique(truth)[1:], np.unique(labels)[1:]
        iou = np.zeros((t_ids.size, p_ids.size))
        for j, p in enumerate(p_ids):
            mine = labels == p
            hit, n = np.unique(truth[mine], return_counts=True)
            for t, k in zip(hit, n, strict=True):
                if t:
                    i = int(np.searchsorted(t_ids, t))
                    iou[i, j] = k / ((truth == t).sum() + mine.sum() - k)
        rows, cols = linear_sum_assignment(-iou)
        matched = iou[rows, cols][iou[rows, cols] >= 0.5]
        empty = [z for z in range(truth.shape[0]) if not truth[z].any() and labels[z].any()]
        return {
            "objects": int(p_ids.size),
            "f1": 2 * matched.size / (t_ids.size + p_ids.size),
            "median_matched_iou": float(np.median(matched)) if matched.size else 0.0,
            "labels_on_empty_slices": empty,
            "voxels_over_truth": float((labels > 0).sum() / (truth > 0).sum()),
        }

    return {"seconds": seconds, **{k: score(v) for k, v in found.items()}}


def table(results: list[dict]) -> str:
    headers = ["volume", "start", "objects", "3D IoU", "mSA", "SA50", "z error median / mean"]
    headers += ["s / object", "30 slices s", "peak MB"]
    rows = []
    for result in results:
        through = result["through_30_slices_s"]
        for start, r in result["reports"].items():
            errors = np.array(r["per_object"]["z_error"])
            rows.append(
                [
                    result["name"],
                    start,
                    str(r["objects"]),
                    f"{r['mean_iou']:.3f}",
                    f"{r['msa']:.3f}",
                    f"{r['sa50']:.3f}",
                    f"{r['median_z_error']:.1f} / {errors.mean():.2f}",
                    f"{r['seconds_per_object']:.2f}",
                    "-" if through is None else f"{through:.2f}",
                    f"{result['peak_mb']:.0f}",
                ]
            )
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, metavar="DATA_DIR", help="folder of image/labels pairs")
    parser.add_argument("--model", default="mobile_sam", help="model name or checkpoint path")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="e.g. nuclei3d_01 synthetic")
    parser.add_argument("--stores", type=Path, help="keep the embedding stores in this folder")
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    parser.add_argument(
        "--automatic", action="store_true", help="also score automatic 3D labels (minutes)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()

    model = sg.load_model(args.model, device=args.device)
    results = [run(*item, model, args) for item in volumes(args.data, args.only)]
    print(table(results))
    auto = None
    if args.automatic:
        auto = automatic(model, args)
        print(f"\nautomatic 3D labels of the synthetic sample ({auto['seconds']:.0f} s):")
        headers = ["labels", "objects", "F1@0.5", "median matched 3D IoU", "empty slices"]
        headers.append("voxels / truth")
        rows = [
            [
                name,
                str(r["objects"]),
                f"{r['f1']:.3f}",
                f"{r['median_matched_iou']:.3f}",
                str(r["labels_on_empty_slices"]),
                f"{r['voxels_over_truth']:.2f}",
            ]
            for name, r in auto.items()
            if name != "seconds"
        ]
        print(markdown_table(headers, rows))
    if args.out:
        payload = {"machine": machine(), "model": model.name, "volumes": results}
        write_json(args.out, {**payload, "automatic": auto})
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
