"""Automatic segmentation on real data: SAM's full grid against the sparse and seeded plans.

For every 2D ``NAME_image.tif`` / ``NAME_labels.tif`` pair in a folder (e.g.
``../shared/data``), square crops of ``--crop`` pixels (the top-left and bottom-right
corners; the whole image when it is no larger) are embedded in memory and segmented with
:func:`napari_segany.segment_slice` under each configuration:

- ``before``: the full 32 x 32 grid decoded 64 points at a time (the defaults before
  issue 16);
- ``grid``: the same grid, with decoder batches sized by their memory;
- ``sparse``: the default, grids coarse to fine skipping what is explained;
- ``seeded``: blob seeds from the image first, then the same.

Each configuration runs in a process of its own (peak resident memory, ``VmHWM``, is the
whole process's: model, embedding and segmentation), crop after crop. Per crop: the
embedding's and the segmentation's seconds, the point prompts decoded, instance F1 at IoU
0.5 and mSA (IoU 0.5:0.95) against the labels. Summary rows average the nuclei crops and
the electron-microscopy crops apart.

Usage::

    python benchmarks/bench_automatic.py DATA_DIR [--configs before grid sparse seeded]
        [--crop 512] [--only NAME ...] [--model mobile_sam] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from _timing import find_pairs, machine, markdown_table, peak_mb, write_json

CONFIGS = {
    "before": {"mode": "grid", "points_per_batch": 64},
    "grid": {"mode": "grid"},
    "sparse": {"mode": "sparse"},
    "seeded": {"mode": "seeded"},
}


Crop = tuple[str, np.ndarray, np.ndarray]


def crops(data: Path, only: list[str] | None, side: int) -> list[Crop]:
    """``(key, image, labels)`` of each crop of each 2D pair."""
    out = []
    for name, image_path, labels_path in find_pairs(data, only, "bench_automatic"):
        image, labels = tifffile.imread(image_path), tifffile.imread(labels_path)
        if image.ndim != 2:
            continue
        h, w = image.shape
        corners = {(0, 0), (max(0, h - side), max(0, w - side))}
        for y, x in sorted(corners):
            key = f"{name} [{y}:{y + side}, {x}:{x + side}]"
            out.append((key, image[y : y + side, x : x + side], labels[y : y + side, x : x + side]))
    return out


def run_config(args: argparse.Namespace) -> list[dict]:
    """One configuration over every crop, in this process."""
    import napari_segany as sg
    from napari_segany.automatic.params import AutomaticParams
    from napari_segany.automatic.segment import segment_slice
    from napari_segany.scores import instance_scores, segmentation_accuracy

    model = sg.load_model(args.model, progress=False)
    decode = model.decode
    decoded = [0]

    def counting(*a, **k):  # count the point prompts the plan asks for
        points = k.get("points")
        decoded[0] += 1 if points is None else len(points)
        return decode(*a, **k)

    model.decode = counting
    params = AutomaticParams(**CONFIGS[args.worker])
    rows = []
    for key, image, truth in crops(args.data, args.only, args.crop):
        t0 = time.perf_counter()
        store = sg.embed(sg.open_volume(image[None]), model, progress=False)
        t1 = time.perf_counter()
        decoded[0] = 0
        found = segment_slice(sg.Segmenter(model, store), 0, params)
        t2 = time.perf_counter()
        f1 = instance_scores(found, truth)["f1"]
        msa = float(segmentation_accuracy(found, truth).mean())
        rows.append(
            {
                "crop": key,
                "embed_s": t1 - t0,
                "segment_s": t2 - t1,
                "points": decoded[0],
                "objects": int(len(np.unique(found)) - 1),
                "truth": int(len(np.unique(truth)) - 1),
                "f1": f1,
                "msa": msa,
                "peak_mb": peak_mb(),
            }
        )
    return rows


def summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Means over the nuclei crops and over the others (electron microscopy)."""
    groups = {"nuclei": [r for r in rows if "nuclei" in r["crop"]]}
    groups["other"] = [r for r in rows if "nuclei" not in r["crop"]]
    out = {}
    for group, members in groups.items():
        if members:
            out[group] = {
                k: float(np.mean([r[k] for r in members]))
                for k in ("embed_s", "segment_s", "points", "f1", "msa")
            }
            out[group]["total_s_max"] = max(r["embed_s"] + r["segment_s"] for r in members)
            out[group]["peak_mb"] = max(r["peak_mb"] for r in members)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, metavar="DATA_DIR", help="folder of image/labels pairs")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--crop", type=int, default=512, help="crop side in pixels (512)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these pairs, e.g. em2d_01")
    parser.add_argument("--model", default="mobile_sam", help="model name or checkpoint path")
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_config(args)))
        return

    results = {}
    for config in args.configs:
        command = [sys.executable, __file__, str(args.data), "--worker", config]
        command += ["--crop", str(args.crop), "--model", args.model]
        command += ["--only", *args.only] if args.only else []
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"bench_automatic: {config} failed:\n{done.stderr}")
        results[config] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{config}: done", file=sys.stderr, flush=True)

    headers = ["crop", "config", "embed s", "segment s", "points", "found / truth", "F1", "mSA"]
    rows = [
        [
            r["crop"],
            config,
            f"{r['embed_s']:.1f}",
            f"{r['segment_s']:.1f}",
            str(r["points"]),
            f"{r['objects']} / {r['truth']}",
            f"{r['f1']:.3f}",
            f"{r['msa']:.3f}",
        ]
        for i in range(len(next(iter(results.values()))))
        for config, runs in results.items()
        for r in [runs[i]]
    ]
    print(markdown_table(headers, rows))
    summaries = {config: summary(runs) for config, runs in results.items()}
    headers = ["config", "crops", "segment s (mean)", "embed + segment s (worst)", "points"]
    headers += ["F1", "mSA", "peak MB"]
    rows = [
        [
            config,
            group,
            f"{s['segment_s']:.1f}",
            f"{s['total_s_max']:.1f}",
            f"{s['points']:.0f}",
            f"{s['f1']:.3f}",
            f"{s['msa']:.3f}",
            f"{s['peak_mb']:.0f}",
        ]
        for group in ("nuclei", "other")
        for config, groups in summaries.items()
        if group in groups
        for s in [groups[group]]
    ]
    print()
    print(markdown_table(headers, rows))
    if args.out:
        payload = {
            "machine": machine(),
            "model": args.model,
            "crop": args.crop,
            "configs": CONFIGS,
            "results": results,
            "summary": summaries,
        }
        write_json(args.out, payload)


if __name__ == "__main__":
    main()
