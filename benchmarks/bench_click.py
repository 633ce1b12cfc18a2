"""Click to mask on the CPU with MobileSAM: our Segmenter, the plain path and the reference.

A click is one positive point on a bright disk of a synthetic slice, a different position
in every round, with three candidate masks; it is timed from the prompt to the boolean mask
in hand, the slice's embedding already computed:

- ours: ``Segmenter.predict(z, points=[p], labels=[1]).mask`` on an in-memory embedding
  store (``embed(open_volume(image), model)``): the decoder, then only the chosen mask
  upscaled, only where it can be. For 2048 x 2048 the store is tiled by default (windows of
  1024 with a halo); a second row uses ``tile_size=2048`` (one window, no tiling).
- plain: our network with ``fast=False`` (the reference's float32 arithmetic): prompt
  encoder and decoder, then every candidate upscaled to the full slice and thresholded.
- reference: MobileSAM's ``SamPredictor.predict(point_coords, point_labels,
  multimask_output=True)`` with ``set_image`` done once beforehand (loaded as in
  ``bench_model.py``); skipped with a note when it cannot be imported.

Then propagation through z (ms per slice per object) and batched decoding of 1, 4 and 16
box prompts in one ``predict_many`` call (ms per object), and a torch.profiler / cProfile
breakdown of our click. Variants are timed interleaved in one process (``_timing.py``).

Usage::

    python benchmarks/bench_click.py [--repeats N] [--out results.json]

For the reference columns, make ``segment_anything`` 1.0 importable and point
``--mobile-sam-code`` at MobileSAM's ``tiny_vit_sam.py`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import pstats
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

import napari_segany as sg
from _timing import interleaved, machine, markdown_table, summarize, write_json
from bench_model import MOBILE_SAM_CODE_ENV, load_reference
from napari_segany.model import ImageEmbedding, SamModel
from napari_segany.propagate import propagate_objects
from napari_segany.segmenter import Prompt, Segmenter
from napari_segany.weights import fetch

SIZES = (512, 2048)
THREAD_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SEED = 0


# --- synthetic data ---------------------------------------------------------------------------


def disks_image(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 slice with bright disks on a noisy background, and the disks' (y, x, r).

    16 disks on a jittered 4 x 4 grid, radius ~4-7% of the side (at least 18 pixels).
    """
    cell = size / 4
    disks = []
    for i, j in itertools.product(range(4), range(4)):
        r = max(18.0, size * rng.uniform(0.04, 0.07))
        cy = (i + 0.5) * cell + rng.uniform(-0.15, 0.15) * cell
        cx = (j + 0.5) * cell + rng.uniform(-0.15, 0.15) * cell
        disks.append((cy, cx, r))
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    image = rng.normal(50.0, 12.0, (size, size)).astype(np.float32)
    for cy, cx, r in disks:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += rng.uniform(110.0, 170.0)
    image = (image - image.min()) / (image.max() - image.min()) * 255.0
    return image.round().astype(np.uint8), np.array(disks)


def disk_mask(shape: tuple[int, int], disk: np.ndarray) -> np.ndarray:
    cy, cx, r = disk
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def click_positions(
    disks: np.ndarray, n: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, int]]:
    """``n`` clicks: a disk in turn (shuffled) and a point inside its inner half."""
    order = np.concatenate([rng.permutation(len(disks)) for _ in range(n // len(disks) + 1)])
    clicks = []
    for k in order[:n]:
        cy, cx, r = disks[k]
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5 * r)
        clicks.append((np.array([cy + radius * np.sin(angle), cx + radius * np.cos(angle)]), k))
    return clicks


def ellipsoids_volume(
    n_objects: int, rng: np.random.Generator, shape: tuple[int, int, int] = (8, 256, 256)
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A uint8 volume with ``n_objects`` bright ellipsoids spanning all slices, and each one's
    boolean (Z, Y, X) ground truth."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    image = rng.normal(50.0, 12.0, shape).astype(np.float32)
    centres = [(128, 128), (70, 70), (190, 180), (60, 190)][:n_objects]
    truths = []
    for cy, cx in centres:
        a = 55.0 if n_objects == 1 else 35.0
        inside = (
            ((zz - (shape[0] - 1) / 2) / (shape[0] / 2 + 0.5)) ** 2
            + ((yy - cy) / a) ** 2
            + ((xx - cx) / (0.8 * a)) ** 2
        ) <= 1.0
        image[inside] += 140.0
        truths.append(inside)
    image = (image - image.min()) / (image.max() - image.min()) * 255.0
    return image.round().astype(np.uint8), truths


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# --- the three click paths --------------------------------------------------------------------


def cycling(clicks: list[tuple[np.ndarray, int]]) -> Callable[[], np.ndarray]:
    """A fresh iterator over the click positions: every variant sees the same sequence."""
    it: Iterator[tuple[np.ndarray, int]] = itertools.cycle(clicks)
    return lambda: next(it)[0]


def ours_click(seg: Segmenter, point: np.ndarray) -> np.ndarray:
    return seg.predict(0, points=[point], labels=[1]).mask


def plain_click(model: SamModel, embedding: ImageEmbedding, point: np.ndarray) -> np.ndarray:
    """Prompt encoder + decoder, every candidate upscaled to the slice, thresholded; the best
    candidate by predicted IoU."""
    decoded = model.decode(embedding, points=point[None], labels=np.array([1]), multimask=True)
    masks = (model.upscale(decoded.low_res_logits, embedding) > 0).cpu().numpy()
    return masks[0, int(decoded.iou[0].argmax())]


def reference_click(predictor: object, point: np.ndarray) -> np.ndarray:
    masks, scores, _ = predictor.predict(
        point_coords=point[None, ::-1].copy(), point_labels=np.array([1]), multimask_output=True
    )
    return masks[int(np.argmax(scores))]


def paired_ratio(seconds: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``num``'s time over ``den``'s in the same round."""
    return float(np.median(np.divide(seconds[num], seconds[den])))


# --- the benchmark ----------------------------------------------------------------------------


def bench_clicks(args: argparse.Namespace, fast: SamModel, plain: SamModel, reference) -> dict:
    rows: dict[str, dict] = {}
    for size in SIZES:
        rng = np.random.default_rng(SEED + size)
        image, disks = disks_image(size, rng)
        volume = sg.open_volume(image)
        print(f"{size} x {size}: embedding", flush=True)
        t0 = time.perf_counter()
        stores = {"ours": sg.embed(volume, fast, progress=False)}
        embed_s = {"ours": time.perf_counter() - t0}
        if size > 1024:
            t0 = time.perf_counter()
            stores["ours untiled"] = sg.embed(volume, fast, tile_size=size, progress=False)
            embed_s["ours untiled"] = time.perf_counter() - t0
        # ours: the default store, named after its tiling
        named = {}
        for store in stores.values():
            n = len(store.grid)
            label = f"ours ({n} windows)" if n > 1 else "ours (1 window)"
            named[label] = Segmenter(fast, store)
        untiled = next(s for s in stores.values() if len(s.grid) == 1)
        # the plain path decodes the whole slice's embedding, held in memory
        plain_embedding = untiled.get(0)
        if reference is not None:
            t0 = time.perf_counter()
            reference.set_image(volume.model_slice(0))
            embed_s["reference"] = time.perf_counter() - t0

        n_clicks = args.repeats + args.warmup
        clicks = click_positions(disks, n_clicks, rng)

        # parity, untimed: the same clicks through every path
        truth = {k: disk_mask(image.shape, disks[k]) for k in set(k for _, k in clicks)}
        quality: dict[str, list[float]] = {}
        agreement: dict[str, list[float]] = {}
        for point, k in clicks[: args.parity_clicks]:
            masks = {label: ours_click(seg, point) for label, seg in named.items()}
            masks["plain"] = plain_click(plain, plain_embedding, point)
            if reference is not None:
                masks["reference"] = reference_click(reference.predictor, point)
            for name, m in masks.items():
                quality.setdefault(name, []).append(iou(m, truth[k]))
                if name != "plain":
                    agreement.setdefault(name, []).append(iou(m, masks["plain"]))

        variants: dict[str, Callable[[], object]] = {}
        for label, seg in named.items():
            nxt = cycling(clicks)
            variants[label] = lambda seg=seg, nxt=nxt: ours_click(seg, nxt())
        nxt = cycling(clicks)
        variants["plain"] = lambda nxt=nxt, emb=plain_embedding: plain_click(plain, emb, nxt())
        if reference is not None:
            nxt = cycling(clicks)
            variants["reference"] = lambda nxt=nxt: reference_click(reference.predictor, nxt())
        print(f"{size} x {size}: {args.repeats} interleaved rounds of {', '.join(variants)}")
        seconds = interleaved(variants, args.repeats, warmup=args.warmup)
        ratios = {}
        for label in named:
            ratios[f"{label} / plain"] = paired_ratio(seconds, label, "plain")
            if reference is not None:
                ratios[f"{label} / reference"] = paired_ratio(seconds, label, "reference")
        rows[f"{size}x{size}"] = {
            "slice_shape": [size, size],
            "windows": {
                label: [list(w) for w in s.store.grid.windows] for label, s in named.items()
            },
            "embed_seconds": embed_s,
            "clicks_yx": [p.tolist() for p, _ in clicks],
            "seconds": seconds,
            "summary": {k: summarize(v) for k, v in seconds.items()},
            "ratios": ratios,
            "iou_with_disk_median": {k: float(np.median(v)) for k, v in quality.items()},
            "iou_with_plain_median": {k: float(np.median(v)) for k, v in agreement.items()},
            "iou_with_plain_min": {k: float(np.min(v)) for k, v in agreement.items()},
        }
    return rows


def bench_propagation(args: argparse.Namespace, fast: SamModel) -> dict:
    """ms per decoded slice per object of ``propagate`` from the middle slice, 1 and 3 objects."""
    cases = {}
    for n_objects in (1, 3):
        rng = np.random.default_rng(SEED + 100 + n_objects)
        volume_array, truths = ellipsoids_volume(n_objects, rng)
        store = sg.embed(sg.open_volume(volume_array, axes="ZYX"), fast, progress=False)
        seg = Segmenter(fast, store)
        mid = volume_array.shape[0] // 2
        objects = [{mid: t[mid]} for t in truths]
        # count decoder calls and objects decoded (the slices each run actually visits)
        counter = {"calls": 0, "objects": 0}
        original = seg.predict_many

        def counting(z, prompts, *, multimask=None, _orig=original, _c=counter):
            _c["calls"] += 1
            _c["objects"] += len(prompts)
            return _orig(z, prompts, multimask=multimask)

        seg.predict_many = counting  # type: ignore[method-assign]
        result = propagate_objects(seg, objects)
        per_run = dict(counter)
        ious = [iou(r, t) for r, t in zip(result, truths, strict=True)]
        cases[n_objects] = (seg, objects, per_run, ious, volume_array.shape)

    variants = {
        f"{n} object{'s' * (n > 1)}": (lambda seg=seg, objs=objs: propagate_objects(seg, objs))
        for n, (seg, objs, *_rest) in cases.items()
    }
    repeats = max(3, args.repeats // 5)
    print(f"propagation: {repeats} interleaved rounds of {', '.join(variants)}", flush=True)
    seconds = interleaved(variants, repeats, warmup=1)
    out = {}
    for (_seg, _objs, count, ious, shape), (name, secs) in zip(
        cases.values(), seconds.items(), strict=True
    ):
        per = [s / count["objects"] for s in secs]
        out[name] = {
            "volume_shape": list(shape),
            "decoder_calls_per_run": count["calls"],
            "object_slices_per_run": count["objects"],
            "seconds_per_run": secs,
            "per_run": summarize(secs),
            "per_slice_per_object": summarize(per),
            "iou_with_truth_3d": ious,
        }
    return out


def bench_batch(args: argparse.Namespace, fast: SamModel) -> dict:
    """``predict_many`` with 1, 4 and 16 box prompts on the 512 x 512 slice: ms per object."""
    rng = np.random.default_rng(SEED + 512)
    image, disks = disks_image(512, rng)
    seg = Segmenter(fast, sg.embed(sg.open_volume(image), fast, progress=False))
    boxes = [
        Prompt(box=np.array([cy - 1.2 * r, cx - 1.2 * r, cy + 1.2 * r, cx + 1.2 * r]))
        for cy, cx, r in disks
    ]
    counts = (1, 4, 16)
    variants: dict[str, Callable[[], object]] = {}
    for n in counts:
        chosen = boxes[:: 16 // n][:n]
        variants[f"{n} decode"] = lambda c=chosen: seg.predict_many(0, c)
        variants[f"{n} decode+masks"] = lambda c=chosen: [p.mask for p in seg.predict_many(0, c)]
    batched = seg.predict_many(0, boxes)
    single = [seg.predict_many(0, [b])[0] for b in boxes]
    identical = all(np.array_equal(a.mask, b.mask) for a, b in zip(batched, single, strict=True))
    max_diff = max(
        float((a.low_res_logits - b.low_res_logits).abs().max())
        for a, b in zip(batched, single, strict=True)
    )
    quality = [iou(p.mask, disk_mask(image.shape, d)) for p, d in zip(batched, disks, strict=True)]
    repeats = max(5, args.repeats // 2)
    print(f"predict_many: {repeats} interleaved rounds of {', '.join(variants)}", flush=True)
    seconds = interleaved(variants, repeats, warmup=args.warmup)
    out: dict[str, object] = {
        "batched_equals_single_masks": identical,
        "batched_vs_single_max_abs_logit_diff": max_diff,
        "iou_with_disk_median": float(np.median(quality)),
    }
    for n in counts:
        for what in ("decode", "decode+masks"):
            secs = seconds[f"{n} {what}"]
            out[f"{n} {what}"] = {
                "seconds": secs,
                "per_call": summarize(secs),
                "per_object": summarize([s / n for s in secs]),
            }
    return out


def profile_click(args: argparse.Namespace, fast: SamModel) -> dict:
    """torch.profiler and cProfile of our 512 x 512 click."""
    from torch.profiler import ProfilerActivity, profile, record_function

    rng = np.random.default_rng(SEED + 512)
    image, disks = disks_image(512, rng)
    seg = Segmenter(fast, sg.embed(sg.open_volume(image), fast, progress=False))
    clicks = click_positions(disks, args.profile_clicks, rng)
    for point, _ in clicks[:3]:
        ours_click(seg, point)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for point, _ in clicks:
            with record_function("click"):
                ours_click(seg, point)
    averages = prof.key_averages()
    torch_table = averages.table(
        sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=48
    )
    ops = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)
    total_self = sum(e.self_cpu_time_total for e in averages)
    top = [
        {
            "name": e.key,
            "calls_per_click": e.count / len(clicks),
            "self_ms_per_click": e.self_cpu_time_total / 1e3 / len(clicks),
            "self_share": e.self_cpu_time_total / total_self if total_self else 0.0,
        }
        for e in ops[:25]
    ]
    profiler = cProfile.Profile()
    profiler.enable()
    for point, _ in clicks:
        ours_click(seg, point)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
    return {
        "clicks": len(clicks),
        "torch_profiler_top_ops": top,
        "torch_profiler_table": torch_table,
        "cprofile_cumulative": text.getvalue(),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    machine_at_start = machine()
    checkpoint = fetch("mobile_sam")
    fast = sg.load_model("mobile_sam", device="cpu")
    plain = sg.load_model("mobile_sam", device="cpu", fast=False)
    reference, note = load_reference(checkpoint, args.mobile_sam_code)
    print(f"reference: {note}", flush=True)
    results: dict[str, object] = {
        "benchmark": "bench_click",
        "machine": machine_at_start,
        "settings": {
            "repeats": args.repeats,
            "warmup": args.warmup,
            "seed": SEED,
            "image": "uint8 slice, 16 bright disks on a jittered 4 x 4 grid, Gaussian noise",
            "click": "one positive point inside a disk's inner half, multimask (3 candidates)",
        },
        # libgomp's spin-waiting threads make 2-thread runs several times slower when other
        # processes load the cores (OMP_WAIT_POLICY=PASSIVE avoids it): record what was set
        "environment": {k: os.environ.get(k) for k in THREAD_ENV},
        "model": {"name": "mobile_sam", "checkpoint": str(checkpoint), "sha256": fast.sha256},
        "reference": {
            "available": reference is not None,
            "note": note,
            **({"source": reference.source} if reference is not None else {}),
        },
    }
    results["clicks"] = bench_clicks(args, fast, plain, reference)
    if not args.clicks_only:
        results["propagation"] = bench_propagation(args, fast)
        results["predict_many"] = bench_batch(args, fast)
    if args.profile_clicks:
        results["profile"] = profile_click(args, fast)
    results["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return results


# --- output -----------------------------------------------------------------------------------


def click_table(results: dict) -> str:
    headers = ["slice", "path", "p50 / p95 ms", "ours ÷ plain", "ours ÷ reference"]
    headers += ["IoU with disk", "IoU with plain"]
    lines = []
    for size, row in results["clicks"].items():
        for name, s in row["summary"].items():
            r = row["ratios"]
            lines.append(
                [
                    size,
                    name,
                    s.cell(),
                    f"{r[f'{name} / plain']:.2f}" if f"{name} / plain" in r else "",
                    f"{r[f'{name} / reference']:.2f}" if f"{name} / reference" in r else "",
                    f"{row['iou_with_disk_median'][name]:.3f}",
                    f"{row['iou_with_plain_median'][name]:.3f}" if name != "plain" else "",
                ]
            )
    return markdown_table(headers, lines)


def propagation_table(results: dict) -> str:
    headers = ["objects", "volume", "slices x objects / run", "ms / run", "ms / slice / object"]
    headers += ["3D IoU with truth"]
    lines = []
    for name, row in results["propagation"].items():
        lines.append(
            [
                name,
                " x ".join(map(str, row["volume_shape"])),
                str(row["object_slices_per_run"]),
                row["per_run"].cell(),
                row["per_slice_per_object"].cell(),
                ", ".join(f"{v:.3f}" for v in row["iou_with_truth_3d"]),
            ]
        )
    return markdown_table(headers, lines)


def batch_table(results: dict) -> str:
    batch = results["predict_many"]
    headers = ["boxes / call", "decode: ms / call", "decode: ms / object"]
    headers += ["+ masks: ms / call", "+ masks: ms / object"]
    lines = []
    for n in (1, 4, 16):
        d, m = batch[f"{n} decode"], batch[f"{n} decode+masks"]
        lines.append(
            [
                str(n),
                d["per_call"].cell(),
                d["per_object"].cell(),
                m["per_call"].cell(),
                m["per_object"].cell(),
            ]
        )
    return markdown_table(headers, lines)


def profile_table(results: dict) -> str:
    prof = results["profile"]
    lines = [
        [
            op["name"],
            f"{op['calls_per_click']:.1f}",
            f"{op['self_ms_per_click']:.2f}",
            f"{100 * op['self_share']:.1f}%",
        ]
        for op in prof["torch_profiler_top_ops"][:15]
    ]
    return markdown_table(["op", "calls / click", "self ms / click", "share"], lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=40, help="timed click rounds (default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="write all raw timings as JSON here")
    parser.add_argument(
        "--parity-clicks", type=int, default=16, help="clicks compared across paths (16)"
    )
    parser.add_argument(
        "--profile-clicks", type=int, default=30, help="clicks profiled (0: no profile)"
    )
    parser.add_argument(
        "--clicks-only", action="store_true", help="skip propagation and predict_many"
    )
    parser.add_argument(
        "--mobile-sam-code",
        default=os.environ.get(MOBILE_SAM_CODE_ENV),
        help="MobileSAM's tiny_vit_sam.py, or a folder holding mobile_sam/modeling/ "
        f"(default: ${MOBILE_SAM_CODE_ENV}, else an installed mobile_sam package)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    results = run(args)
    info = results["machine"]
    print()
    print(
        f"{info['cpu_model']} ({info['cpu_count']} CPUs), torch {info['torch']}, "
        f"{info['torch_threads']} threads, load average at start {info.get('load_average')}; "
        "ms are medians / 95th percentiles of interleaved rounds, ratios the median of each "
        "round's ratio"
    )
    print(f"environment: {results['environment']}")
    if not results["reference"]["available"]:
        print(f"reference columns skipped: {results['reference']['note']}")
    print("\nClick to mask (one positive point, 3 candidates)")
    print(click_table(results))
    if "propagation" in results:
        print("\nPropagation from the middle slice, both directions (projection 'mask')")
        print(propagation_table(results))
        batch = results["predict_many"]
        print(
            "\npredict_many, box prompts on the 512 x 512 slice (batched masks equal single: "
            f"{batch['batched_equals_single_masks']}, max logit diff "
            f"{batch['batched_vs_single_max_abs_logit_diff']:.1e})"
        )
        print(batch_table(results))
    if "profile" in results:
        print(f"\ntorch.profiler, our 512 x 512 click ({results['profile']['clicks']} clicks)")
        print(profile_table(results))
    if args.out:
        write_json(args.out, results)
        print(f"\nraw timings written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
