"""Objects carried through z, scored in 3D: today's propagation on real and synthetic volumes.

For every 3D ``NAME_image.tif`` / ``NAME_labels.tif`` pair in a folder (e.g.
``../shared/data``), and for the bundled synthetic nuclei volume, each object gets one
prompt on its largest slice (a box, then a point) and is carried through the volume by
:meth:`napari_segany.Segmenter.propagate` (:func:`napari_segany.evaluate_in_3d`). Reported
per volume and start: mean 3D IoU, mSA, SA50, median and mean z-extent error, seconds per
object, and the process's peak memory. Embeddings can be kept between runs with
``--stores DIR``.

Usage::

    python benchmarks/bench_propagation.py DATA_DIR [--only NAME ...] [--stores DIR]
        [--out results.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

import napari_segany as sg
from _timing import machine, markdown_table, write_json
from bench_accuracy import peak_mb
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
    reports = {}
    for start in STARTS:
        print(f"{name}: start={start}", file=sys.stderr)
        report = sg.evaluate_in_3d(segmenter, None, truth, start=start, progress=args.progress)
        reports[start] = report.as_dict()
    return {
        "name": name,
        "shape": list(truth.shape),
        "embed_seconds": embed_s,
        "reports": reports,
        "peak_mb": peak_mb(),
    }


def table(results: list[dict]) -> str:
    headers = ["volume", "start", "objects", "3D IoU", "mSA", "SA50", "z error median / mean"]
    headers += ["s / object", "peak MB"]
    rows = []
    for result in results:
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
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()

    model = sg.load_model(args.model, device=args.device)
    results = [run(*item, model, args) for item in volumes(args.data, args.only)]
    print(table(results))
    if args.out:
        write_json(args.out, {"machine": machine(), "model": model.name, "volumes": results})
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
