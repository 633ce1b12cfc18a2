"""One short GPU session: encoder throughput against the card's peak, ``embed`` end to end and
where its time goes, bf16 against fp32 masks, and automatic segmentation.

Four measurements, printed as tables and written as JSON (``--out``):

1. Image encoders (default mobile_sam, vit_b and vit_h) at batch 1, 8 and 32 in bf16 and
   fp32: images per second and the share of the card's dense bf16 peak. FLOPs are counted,
   not guessed: ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass of the
   encoder built on the meta device at batch 1 (matrix products and convolutions, a
   multiply-add counted as two FLOPs as the peak counts them; norms, softmax and GELU are
   left out), scaled by the batch. Timing: warm-up passes, then repeats each ended by
   ``torch.cuda.synchronize``; the median is reported. A batch that runs out of GPU
   memory is reported as such and larger ones are skipped.
2. ``embed`` of a 32 x 1024 x 1024 uint16 TIFF into a store on disk: slices per second end
   to end, as a share of the encoder alone at the same batch (target: at least 80%); and
   each stage timed apart with the functions ``embed`` runs. Its prefetch thread runs
   ``encode._prepare``: reading (``Volume.model_slice``), resizing to 8-bit RGB
   (``preprocess.model_input``) and packing the pixels into a uint8 batch (pinned memory
   on CUDA); these are timed step by step, the batch so made is checked equal to
   ``_prepare``'s (so that the benchmark cannot drift from the engine), and ``_prepare``
   is also timed as a whole. Its main loop: the uint8 copy to the device,
   ``encode._normalised`` (normalise and zero-pad there), the encoder, the copy back in
   float16, and ``embed`` writing zarr chunks laid out as the store's. Besides:
   ``SamModel.prepare`` (the interactive path, normalised on the device) and, on CUDA,
   the copy that the old path made (the batch normalised on the host, float32, from
   pageable memory). From the stages, the time ``embed``'s prefetching could reach is
   predicted: ``_prepare`` of batch i + 1 beside the main loop's work on batch i (the
   two threads' contention for the GIL is left out).
3. Masks of the bf16 model against the fp32 model (``load_model(precision=...)``): IoU
   per object for one positive point on each nucleus of generated 512 x 512 slices.
4. Automatic segmentation of a generated 512 x 512 slice with default parameters,
   seconds per slice: ``segment_automatic(volume, model, z=0)`` (the slice's embedding
   included) and the same on a store embedded beforehand.

Weights: a model whose checkpoint is not at hand (the GPU machine has no network) is built
with random weights, which leaves throughput unchanged; the output says so, and the
agreement and automatic figures of such a model are marked not meaningful. Checkpoints
come from ``--checkpoint NAME=PATH``, the napari-segany cache, or ``.weights/NAME.r16.pt.xz``
(made by ``--pack-checkpoint``, see ``gpu_session.sh``: MobileSAM rounded to 16 significant
bits so that it fits in what travels to the GPU machine).

``--dry`` runs everything on the CPU at toy sizes (mobile_sam at batch 1, the FLOPs of
vit_b and vit_h counted without running them, a 2 x 256 x 256 volume, one automatic
slice with a 4 x 4 point grid), for the tests.

Usage::

    python benchmarks/bench_gpu.py [--models ...] [--batches ...] [--out results.json]
    python benchmarks/bench_gpu.py --dry --out /tmp/r.json
    python benchmarks/bench_gpu.py --pack-checkpoint .weights/mobile_sam.r16.pt.xz
"""

from __future__ import annotations

import argparse
import gc
import inspect
import io
import lzma
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
import zarr
from torch.utils.flop_counter import FlopCounterMode

import napari_segany as sg
from _timing import interleaved, machine, markdown_table, summarize, write_json
from napari_segany import encode as engine
from napari_segany.embeddings import FEATURES_SHAPE
from napari_segany.encode import choose_batch_size
from napari_segany.model import SamModel, load_model
from napari_segany.models import ARCHITECTURES, build_sam
from napari_segany.models.fast import fold_batchnorm, set_fused_attention
from napari_segany.preprocess import model_input
from napari_segany.sample_data import nuclei_volume
from napari_segany.tiling import tile_grid
from napari_segany.volume.volume import Volume
from napari_segany.weights import cached_path, fetch, get_checkpoint

REPO = Path(__file__).resolve().parent.parent
PACKED_DIR = REPO / ".weights"
PACKED_SUFFIX = ".r16.pt.xz"
ROUNDING = (
    "float32 weights rounded to 16 significant bits (relative change at most 2**-16, "
    "256 times finer than bf16's) so that the checkpoint fits in the 64 MiB that travels"
)
# lc=0, lp=2, pb=2: LZMA's setting for 4-byte records (float32 weights); ~25 of 40.7 MB.
XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "lc": 0, "lp": 2, "pb": 2}]
RANDOM_NOTE = "random weights (no checkpoint here): throughput is that of the real model"

ENCODERS = ("mobile_sam", "vit_b", "vit_h")
#: Our precision names -> (load_model's precision, the encoder's autocast dtype).
PRECISIONS: dict[str, tuple[str, torch.dtype | None]] = {
    "bf16": ("bfloat16", torch.bfloat16),
    "fp32": ("float32", None),
}
#: Dense bf16 tensor-core peaks in TFLOP/s, by a part of torch.cuda.get_device_name(), the
#: most specific first. NVIDIA's datasheets quote them "with sparsity", twice these:
#: H100 SXM 1979, H100 PCIe 1513, H100 NVL 1671; the H200 (SXM) has the H100 SXM's tensor
#: cores and clocks (1979), the H200 NVL the H100 NVL's (1671). Sources: the NVIDIA H100
#: and H200 datasheets; glennklockwood.com/garden/processors/h100 lists 989.4 dense. This
#: workplace measured 769-798 TFLOP/s on an 8192^3 bf16 matmul on its H100 and H200.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # "NVIDIA H100 80GB HBM3": the SXM card
)
#: embed's stages: encode._prepare's in the prefetch thread, one batch ahead of the rest,
#: which run in the main loop (encode_tiles, then embed's writes).
PREFETCH_STAGES = ("read", "resize", "pack")
MAIN_STAGES = ("to_device", "normalise", "encode", "to_host", "write")
STAGES = (*PREFETCH_STAGES, *MAIN_STAGES)
STAGE_NAMES = {
    "read": "prefetch: read + scale (Volume.model_slice)",
    "resize": "prefetch: resize to 8-bit RGB (model_input, PIL)",
    "pack": "prefetch: pack into the uint8 batch (pinned on CUDA)",
    "to_device": "main: uint8 copy to the device",
    "normalise": "main: normalise + pad on the device (encode._normalised)",
    "encode": "main: encoder (SamModel.encode)",
    "to_host": "main: features to float16 on the host",
    "write": "main: zarr writes (store layout)",
}
AGREEMENT_IOU = 0.9


# --- weights -------------------------------------------------------------------------------


def _round16(tensor: torch.Tensor) -> torch.Tensor:
    """Float32 rounded to nearest on 16 significant bits (the low byte of the pattern zeroed)."""
    if tensor.dtype != torch.float32:
        return tensor
    bits = tensor.contiguous().view(torch.int32)
    return ((bits + 0x80) & -256).view(torch.float32)


def pack_checkpoint(dest: Path, name: str = "mobile_sam") -> None:
    """Write ``name``'s checkpoint rounded (see :data:`ROUNDING`) and xz-compressed."""
    source = fetch(name)
    state = torch.load(source, map_location="cpu", weights_only=True)
    payload = {
        "state_dict": {key: _round16(value) for key, value in state.items()},
        "packed_from": {
            "model": name,
            "file": source.name,
            "sha256": get_checkpoint(name).sha256,
            "rounding": ROUNDING,
        },
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(lzma.compress(buffer.getvalue(), format=lzma.FORMAT_XZ, filters=XZ_FILTERS))
    sizes = [f"{p} ({p.stat().st_size / 1e6:.1f} MB)" for p in (source, dest)]
    print(" -> ".join(sizes))


def _unpack(path: Path, work: Path) -> tuple[Path, str | None]:
    """A loadable checkpoint file from ``path`` (an xz file is decompressed into ``work``)."""
    if path.suffix != ".xz":
        return path, None
    out = work / path.name.removesuffix(".xz")
    out.write_bytes(lzma.decompress(path.read_bytes()))
    packed = torch.load(out, map_location="cpu", weights_only=True).get("packed_from", {})
    return out, packed.get("rounding")


def find_checkpoints(
    architectures: list[str], given: dict[str, Path], work: Path
) -> dict[str, dict[str, Any]]:
    """Architecture -> how to load its weights, for those whose checkpoint is at hand.

    Never downloads: ``--checkpoint`` first, then the cache, then ``.weights/``.
    """
    found: dict[str, dict[str, Any]] = {}
    for arch in architectures:
        path = given.get(arch)
        if path is None and cached_path(arch) is not None:
            found[arch] = {"load": arch, "weights": "checkpoint", "path": str(cached_path(arch))}
            continue
        if path is None and (PACKED_DIR / f"{arch}{PACKED_SUFFIX}").is_file():
            path = PACKED_DIR / f"{arch}{PACKED_SUFFIX}"
        if path is None:
            continue
        loadable, note = _unpack(path, work)
        found[arch] = {"load": loadable, "weights": "checkpoint", "path": str(path)}
        if note:
            found[arch]["note"] = note
    return found


def _autocast(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":  # as load_model decides it for fast models
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else None
    return {"bfloat16": torch.bfloat16, "float32": None}[precision]


def random_model(architecture: str, device: torch.device, precision: str) -> SamModel:
    """The network as ``load_model`` makes it (fast paths on), with random weights."""
    torch.manual_seed(0)  # the same weights at every precision
    with torch.device(device):  # initialised where it runs: vit_h's are slow to draw on a CPU
        net = build_sam(architecture)
    set_fused_attention(net, True)
    fold_batchnorm(net)
    net = net.to(memory_format=torch.channels_last).to(device).eval()
    return SamModel(
        net,
        name=f"{architecture} (random weights)",
        architecture=architecture,
        device=device,
        autocast_dtype=_autocast(precision, device),
        fast=True,
    )


def open_model(
    architecture: str,
    precision: str,
    device: torch.device,
    checkpoints: dict[str, dict[str, Any]],
) -> tuple[SamModel, dict[str, Any]]:
    """The model and where its weights came from; random weights without a checkpoint."""
    start = time.perf_counter()
    found = checkpoints.get(architecture)
    if found is None:
        model = random_model(architecture, device, precision)
        info: dict[str, Any] = {"weights": "random", "note": RANDOM_NOTE}
    else:
        model = load_model(
            found["load"], device, architecture=architecture, precision=precision, progress=False
        )
        info = {k: str(v) for k, v in found.items() if k != "load"}
    info["load_seconds"] = time.perf_counter() - start
    return model, info


# --- 1. encoder throughput ---------------------------------------------------------------


def card_peak(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """The card's dense bf16 peak in TFLOP/s and where the number comes from."""
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no GPU (pass --peak-tflops for a share of a peak)"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"table entry {key!r} for {name!r} (datasheet, dense)"
    return None, f"{name!r} is not in the table: pass --peak-tflops"


def count_flops(architecture: str) -> dict[str, Any]:
    """FLOPs of one image through the image encoder, counted on the meta device."""
    with torch.device("meta"):
        net = build_sam(architecture)
    # The plain attention path spells attention as matrix products, which the counter sees
    # on any device; the fused kernels do the same arithmetic.
    set_fused_attention(net, False)
    x = torch.empty(1, 3, net.image_size, net.image_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.encode(x)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return {
        "per_image": int(counter.get_total_flops()),
        "by_op": by_op,
        "counted": "FlopCounterMode, meta device, batch 1, plain attention path",
    }


def _sync(device: torch.device) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.type == "cuda" else None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _effort(architecture: str, args: argparse.Namespace) -> tuple[int, int]:
    """(warm-up passes, timed repeats): fewer for the big ViTs, whose passes are long."""
    if args.dry:
        return 0, 1
    if architecture in ("vit_h", "vit_l"):
        return 1, max(2, (args.repeats + 1) // 2)
    return 2, args.repeats


def time_encoder(model: SamModel, batch: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Seconds of ``model.encode`` on a batch already on the device, or ``out of memory``."""
    device = model.device
    _free(device)  # what an earlier batch, or its out-of-memory error, left cached
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    inputs = []  # emptied in the end, so that an out-of-memory batch frees its memory
    try:
        inputs.append(torch.randn(batch, 3, model.image_size, model.image_size, device=device))
        seconds = interleaved(
            {"encode": lambda: model.encode(inputs[0])}, repeats, warmup=warmup, sync=_sync(device)
        )["encode"]
    except torch.OutOfMemoryError:
        return {"status": "out of memory"}
    finally:
        inputs.clear()
        _free(device)
    out: dict[str, Any] = {"status": "ok", "seconds": seconds, "summary": summarize(seconds)}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def encoder_rows(
    model: SamModel,
    architecture: str,
    weights: str,
    flops: int,
    peak: float | None,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    warmup, repeats = _effort(architecture, args)
    default = model.autocast_dtype
    rows: list[dict[str, Any]] = []
    try:
        for precision in args.precisions:
            # The attribute that load_model(precision=...) sets: one model, both precisions.
            model.autocast_dtype = PRECISIONS[precision][1]
            out_of_memory = False
            for batch in args.batches:
                row: dict[str, Any] = {
                    "model": architecture,
                    "weights": weights,
                    "precision": precision,
                    "batch": batch,
                }
                rows.append(row)
                if out_of_memory:
                    row["status"] = "skipped: a smaller batch ran out of memory"
                    continue
                print(f"encoder {architecture} {precision} batch {batch}", flush=True)
                row.update(time_encoder(model, batch, warmup, repeats))
                if row["status"] != "ok":
                    out_of_memory = True
                    continue
                seconds = row["summary"].p50 / 1e3
                row["images_per_second"] = batch / seconds
                row["tflops"] = flops * batch / seconds / 1e12
                row["share_of_bf16_peak"] = row["tflops"] / peak if peak else None
    finally:
        model.autocast_dtype = default
    return rows


# --- 2. embed end to end, and its stages ---------------------------------------------------


def write_volume(path: Path, depth: int, size: int) -> Path:
    """A ``depth`` x ``size`` x ``size`` uint16 TIFF of generated nuclei (8 distinct slices
    repeated with an offset, as bench_embed makes them)."""
    base = nuclei_volume((8, size, size), seed=1)[0]
    stack = np.stack([base[z % 8] + np.uint16(z // 8) for z in range(depth)])
    tifffile.imwrite(path, stack, photometric="minisblack")
    return path


def stages(model: SamModel, volume: Volume, batch: int, work: Path) -> dict[str, Any]:
    """Seconds over the whole volume of each stage ``embed`` runs, timed one at a time.

    The prefetch thread's ``encode._prepare`` is timed step by step (its batch must equal
    ``_prepare``'s) and as a whole; the main loop's copy is made as ``encode._normalised``
    makes it, then ``_normalised`` itself runs on the copy (its own copy then does nothing).
    """
    sync = _sync(model.device) or (lambda: None)
    cuda = model.device.type == "cuda"
    n, size = len(volume), model.image_size
    grid = tile_grid(volume.slice_shape)  # embed's default tiling
    items = [(z, t) for z in range(n) for t in range(len(grid))]
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    seconds = dict.fromkeys(STAGES, 0.0)
    prepare_on_device = float32_copy = 0.0
    prepared: list[tuple[torch.Tensor, list[tuple[int, int]]]] = []
    prep_per_batch = []
    for chunk in batches:
        # encode._prepare step by step
        t0 = time.perf_counter()
        pixels = torch.zeros(len(chunk), 3, size, size, dtype=torch.uint8)
        seconds["pack"] += time.perf_counter() - t0
        sizes = []
        for i, (z, t) in enumerate(chunk):
            t0 = time.perf_counter()
            image = volume.model_slice(z, region=grid.windows[t])
            t1 = time.perf_counter()
            rgb = model_input(image, size)
            t2 = time.perf_counter()
            h, w = rgb.shape[:2]
            pixels[i, :, :h, :w] = torch.from_numpy(rgb).permute(2, 0, 1)
            sizes.append((h, w))
            t3 = time.perf_counter()
            model.prepare(image)
            sync()
            prepare_on_device += time.perf_counter() - t3
            seconds["read"] += t1 - t0
            seconds["resize"] += t2 - t1
            seconds["pack"] += t3 - t2
        t0 = time.perf_counter()
        if cuda:
            pixels = pixels.pin_memory()
        seconds["pack"] += time.perf_counter() - t0
        # and as a whole, as the prefetch thread runs it
        t0 = time.perf_counter()
        engine_pixels, engine_sizes, _ = engine._prepare(volume, model, grid, chunk)
        prep_per_batch.append(time.perf_counter() - t0)
        if engine_sizes != sizes or not torch.equal(engine_pixels, pixels):
            raise RuntimeError(
                "stages() no longer makes the batch that encode._prepare makes: update it"
            )
        prepared.append((engine_pixels, engine_sizes))
        del pixels

    group = zarr.open_group(work / f"stages-{model.architecture}.zarr", mode="w")
    features = group.create_array(  # as embeddings._create lays out the store
        "features",
        shape=(n, len(grid), *FEATURES_SHAPE),
        chunks=(1, 1, *FEATURES_SHAPE),
        dtype="float16",
        compressors=None,
        fill_value=0,
    )
    done = group.create_array("done", shape=(n,), chunks=(1,), dtype="uint8", fill_value=0)
    if cuda:  # warm-up at this batch size (kernel choice, allocator)
        model.encode(engine._normalised(model, *prepared[0]))
        sync()
    tiles_left = dict.fromkeys(range(n), len(grid))
    main_per_batch = []
    for chunk, (pixels, sizes) in zip(batches, prepared, strict=True):
        t0 = time.perf_counter()
        on_device = pixels.to(model.device, non_blocking=True)  # as encode._normalised does
        sync()
        t1 = time.perf_counter()
        x = engine._normalised(model, on_device, sizes)
        sync()
        t2 = time.perf_counter()
        out = model.encode(x)
        sync()
        t3 = time.perf_counter()
        half = out.to(torch.float16).cpu().numpy()
        t4 = time.perf_counter()
        for (z, t), f in zip(chunk, half, strict=True):  # as EmbeddingStore._write
            features[z, t] = f
            tiles_left[z] -= 1
            if tiles_left[z] == 0:
                done[z] = 1
        t5 = time.perf_counter()
        steps = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
        for key, value in zip(MAIN_STAGES, steps, strict=True):
            seconds[key] += value
        main_per_batch.append(t5 - t0)
        if cuda:  # the old path's copy: the batch normalised on the host, float32, pageable
            host = x.cpu()
            t6 = time.perf_counter()
            host.to(model.device)
            sync()
            float32_copy += time.perf_counter() - t6
            del host
        del on_device, x, out
    # embed: the prefetch thread runs _prepare for batch i + 1 while the main loop copies,
    # normalises, encodes, copies back and writes batch i.
    following = [*prep_per_batch[1:], 0.0]
    predicted = prep_per_batch[0] + sum(
        max(main, ahead) for main, ahead in zip(main_per_batch, following, strict=True)
    )
    del prepared
    shutil.rmtree(work / f"stages-{model.architecture}.zarr", ignore_errors=True)
    return {
        "batch": batch,
        "tiles_per_slice": len(grid),
        "seconds": seconds,
        "prefetch_stages": list(PREFETCH_STAGES),
        "main_stages": list(MAIN_STAGES),
        "prepare_seconds": sum(prep_per_batch),
        "prepare_on_device_seconds": prepare_on_device,
        "to_device_float32_seconds": float32_copy if cuda else None,
        "predicted_seconds": predicted,
        "predicted_slices_per_second": n / predicted,
    }


def embed_rates(
    model: SamModel, volume: Volume, batch: int, work: Path, warmup: int, repeats: int
) -> dict[str, Any]:
    """``embed`` end to end into a fresh store on disk, and the encoder alone at the batch."""
    n, sync = len(volume), _sync(model.device)
    out: dict[str, Any] = {"batch": batch}
    inputs = [torch.randn(batch, 3, model.image_size, model.image_size, device=model.device)]
    alone = interleaved(
        {"encode": lambda: model.encode(inputs[0])}, repeats, warmup=warmup, sync=sync
    )
    inputs.clear()
    _free(model.device)
    out["encoder_seconds"] = alone["encode"]
    out["encoder_slices_per_second"] = batch / (summarize(alone["encode"]).p50 / 1e3)
    stores: list[Path] = []

    def end_to_end() -> None:  # a new store each time: embed computes only missing slices
        stores.append(work / f"embed-{model.architecture}-{batch}-{len(stores)}.zarr")
        sg.embed(volume, model, stores[-1], batch_size=batch, progress=False)

    try:
        seconds = interleaved({"embed": end_to_end}, repeats, warmup=warmup, sync=sync)["embed"]
    except Exception as err:  # report it and go on: the other figures still count
        out["error"] = f"{type(err).__name__}: {err}"
        traceback.print_exc()
        return out
    finally:
        for path in stores:
            shutil.rmtree(path, ignore_errors=True)
    out["seconds"] = seconds
    out["slices_per_second"] = n / (summarize(seconds).p50 / 1e3)
    out["share_of_encoder"] = out["slices_per_second"] / out["encoder_slices_per_second"]
    return out


def embed_section(
    model: SamModel, architecture: str, volume: Volume, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    auto = choose_batch_size(model)
    print(f"embed {architecture}: stages at batch {auto}", flush=True)
    result: dict[str, Any] = {"auto_batch": auto, "stages": stages(model, volume, auto, work)}
    warmup, repeats = (0, 1) if args.dry else (1, 3)
    result["runs"] = []
    for batch in dict.fromkeys([auto, *args.embed_batches]):
        print(f"embed {architecture}: end to end at batch {batch}", flush=True)
        result["runs"].append(embed_rates(model, volume, batch, work, warmup, repeats))
    return result


# --- 3. bf16 against fp32 masks ----------------------------------------------------------


def object_points(labels: np.ndarray, most: int) -> np.ndarray:
    """``(B, 2)`` (y, x): for each object, its pixel nearest to its centroid."""
    points = []
    for label in np.unique(labels)[1 : most + 1]:
        ys, xs = np.nonzero(labels == label)
        nearest = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
        points.append((ys[nearest], xs[nearest]))
    return np.array(points, dtype=np.float64).reshape(-1, 2)


def best_masks(
    model: SamModel, embedding: sg.ImageEmbedding, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each point's mask (the candidate of highest predicted IoU) and that candidate's index."""
    decoded = model.decode(
        embedding,
        points=points[:, None, :],
        labels=np.ones((len(points), 1), dtype=np.int64),
        multimask=True,
    )
    best = decoded.iou.argmax(dim=1)
    logits = decoded.low_res_logits[torch.arange(len(points), device=best.device), best]
    masks = model.upscale(logits, embedding) > model.net.mask_threshold
    return masks.cpu().numpy(), best.cpu().numpy()


def agreement(
    architecture: str,
    device: torch.device,
    checkpoints: dict[str, dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    size, n_slices, most = (256, 1, 8) if args.dry else (512, 4, 32)
    images, labels = nuclei_volume((8, size, size), seed=2)
    volume = sg.open_volume(images)
    models = {}
    for precision in ("fp32", "bf16"):
        models[precision], info = open_model(
            architecture, PRECISIONS[precision][0], device, checkpoints
        )
    ious: list[float] = []
    same: list[bool] = []
    feature_errors = []
    for z in range(2, 2 + n_slices):  # slices 2.. cut through most nuclei
        points = object_points(labels[z], most)
        image = volume.model_slice(z)
        embeddings = {p: m.embed_image(image) for p, m in models.items()}
        f32, f16 = embeddings["fp32"].features, embeddings["bf16"].features
        feature_errors.append(float((f16 - f32).norm() / f32.norm()))
        masks = {p: best_masks(m, embeddings[p], points) for p, m in models.items()}
        (m32, k32), (m16, k16) = masks["fp32"], masks["bf16"]
        inter = (m32 & m16).sum(axis=(1, 2))
        union = (m32 | m16).sum(axis=(1, 2))
        ious += [float(i / u) if u else 1.0 for i, u in zip(inter, union, strict=True)]
        same += [bool(s) for s in k32 == k16]
    del models
    _free(device)
    values = np.array(ious)
    return {
        "model": architecture,
        "weights": info["weights"],
        "meaningful": info["weights"] != "random",
        "slices": n_slices,
        "slice_size": size,
        "objects": len(ious),
        "iou_mean": float(values.mean()),
        "iou_min": float(values.min()),
        "iou_p5": float(np.percentile(values, 5)),
        f"objects_below_{AGREEMENT_IOU}": int((values < AGREEMENT_IOU).sum()),
        "same_candidate_share": float(np.mean(same)),
        "feature_relative_error_max": max(feature_errors),
        "ious": ious,
    }


# --- 4. automatic segmentation -----------------------------------------------------------


def _takes_keyword(function: Callable[..., Any], name: str) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def automatic(
    architecture: str,
    device: torch.device,
    checkpoints: dict[str, dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    size = 256 if args.dry else 512
    model, info = open_model(architecture, "auto", device, checkpoints)
    image = nuclei_volume((8, size, size), seed=3)[0]
    overrides: dict[str, Any] = {}
    if args.dry and _takes_keyword(sg.segment_automatic, "points_per_side"):
        overrides["points_per_side"] = 4
    labels: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {
        "model": architecture,
        "weights": info["weights"],
        "meaningful": info["weights"] != "random",
        "slice_size": size,
        "overrides": overrides,
    }

    def with_embedding() -> None:
        labels["with embedding"] = sg.segment_automatic(
            image, model, z=0, progress=False, **overrides
        )

    def on_store() -> None:
        labels["on a store"] = sg.segment_automatic(store, model, z=0, progress=False, **overrides)

    warmup, repeats = (0, 1) if args.dry else (1, 3)
    try:
        store = sg.embed(image, model, slices=[0], progress=False)  # in memory
        seconds = interleaved(
            {"with embedding": with_embedding, "on a store": on_store},
            repeats,
            warmup=warmup,
            sync=_sync(device),
        )
    except Exception as err:  # report it and go on: the other figures still count
        out["error"] = f"{type(err).__name__}: {err}"
        traceback.print_exc()
        return out
    out["seconds"] = seconds
    out["seconds_per_slice"] = {k: summarize(v).p50 / 1e3 for k, v in seconds.items()}
    out["objects"] = {k: int(np.unique(v).size - 1) for k, v in labels.items()}
    return out


# --- the run -------------------------------------------------------------------------------


def _guarded(results: dict[str, Any], what: str, function: Callable[[], Any]) -> Any:
    """``function()``, or None with the error recorded (so the other sections still run);
    its seconds go to ``results["section_seconds"]`` (for planning a GPU session)."""
    start = time.perf_counter()
    try:
        return function()
    except Exception as err:
        traceback.print_exc()
        results["errors"].append(f"{what}: {type(err).__name__}: {err}")
        return None
    finally:
        results["section_seconds"][what] = time.perf_counter() - start


def _gpu_facts(device: torch.device) -> dict[str, Any] | None:
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "memory_gib": props.total_memory / 2**30,
        "cuda": torch.version.cuda,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    device = torch.device("cpu") if args.dry else sg.choose_device("auto")
    peak, peak_source = card_peak(device, args.peak_tflops)
    depth, size = (2, 256) if args.dry else (args.slices, args.size)
    results: dict[str, Any] = {
        "benchmark": "bench_gpu",
        "machine": {**machine(), "gpu": _gpu_facts(device)},
        "settings": {
            "dry": args.dry,
            "device": str(device),
            "models": args.models,
            "batches": args.batches,
            "precisions": args.precisions,
            "repeats": args.repeats,
            "peak_bf16_tflops": peak,
            "peak_source": peak_source,
            "embed_volume": [depth, size, size],
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        **{key: {} for key in ("weights", "flops", "embed", "agreement", "automatic")},
        "encoder": [],
        "errors": [],
        "section_seconds": {},
    }
    for arch in dict.fromkeys([*ENCODERS, *args.models]):
        results["flops"][arch] = count_flops(arch)
    checkpoints = find_checkpoints(args.models, dict(args.checkpoint), work)
    volume = sg.open_volume(write_volume(work / "stack.tif", depth, size))
    volume.limits  # noqa: B018  (sampled once here, not inside the first timed call)

    for arch in args.models:
        print(f"loading {arch}", flush=True)
        loaded = _guarded(
            results, f"loading {arch}", partial(open_model, arch, "auto", device, checkpoints)
        )
        if loaded is None:
            continue
        model, info = loaded
        results["weights"][arch] = info
        flops = results["flops"][arch]["per_image"]
        rows = partial(encoder_rows, model, arch, info["weights"], flops, peak, args)
        results["encoder"] += _guarded(results, f"encoder {arch}", rows) or []
        section = partial(embed_section, model, arch, volume, work, args)
        results["embed"][arch] = _guarded(results, f"embed {arch}", section)
        for r in (results["embed"][arch] or {}).get("runs", []):
            if "error" in r:
                results["errors"].append(f"embed {arch} at batch {r['batch']}: {r['error']}")
        del model, loaded, rows, section
        _free(device)
    volume.close()

    real = [arch for arch in args.models if arch in checkpoints] or args.models[:1]
    for arch in real:
        print(f"agreement {arch}: bf16 against fp32", flush=True)
        found = partial(agreement, arch, device, checkpoints, args)
        results["agreement"][arch] = _guarded(results, f"agreement {arch}", found)
    arch = "mobile_sam" if "mobile_sam" in args.models else real[0]
    print(f"automatic segmentation with {arch}", flush=True)
    found = partial(automatic, arch, device, checkpoints, args)
    results["automatic"] = _guarded(results, "automatic", found)
    if "error" in (results["automatic"] or {}):
        results["errors"].append(f"automatic: {results['automatic']['error']}")
    _free(device)
    return results


# --- output --------------------------------------------------------------------------------

FLOPS_HEADERS = ["encoder", "GFLOP / image", "by operator (GFLOP)"]
ENCODER_HEADERS = [
    *("model", "precision", "batch", "images/s", "ms / batch p50 / p95"),
    *("TFLOP/s", "share of bf16 peak", "peak GiB"),
]
STAGE_HEADERS = ["stage", "ms / slice", "slices/s", "share"]
EMBED_HEADERS = [
    *("batch", "embed() slices/s", "encoder alone slices/s"),
    *("embed / encoder (target >= 80%)", "predicted from stages"),
]
AGREEMENT_HEADERS = [
    *("model", "objects", "mean IoU", "min IoU", "5th pct IoU", f"IoU < {AGREEMENT_IOU}"),
    *("same candidate", "features rel. error"),
]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _encoder_row(r: dict[str, Any]) -> list[str]:
    name = r["model"] + (" (random)" if r["weights"] == "random" else "")
    head = [name, r["precision"], str(r["batch"])]
    if r.get("status") != "ok":
        return [*head, r.get("status", "?"), "", "", "", ""]
    memory = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else ""
    rate, cell, tflops = f"{r['images_per_second']:.1f}", r["summary"].cell(), f"{r['tflops']:.1f}"
    return [*head, rate, cell, tflops, _pct(r["share_of_bf16_peak"]), memory]


def _embed_lines(arch: str, e: dict[str, Any], results: dict[str, Any]) -> list[str]:
    depth, height, width = results["settings"]["embed_volume"]
    st = e["stages"]
    total = sum(st["seconds"].values())
    rows = [
        [
            STAGE_NAMES[k],
            f"{1e3 * v / depth:.1f}",
            f"{depth / v:.1f}" if v else "-",
            _pct(v / total),
        ]
        for k, v in st["seconds"].items()
    ]
    extra = {
        "(encode._prepare as a whole: read, resize, pack)": st["prepare_seconds"],
        "(SamModel.prepare: resize, normalise on the device)": st["prepare_on_device_seconds"],
        "(old path's copy: float32 from pageable memory)": st["to_device_float32_seconds"],
    }
    rows += [[k, f"{1e3 * v / depth:.1f}", "", ""] for k, v in extra.items() if v is not None]
    runs = []
    for r in e["runs"]:
        done = "error" not in r
        predicted = st["predicted_slices_per_second"] if r["batch"] == st["batch"] else None
        runs.append(
            [
                str(r["batch"]),
                f"{r['slices_per_second']:.1f}" if done else "error",
                f"{r['encoder_slices_per_second']:.1f}",
                _pct(r.get("share_of_encoder")),
                "" if predicted is None else f"{predicted:.1f}",
            ]
        )
    weights = results["weights"][arch]["weights"]
    return [
        "",
        f"2. embed {arch} ({weights} weights), {depth} slices {height} x {width} from a TIFF; "
        f"stages at batch {st['batch']}, each timed alone:",
        markdown_table(STAGE_HEADERS, rows),
        markdown_table(EMBED_HEADERS, runs),
        *(f"   error: {r['error']}" for r in e["runs"] if "error" in r),
    ]


def _agreement_row(a: dict[str, Any]) -> list[str]:
    return [
        a["model"] + ("" if a["meaningful"] else " (random: not meaningful)"),
        str(a["objects"]),
        *(f"{a[k]:.4f}" for k in ("iou_mean", "iou_min", "iou_p5")),
        str(a[f"objects_below_{AGREEMENT_IOU}"]),
        _pct(a["same_candidate_share"]),
        f"{a['feature_relative_error_max']:.1e}",
    ]


def tables(results: dict[str, Any]) -> str:
    settings = results["settings"]
    peak = settings["peak_bf16_tflops"]
    flops = [
        [
            arch,
            f"{f['per_image'] / 1e9:.1f}",
            ", ".join(f"{k} {v / 1e9:.1f}" for k, v in f["by_op"].items()),
        ]
        for arch, f in results["flops"].items()
    ]
    lines = [
        f"device {settings['device']}; dense bf16 peak "
        + (f"{peak:.0f} TFLOP/s" if peak else "unknown")
        + f" ({settings['peak_source']})",
        "",
        "FLOPs per 1024 x 1024 image, counted (FlopCounterMode on the meta device):",
        markdown_table(FLOPS_HEADERS, flops),
    ]
    if results["encoder"]:
        lines += [
            "",
            "1. image encoder alone (input already on the device), median of repeats:",
            markdown_table(ENCODER_HEADERS, [_encoder_row(r) for r in results["encoder"]]),
        ]
    for arch, e in results["embed"].items():
        if e is not None:
            lines += _embed_lines(arch, e, results)
    agreements = [a for a in results["agreement"].values() if a is not None]
    if agreements:
        lines += [
            "",
            "3. bf16 encoder against fp32, one positive point per nucleus (best candidate):",
            markdown_table(AGREEMENT_HEADERS, [_agreement_row(a) for a in agreements]),
        ]
    a = results["automatic"]
    if a:
        lines += ["", f"4. automatic segmentation, {a['model']}, one {a['slice_size']}^2 slice:"]
        if "error" in a:
            lines.append(f"   error: {a['error']}")
        else:
            rows = [
                [k, f"{v:.3f}", str(a["objects"][k])] for k, v in a["seconds_per_slice"].items()
            ]
            lines.append(
                markdown_table(["segment_automatic(..., z=0)", "s / slice", "objects"], rows)
            )
            if not a["meaningful"]:
                lines.append("   (random weights: not meaningful)")
    weights = results["weights"]
    random = [arch for arch, w in weights.items() if w["weights"] == "random"]
    if random:
        lines += ["", f"note: {', '.join(random)}: {RANDOM_NOTE}"]
    lines += [
        f"note: {k}: {w['note']}"
        for k, w in weights.items()
        if w["weights"] != "random" and w.get("note")
    ]
    if results["errors"]:
        lines += ["", "errors:", *(f"  {e}" for e in results["errors"])]
    return "\n".join(lines)


def _checkpoint_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if sep and not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"no checkpoint file at {path}")
    if not sep or name not in ARCHITECTURES:
        raise argparse.ArgumentTypeError(
            f"expected NAME=PATH with NAME one of {list(ARCHITECTURES)}"
        )
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="CPU, toy sizes, for the tests")
    parser.add_argument(
        "--models", nargs="+", choices=list(ARCHITECTURES), help="default mobile_sam vit_b vit_h"
    )
    parser.add_argument("--batches", nargs="+", type=int, help="encoder batches (default 1 8 32)")
    parser.add_argument(
        "--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS)
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (vit_h: half)")
    parser.add_argument("--slices", type=int, default=32, help="slices of the embed volume")
    parser.add_argument("--size", type=int, default=1024, help="side of the embed volume")
    parser.add_argument(
        "--embed-batches", nargs="*", type=int, help="embed batches besides the automatic one"
    )
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak")
    parser.add_argument(
        "--checkpoint",
        action="append",
        type=_checkpoint_arg,
        default=[],
        metavar="NAME=PATH",
        help="a checkpoint file (.pt, or .xz from --pack-checkpoint) for an architecture",
    )
    parser.add_argument("--pack-checkpoint", type=Path, metavar="DEST", help="pack and exit")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.pack_checkpoint:
        pack_checkpoint(args.pack_checkpoint)
        return 0
    args.models = args.models or (["mobile_sam"] if args.dry else list(ENCODERS))
    args.batches = args.batches or ([1] if args.dry else [1, 8, 32])
    if args.embed_batches is None:
        args.embed_batches = [] if args.dry else [8]

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_gpu-", dir=args.workdir))
    try:
        results = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["seconds_total"] = time.perf_counter() - start
    info = results["machine"]
    print()
    print(
        f"{info['cpu_model']} ({info['cpu_count']} CPUs), torch {info['torch']}, "
        f"GPU {info['cuda']}, {results['seconds_total']:.0f} s in all"
    )
    print(tables(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, results)
        print(f"results written to {args.out}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
