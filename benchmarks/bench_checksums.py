"""What the chunk checksums cost: embedding and committing with and without them, side by
side in one process (interleaved rounds), with the stores' own code.

- embed: ``sg.embed`` of a generated stack into a new store (the model's encoder, the
  writes, the done flags), with CRC-32C on every chunk and each tile's input digest
  against the same store made as before both (zarr's codecs: raw features, zstd flags). The
  encoder dominates on a CPU; the table also gives the chunk writes and reads alone, which
  is what a GPU's much faster encoder would be compared with.
- commit: ``LabelsStore.commit`` of objects into labels with and without the checksum
  (the journal's fsyncs included: what a user waits for).

``python benchmarks/bench_checksums.py [--slices N] [--size S] [--commits N]
[--repeats N] [--out results.json]``
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
import zarr
from zarr.codecs import ZstdCodec

sys.path.insert(0, str(Path(__file__).parent))
import napari_segany as sg
from _timing import interleaved, machine, markdown_table, peak_mb, summarize, write_json
from napari_segany import damage, encode
from napari_segany.embeddings import FEATURES_SHAPE
from napari_segany.sample_data import nuclei_volume


@contextlib.contextmanager
def checksums(on: bool) -> Iterator[None]:
    """Inside, stores are made with checksums and embed digests each tile's input (``on``),
    or as before both: zarr's codecs, no digest computed."""
    saved = damage.with_checksum, damage.default_compressors, encode.input_digest
    if not on:
        damage.with_checksum = lambda *codecs: tuple(codecs)  # type: ignore[assignment]
        damage.default_compressors = lambda: (ZstdCodec(level=0),)  # type: ignore[assignment]
        encode.input_digest = lambda rgb: 0  # type: ignore[assignment]
    try:
        yield
    finally:
        damage.with_checksum, damage.default_compressors, encode.input_digest = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=4, help="slices embedded per run")
    parser.add_argument("--size", type=int, default=512, help="slice side in pixels")
    parser.add_argument("--commits", type=int, default=50, help="commits per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench_checksums.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-checksums-"))
    try:
        results = run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, {"machine": machine(), "args": vars(args), **results})
    print(f"\nwrote {args.out}")


def run(work: Path, args: argparse.Namespace) -> dict[str, object]:
    model = sg.load_model("mobile_sam", device="cpu", progress=False)
    stack = nuclei_volume((max(8, args.slices), args.size, args.size), seed=1)[0][: args.slices]
    source = work / "stack.tif"
    tifffile.imwrite(source, stack, photometric="minisblack")
    counter = iter(range(10**6))

    def embed(on: bool) -> None:
        with checksums(on):
            target = work / f"e{next(counter)}.zarr"
            sg.embed(source, model, target, progress=False)
        shutil.rmtree(target)

    features = np.random.default_rng(0).standard_normal(FEATURES_SHAPE).astype(np.float16)

    def chunk_io(on: bool) -> None:
        """Write then read back one slice's features chunk, 20 times."""
        group = zarr.open_group(work / f"io{next(counter)}.zarr", mode="w")
        with checksums(on):
            array = group.create_array(
                "f",
                shape=(20, *FEATURES_SHAPE),
                chunks=(1, *FEATURES_SHAPE),
                dtype="float16",
                compressors=damage.with_checksum(),
            )
        for z in range(20):
            array[z] = features
            array[z]
        shutil.rmtree(work / group.store.root.name)

    shape = (1, 1024, 1024)
    rng = np.random.default_rng(2)
    objects = []
    for _ in range(args.commits):
        mask = np.zeros(shape[1:], bool)
        y, x = rng.integers(0, shape[1] - 60, size=2)
        mask[y : y + 40, x : x + 40] = True
        objects.append(mask)

    def commit(on: bool) -> None:
        with checksums(on):
            store = sg.LabelsStore.create(work / f"l{next(counter)}.ome.zarr", shape)
        for mask in objects:
            store.commit(mask, z=0, overlap="overwrite")
        store.close()
        shutil.rmtree(store.path)

    rows, raw = [], {}
    for what, unit, fn, repeats in (
        ("embed", f"{args.slices} slices of {args.size}^2", embed, args.repeats),
        ("features chunk write + read", "20 chunks", chunk_io, args.repeats * 4),
        ("commit", f"{args.commits} objects", commit, args.repeats),
    ):
        times = interleaved(
            {"checksum": lambda f=fn: f(True), "none": lambda f=fn: f(False)}, repeats
        )
        on, off = summarize(times["checksum"]), summarize(times["none"])
        share = (on.p50 - off.p50) / off.p50 * 100
        rows.append([what, unit, off.cell(), on.cell(), f"{share:+.1f}%"])
        raw[what] = {"checksum": times["checksum"], "none": times["none"]}
    print(
        markdown_table(
            ["work", "per run", "without ms (p50 / p95)", "with CRC-32C ms", "cost"], rows
        )
    )
    print(f"peak resident memory: {peak_mb():.0f} MB")
    return {"rows": rows, "seconds": raw, "peak_mb": peak_mb()}


if __name__ == "__main__":
    main()
