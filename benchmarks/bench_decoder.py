"""The fast decoder against its own earlier version: one click's decode, side by side.

Changes to ``models/fast_decoder.py`` move a click's latency by a few percent, less than
the drift of a shared machine between two runs of ``bench_click.py``. This script loads
the decoder modules as they were at a git revision next to the working tree's, decodes
the same click prompts with both on one stored 512 x 512 embedding (MobileSAM, CPU),
interleaved round by round, and reports each one's p50 / p95 and the median of the
per-round ratios, with the largest difference in outputs.

Usage::

    python benchmarks/bench_decoder.py --baseline REV [--repeats N] [--out results.json]

``REV`` is any git revision of this repository (a commit, ``HEAD~2``, a tag); the files
``src/napari_segany/models/fast_decoder.py`` and ``fast_upscale.py`` (when it exists
there) are taken from it.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import napari_segany as sg
from _timing import interleaved, machine, markdown_table, summarize, write_json
from bench_click import disks_image
from napari_segany.prompts import points_to_model

REPO = Path(__file__).resolve().parent.parent
MODELS = "src/napari_segany/models"


def decoder_at(revision: str) -> type:
    """``FastDecoder`` as it was at ``revision``, imported as a package beside ours."""
    folder = Path(tempfile.mkdtemp(prefix="segany-decoder-"))
    package = folder / "baseline_models"
    package.mkdir()
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", revision, f"{MODELS}/"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for path in listed:
        source = subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=REPO, capture_output=True, check=True
        ).stdout
        (package / Path(path).name).write_bytes(source)
    spec = importlib.util.spec_from_file_location(
        "baseline_models", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_models"] = module
    spec.loader.exec_module(module)
    import baseline_models.fast_decoder as baseline  # made importable just above

    return baseline.FastDecoder


def click_prompts(model: sg.SamModel, embedding, disks: np.ndarray) -> list[torch.Tensor]:
    """Sparse prompt embeddings of one positive click at the centre of every disk."""
    prompts = []
    for cy, cx, _ in disks:
        xy = points_to_model(np.array([[cy, cx]]), embedding.original_size, embedding.resized_size)
        points = (
            torch.as_tensor(xy[None], dtype=torch.float32),
            torch.ones(1, 1, dtype=torch.int64),
        )
        with torch.inference_mode():
            sparse, _ = model.net.prompt_encoder(points, None, None)
        prompts.append(sparse)
    return prompts


def run(args: argparse.Namespace) -> dict[str, object]:
    from napari_segany.models.fast_decoder import FastDecoder

    rng = np.random.default_rng(0)
    image, disks = disks_image(512, rng)
    model = sg.load_model("mobile_sam", device="cpu")
    embedding = model.embed_image(sg.open_volume(image[None]).model_slice(0))
    prompts = click_prompts(model, embedding, disks)
    parts = (model.net.prompt_encoder, model.net.mask_decoder)
    decoders = {
        f"baseline ({args.baseline})": decoder_at(args.baseline)(*parts),
        "working tree": FastDecoder(*parts),
    }
    features = embedding.features
    differences = []
    for sparse in prompts:
        outs = [d(features, sparse, None, True) for d in decoders.values()]
        differences.append(float((outs[0][0] - outs[1][0]).abs().max()))
    turn = iter(range(10**9))

    def variant(decoder) -> callable:
        def call() -> None:
            decoder(features, prompts[next(turn) % len(prompts)], None, True)

        return call

    seconds = interleaved(
        {name: variant(d) for name, d in decoders.items()}, args.repeats, warmup=args.warmup
    )
    names = list(decoders)
    ratio = float(np.median(np.divide(seconds[names[1]], seconds[names[0]])))
    return {
        "machine": machine(),
        "baseline": args.baseline,
        "repeats": args.repeats,
        "summaries": {name: summarize(s) for name, s in seconds.items()},
        "ratio_working_tree_to_baseline": ratio,
        "max_logit_difference": max(differences),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with")
    parser.add_argument("--repeats", type=int, default=240, help="timed decodes of each")
    parser.add_argument("--warmup", type=int, default=16, help="untimed decodes first")
    parser.add_argument("--out", help="write all raw timings as JSON here")
    args = parser.parse_args(argv)
    results = run(args)
    info = results["machine"]
    print(
        f"{info['cpu_model']} ({info['cpu_count']} CPUs), torch {info['torch']}, "
        f"{info['torch_threads']} threads, load average {info.get('load_average')}"
    )
    rows = [[name, s.cell()] for name, s in results["summaries"].items()]
    print(markdown_table(["decoder", "one click's decode, p50 / p95 ms"], rows))
    print(
        f"working tree ÷ baseline, median of paired rounds: "
        f"{results['ratio_working_tree_to_baseline']:.3f}; largest logit difference "
        f"{results['max_logit_difference']:.1e}"
    )
    if args.out:
        write_json(args.out, results)
        print(f"raw timings written to {args.out}")


if __name__ == "__main__":
    main()
