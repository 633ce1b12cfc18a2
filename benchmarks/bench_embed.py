"""Embedding a volume on the CPU: our store vs a plain per-slice loop, reads, and memory.

Three measurements, with MobileSAM on the CPU:

1. Slices per second: ``embed()`` into a store on disk (a prefetching reader thread feeds
   the encoder; the default CPU batch is one slice) vs a plain loop over the same TIFF with
   the same model, ``model.embed_image(volume.model_slice(z))`` and ``np.save`` of the
   float16 features. The two are timed interleaved, round by round (``_timing.interleaved``),
   and their features compared.
2. Reading one stored slice embedding, ready to decode (float32 torch tensor):
   ``store.get(z)`` vs ``np.load`` of the loop's file, over random slices. Both read from
   the page cache (the files were just written): this is the warm cost, not a cold disk.
3. Peak memory: a child process embeds tiled slices of a zarr volume much larger than
   itself (uncompressed, so its size on disk is its size in memory) under an
   address-space cap, and reports its resident set (``VmRSS``) after every tile and its
   peak (``VmHWM``); a second child does the same windows with the plain loop.

On a CPU shared with other busy processes, GNU OpenMP's spin-waiting distorts the
comparison: once a second thread has run torch operators (our prefetching reader does),
libgomp manages more threads than there are CPUs and throttles its spinning, which made
our encoder passes up to about 2x faster than the same passes in the plain loop on an
oversubscribed 2-core machine. Run with ``GOMP_SPINCOUNT=1000`` (both variants then
spin little) or on an idle machine; the JSON records these variables and the load.

GPU throughput (slices per second and fraction of the bf16 peak for vit_b and mobile_sam
at several batch sizes) needs a GPU machine; this script measures only the CPU.

Usage::

    python benchmarks/bench_embed.py [--slices N] [--size Y X] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr

from _timing import interleaved, machine, markdown_table, summarize, write_json
from napari_segany.embeddings import EmbeddingStore, embed
from napari_segany.model import SamModel, load_model
from napari_segany.sample_data import nuclei_volume
from napari_segany.volume.volume import Volume, open_volume

GPU_NOTE = (
    "not measured: GPU figures (slices per second and fraction of the card's bf16 peak "
    "for vit_b and mobile_sam at several batch sizes) need a GPU machine, and this "
    "session had none"
)
MIB = 2**20
OPENMP_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MALLOC_ARENA_MAX")


# --- 1. throughput ---------------------------------------------------------------------------


def plain_loop(volume: Volume, model: SamModel, folder: Path) -> None:
    """What one would write without the store: embed each slice, save its features."""
    folder.mkdir()
    for z in range(len(volume)):
        features = model.embed_image(volume.model_slice(z)).features[0]
        np.save(folder / f"{z}.npy", features.numpy().astype(np.float16))


def throughput(
    volume: Volume, model: SamModel, work: Path, repeats: int, warmup: int
) -> dict[str, object]:
    calls = {"store": 0, "loop": 0}

    def ours() -> None:
        calls["store"] += 1
        store = embed(volume, model, work / f"store{calls['store']}.zarr", progress=False)
        assert store.done().all()

    def loop() -> None:
        calls["loop"] += 1
        plain_loop(volume, model, work / f"loop{calls['loop']}")

    print(
        f"timing throughput: {warmup} + {repeats} interleaved rounds of {len(volume)} slices",
        flush=True,
    )
    seconds = interleaved({"store": ours, "loop": loop}, repeats, warmup=warmup)
    n = len(volume)
    last_store, last_loop = work / f"store{calls['store']}.zarr", work / f"loop{calls['loop']}"
    store = EmbeddingStore.open(last_store)
    diff = max(
        float(np.abs(store.get(z).features[0].numpy() - np.load(last_loop / f"{z}.npy")).max())
        for z in range(n)
    )
    paired = [a / b for a, b in zip(seconds["loop"], seconds["store"], strict=True)]
    return {
        "seconds_per_volume": seconds,
        "slices_per_second_median": {k: n / float(np.median(v)) for k, v in seconds.items()},
        "paired_speedup_store_over_loop_median": float(np.median(paired)),
        "paired_speedup_per_round": paired,
        "max_abs_diff_store_vs_loop": diff,
        "store": str(last_store),
        "loop": str(last_loop),
    }


# --- 2. reading one slice's embedding --------------------------------------------------------


def reads(store_path: Path, loop_folder: Path, n_slices: int, count: int) -> dict[str, object]:
    store = EmbeddingStore.open(store_path)
    rng = random.Random(0)
    order = {"store": [rng.randrange(n_slices) for _ in range(count)]}
    order["loop"] = list(order["store"])

    def from_store() -> None:
        store.get(order["store"].pop())

    def from_npy() -> None:
        torch.from_numpy(np.load(loop_folder / f"{order['loop'].pop()}.npy")).float()

    print(f"timing reads: {count} random slices from each", flush=True)
    # warmup=0: the popped lists hold exactly one slice index per timed call.
    seconds = interleaved({"store.get(z)": from_store, "np.load": from_npy}, count, warmup=0)
    return {
        "seconds": seconds,
        "summary": {k: summarize(v) for k, v in seconds.items()},
        "chunk_bytes": 256 * 64 * 64 * 2,
        "cache": "warm (page cache): the files were written moments before",
    }


# --- 3. peak memory ---------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path

    params = json.loads(sys.argv[1])
    if params["cap_bytes"]:
        cap = params["cap_bytes"]
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    def status():
        fields = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "VmPeak"):
                    fields[key] = int(value.split()[0]) * 1024
        return fields

    import numpy as np
    import torch

    if params["threads"]:
        torch.set_num_threads(params["threads"])
    from napari_segany.embeddings import embed
    from napari_segany.model import load_model
    from napari_segany.tiling import tile_grid
    from napari_segany.volume.volume import open_volume

    after_import = status()
    model = load_model("mobile_sam", device="cpu", progress=False)
    after_model = status()
    volume = open_volume(params["volume"])
    grid = tile_grid(volume.slice_shape, tile_size=params["tile_size"], halo=params["halo"])
    per_tile = []
    if params["variant"] == "store":
        embed(
            volume,
            model,
            params["out"],
            slices=range(params["slices"]),
            tile_size=params["tile_size"],
            halo=params["halo"],
            progress=False,
            callback=lambda done, total: per_tile.append(status()["VmRSS"]),
        )
    else:  # the plain loop: one window after the other, features saved with np.save
        Path(params["out"]).mkdir()
        for z in range(params["slices"]):
            for t, window in enumerate(grid.windows):
                features = model.embed_image(volume.model_slice(z, region=window)).features
                np.save(Path(params["out"]) / f"{z}_{t}.npy", features[0].numpy().astype("f2"))
                per_tile.append(status()["VmRSS"])
    print(json.dumps({
        "after_import": after_import,
        "after_model": after_model,
        "end": status(),
        "rss_after_each_tile": per_tile,
        "tiles_per_slice": len(grid),
    }))
    """
)


def write_big_volume(path: Path, shape: tuple[int, int, int]) -> int:
    """An uncompressed zarr v3 volume of nuclei, slice by slice; returns its bytes on disk."""
    depth, height, width = shape
    base = nuclei_volume((8, 512, 512), seed=1)[0]
    reps = (-(-height // 512), -(-width // 512))
    array = zarr.create_array(
        path, shape=shape, chunks=(1, 1024, 1024), dtype="uint16", compressors=None
    )
    for z in range(depth):
        array[z] = np.tile(base[z % 8], reps)[:height, :width] + np.uint16(z)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def memory_child(params: dict[str, object]) -> dict[str, object]:
    # Fewer malloc arenas: each thread's arena reserves 64 MiB of address space, which an
    # address-space cap would count although it is never touched.
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(params)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"the {params['variant']} memory child failed ({done.returncode}); if it ran out "
            f"of address space, raise --rss-cap-mib:\n{done.stderr}"
        )
    child = json.loads(done.stdout.strip().splitlines()[-1])
    child["seconds"] = time.perf_counter() - start
    return child


def memory(args: argparse.Namespace, work: Path) -> dict[str, object]:
    shape = tuple(args.rss_shape)
    volume_path = work / "big.zarr"
    print(f"writing a {shape} uint16 zarr volume for the memory run", flush=True)
    start = time.perf_counter()
    on_disk = write_big_volume(volume_path, shape)
    written = time.perf_counter() - start
    settings = {
        "volume": str(volume_path),
        "slices": args.rss_slices,
        "tile_size": args.tile_size,
        "halo": args.halo,
        "threads": args.threads,
        "cap_bytes": args.rss_cap_mib * MIB if args.rss_cap_mib else None,
    }
    children = {}
    for variant in ("store", "loop"):
        print(f"{variant}: embedding {args.rss_slices} tiled slice(s) in a child", flush=True)
        params = {**settings, "variant": variant, "out": str(work / f"big-{variant}")}
        children[variant] = memory_child(params)
    return {
        "volume_shape": list(shape),
        "volume_bytes": int(np.prod(shape)) * 2,
        "volume_bytes_on_disk": on_disk,
        "volume_write_seconds": written,
        "settings": settings,
        "children": children,
    }


# --- output -----------------------------------------------------------------------------------


def tables(results: dict[str, object]) -> str:
    t, r = results["throughput"], results["reads"]
    n = results["settings"]["slices"]
    size = "x".join(str(s) for s in results["settings"]["size"])
    rate = t["slices_per_second_median"]
    s = r["summary"]
    lines = [
        markdown_table(
            ["", "ours: embed() -> store", "plain loop + np.save", "ours vs loop"],
            [
                [
                    f"slices/s ({n} slices {size}, median of rounds)",
                    f"{rate['store']:.3f}",
                    f"{rate['loop']:.3f}",
                    f"{t['paired_speedup_store_over_loop_median']:.2f}x the speed "
                    "(median of paired rounds)",
                ],
                [
                    "read one slice's embedding, ms p50 / p95",
                    s["store.get(z)"].cell(),
                    s["np.load"].cell(),
                    f"{s['store.get(z)'].p50 / s['np.load'].p50:.1f}x the time (p50)",
                ],
            ],
        ),
        f"max abs difference of the features, store vs loop: {t['max_abs_diff_store_vs_loop']:.1e}",
    ]
    m = results.get("memory")
    if m:
        store, loop = m["children"]["store"], m["children"]["loop"]
        volume = m["volume_bytes_on_disk"]

        def mib(value: float) -> str:
            return f"{value / MIB:.0f} MiB"

        def tiles(child: dict[str, object]) -> str:
            rss = child["rss_after_each_tile"]
            return " / ".join(f"{v / MIB:.0f}" for v in (rss[0], max(rss), rss[-1])) + " MiB"

        n_tiles = len(store["rss_after_each_tile"])
        rows = [
            [
                "RSS with the model loaded",
                mib(store["after_model"]["VmRSS"]),
                mib(loop["after_model"]["VmRSS"]),
            ],
            [f"RSS after each of {n_tiles} tiles: first / max / last", tiles(store), tiles(loop)],
            ["peak RSS (VmHWM)", mib(store["end"]["VmHWM"]), mib(loop["end"]["VmHWM"])],
            [
                "volume ÷ peak RSS",
                f"{volume / store['end']['VmHWM']:.1f}x",
                f"{volume / loop['end']['VmHWM']:.1f}x",
            ],
            [
                "peak address space (VmPeak)",
                mib(store["end"]["VmPeak"]),
                mib(loop["end"]["VmPeak"]),
            ],
        ]
        cap = m["settings"]["cap_bytes"]
        title = (
            f"memory: {m['volume_shape'][0]} x {m['volume_shape'][1]} x "
            f"{m['volume_shape'][2]} uint16 zarr, {mib(volume)} on disk; "
            f"{m['settings']['slices']} slice(s) x {store['tiles_per_slice']} tiles "
            f"(tile {m['settings']['tile_size']}, halo {m['settings']['halo']})"
            + (f"; each child capped at {mib(cap)} of address space" if cap else "")
        )
        lines += [
            "",
            title,
            markdown_table(["child process", "ours: embed() -> store", "plain loop"], rows),
        ]
    lines += ["", f"GPU: {GPU_NOTE}"]
    return "\n".join(lines)


def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    n, (height, width) = args.slices, args.size
    image = nuclei_volume((max(8, n), height, width))[0][:n]
    source = work / "stack.tif"
    tifffile.imwrite(source, image, photometric="minisblack")
    volume = open_volume(source)
    volume.limits  # noqa: B018  (sampled once here, as both variants would reuse them)
    model = load_model("mobile_sam", device="cpu", progress=False)

    results: dict[str, object] = {
        "benchmark": "bench_embed",
        "machine": machine(),
        "settings": {
            "slices": n,
            "size": [height, width],
            "repeats": args.repeats,
            "warmup": args.warmup,
            "reads": args.reads,
            "model": {"name": model.name, "sha256": model.sha256, "device": str(model.device)},
            "source": "multi-page TIFF of napari_segany.sample_data.nuclei_volume()",
        },
        "gpu": {"measured": False, "note": GPU_NOTE},
        "environment": {name: os.environ.get(name) for name in OPENMP_VARIABLES},
    }
    t = throughput(volume, model, work, args.repeats, args.warmup)
    results["throughput"] = t
    results["reads"] = reads(Path(t["store"]), Path(t["loop"]), n, args.reads)
    volume.close()
    if args.rss_slices > 0:
        results["memory"] = memory(args, work)
    if hasattr(os, "getloadavg"):
        results["load_average_end"] = list(os.getloadavg())
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=3, help="slices in the volume (default 3)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=[512, 512], metavar=("Y", "X"), help="slice size"
    )
    parser.add_argument("--repeats", type=int, default=6, help="timed rounds (default 6)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default 1)")
    parser.add_argument("--reads", type=int, default=200, help="slice reads timed (default 200)")
    parser.add_argument(
        "--rss-shape",
        type=int,
        nargs=3,
        default=[192, 4096, 4096],
        metavar=("Z", "Y", "X"),
        help="the memory run's uint16 volume (default 192 4096 4096: 6 GiB on disk)",
    )
    parser.add_argument(
        "--rss-slices",
        type=int,
        default=1,
        help="slices the memory run embeds (default 1; 0 skips the memory run)",
    )
    parser.add_argument(
        "--rss-cap-mib",
        type=int,
        default=2048,
        help="address-space cap (RLIMIT_AS) of each memory child in MiB, 0 for none "
        "(default 2048; more threads need more)",
    )
    parser.add_argument("--tile-size", type=int, default=1024, help="memory run's tile side")
    parser.add_argument("--halo", type=int, default=128, help="memory run's halo")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="write all raw timings as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench_embed-", dir=args.workdir))
    try:
        results = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = results["machine"]
    print()
    spin = results["environment"]["GOMP_SPINCOUNT"]
    load = info.get("load_average")
    print(
        f"{info['cpu_model']} ({info['cpu_count']} CPUs), torch {info['torch']}, "
        f"{info['torch_threads']} threads, mobile_sam on the CPU, GOMP_SPINCOUNT={spin}"
        + (f", load average {load[0]:.1f} at the start" if load else "")
    )
    print(tables(results))
    if args.out:
        write_json(args.out, results)
        print(f"raw timings written to {args.out}")


if __name__ == "__main__":
    main()
