"""Fine-tuning on real data: the base model against the one tuned on a third of the objects.

For every ``NAME_image.tif`` / ``NAME_labels.tif`` pair in a folder (2D images and 3D
volumes, e.g. ``../shared/data``), the image is embedded once, in memory, on the slices
the run needs. A third of the label ids, drawn at random (``--seed``), is given to
:func:`napari_segany.finetune` (which holds back a share of those to decide when to stop
and whether to keep the tuned model); the other two thirds are never seen in training and
are scored with :func:`napari_segany.evaluate_interactive` on a Segmenter of the base
model and of the model returned, side by side in the same run: a point start with eight
corrective clicks (IoU after one click and after eight) and a box start (IoU of the box).
A volume's tested objects are those of every ``--every``-th slice; training uses every
slice of its ids. Beside the scores: the wall time of the fine-tuning and the process's
peak memory (``ru_maxrss``) after each image. A pooled row averages over every tested
object of every image.

Usage::

    python benchmarks/bench_finetune.py DATA_DIR [--model mobile_sam] [--budget SECONDS]
        [--every 10] [--only NAME ...] [--out results.json] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import napari_segany as sg
from _timing import find_pairs, machine, markdown_table, peak_mb, write_json
from napari_segany.evaluate.runs import fit_labels, read_labels
from napari_segany.segmenter import Segmenter

SCORES = ("click", "box", "clicks8")
"""One click, the box, and eight corrective clicks after one click."""
ITERATIONS = 8


def split(truth: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A third of the label ids for training (at random), the rest for testing."""
    ids = np.unique(truth[truth > 0])
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(ids, size=len(ids) // 3, replace=False))
    return train, np.setdiff1d(ids, train)


def scores(segmenter: Segmenter, test: np.ndarray, progress: bool) -> dict[str, list[float]]:
    """Each tested object's IoU after one click, after the box, after eight clicks."""
    point = sg.evaluate_interactive(
        segmenter, None, test, start="point", iterations=ITERATIONS, progress=progress
    )
    box = sg.evaluate_interactive(
        segmenter, None, test, start="box", iterations=0, progress=progress
    )
    return {
        "click": point.ious[:, 0].tolist(),
        "box": box.ious[:, 0].tolist(),
        "clicks8": point.ious[:, -1].tolist(),
    }


def run_image(
    name: str, image: Path, labels: Path, model: sg.SamModel, args: argparse.Namespace
) -> dict:
    volume = sg.open_volume(image)
    with volume:
        truth = fit_labels(read_labels(labels), (len(volume), *volume.slice_shape))
        train_ids, test_ids = split(truth, args.seed)
        train = np.where(np.isin(truth, train_ids), truth, 0)
        test = np.where(np.isin(truth, test_ids), truth, 0)
        if len(test) > 1 and args.every > 1:  # a volume: the tested objects of every Nth slice
            far = np.ones(len(test), dtype=bool)
            far[:: args.every] = False
            test[far] = 0
        needed = [z for z in range(len(truth)) if train[z].any() or test[z].any()]
        t0 = time.perf_counter()
        store = sg.embed(volume, model, None, slices=needed, progress=False)
        embed_s = time.perf_counter() - t0
        result: dict = {
            "name": name,
            "shape": list(truth.shape),
            "ids_trained": len(train_ids),
            "ids_tested": len(test_ids),
            "embedded_slices": len(needed),
            "embed_seconds": embed_s,
        }
        print(f"{name}: fine-tuning on {len(train_ids)} of {len(train_ids) + len(test_ids)} ids")
        t0 = time.perf_counter()
        try:
            tuned, report = sg.finetune(
                [(store, train)],
                model,
                time_budget=args.budget,
                seed=args.seed,
                progress=args.progress,
            )
        except ValueError as exc:  # too few objects to train on
            print(f"{name}: skipped: {exc}", file=sys.stderr)
            return {**result, "skipped": str(exc), "peak_mb": peak_mb()}
        finetune_s = time.perf_counter() - t0
        finetune_peak = peak_mb()
        print(f"{name}: {report.summary()}")
        ious = {"base": scores(Segmenter(model, store), test, args.progress)}
        if report.kept == "tuned":
            ious["tuned"] = scores(Segmenter(tuned, store), test, args.progress)
        else:  # the base came back: scoring it again would give the same numbers
            ious["tuned"] = ious["base"]
    return {
        **result,
        "objects_tested": len(ious["base"]["click"]),
        "finetune_seconds": finetune_s,
        "finetune_peak_mb": finetune_peak,
        "peak_mb": peak_mb(),
        "kept": report.kept,
        "finetune": report.to_json(),
        "mean_iou": {
            model_: {k: float(np.mean(v)) for k, v in by_score.items()}
            for model_, by_score in ious.items()
        },
        "ious": ious,
    }


def pooled(results: list[dict]) -> dict:
    """Every tested object of every image, one mean per model and score."""
    done = [r for r in results if "ious" in r]
    means = {
        m: {k: float(np.mean(np.concatenate([r["ious"][m][k] for r in done]))) for k in SCORES}
        for m in ("base", "tuned")
    }
    return {
        "images": len(done),
        "ids_trained": sum(r["ids_trained"] for r in done),
        "objects_tested": sum(r["objects_tested"] for r in done),
        "finetune_seconds": sum(r["finetune_seconds"] for r in done),
        "peak_mb": max(r["peak_mb"] for r in done),
        "kept": f"{sum(r['kept'] == 'tuned' for r in done)} of {len(done)} tuned",
        "mean_iou": means,
    }


def table(results: list[dict], pool: dict | None) -> str:
    headers = ["image", "ids trained / objects tested", "click", "box", "8 clicks", "kept"]
    headers += ["fine-tune s", "peak MB"]

    def row(name: str, r: dict) -> list[str]:
        if "skipped" in r:
            return [name, f"{r['ids_trained']} / -", "-", "-", "-", "skipped", "-", "-"]
        base, tuned = r["mean_iou"]["base"], r["mean_iou"]["tuned"]
        return [
            name,
            f"{r['ids_trained']} / {r['objects_tested']}",
            *(f"{base[k]:.3f} → {tuned[k]:.3f}" for k in SCORES),
            r["kept"],
            f"{r['finetune_seconds']:.0f}",
            f"{r['peak_mb']:.0f}",
        ]

    rows = [row(r["name"], r) for r in results]
    if pool is not None:
        rows.append(row("**pooled**", pool))
    return "\n".join(
        [
            "mean IoU of the objects not trained on, base → tuned:",
            "",
            markdown_table(headers, rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, metavar="DATA_DIR", help="folder of image/labels pairs")
    parser.add_argument("--model", default="mobile_sam", help="model name or checkpoint path")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    parser.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="fine-tuning seconds per image (default: finetune's, 240 on a CPU, 120 on a GPU)",
    )
    parser.add_argument(
        "--every",
        type=int,
        default=10,
        metavar="N",
        help="volumes: test the objects of every Nth slice (default 10)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the split and the training (0)")
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these pairs, e.g. em2d_01")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()

    pairs = find_pairs(args.data, args.only, "bench_finetune")
    model = sg.load_model(args.model, device=args.device, progress=args.progress)
    results = [run_image(name, image, labels, model, args) for name, image, labels in pairs]
    pool = pooled(results) if any("ious" in r for r in results) else None
    print()
    print(table(results, pool))
    if args.out:
        payload = {
            "machine": machine(),
            "model": model.name,
            "device": str(model.device),
            "budget": args.budget,
            "seed": args.seed,
            "every": args.every,
            "images": results,
            "pooled": pool,
        }
        write_json(args.out, payload)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
