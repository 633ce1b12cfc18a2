"""MobileSAM on the CPU: our fast path, our plain float32 path and the reference, side by side.

Rows: the image encoder (one prepared 1024 x 1024 input), the decoder for one positive point
(three masks) and for one box (one mask), and a whole click on a 512 x 512 image (decoder,
masks upscaled to the image and thresholded). Variants are timed interleaved in one process
(see ``_timing.interleaved``) and their outputs compared, so speed is reported at parity.

The reference columns need the public reference code, which is never a dependency of the
package: Meta's ``segment-anything`` 1.0 (``pip install -e ".[reference]"``) for the SAM
networks and predictor, and the official MobileSAM ``tiny_vit_sam.py`` for the TinyViT
encoder (``--mobile-sam-code``, or an installed ``mobile_sam`` package). Without them the
reference columns are skipped with a note. See docs/benchmarks.md.

Usage::

    python benchmarks/bench_model.py [--repeats N] [--out results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data
import torch

from _timing import interleaved, machine, markdown_table, summarize, write_json
from napari_segany.model import ImageEmbedding, SamModel, load_model
from napari_segany.preprocess import model_input
from napari_segany.weights import fetch

#: A point on the astronaut's face and a box around her head, ``(y, x)`` image pixels.
POINT_YX = np.array([[180.0, 240.0]])
BOX_YXYX = np.array([40.0, 150.0, 330.0, 350.0])
MOBILE_SAM_CODE_ENV = "NAPARI_SEGANY_MOBILE_SAM_CODE"


# --- the reference: segment-anything 1.0 + MobileSAM's TinyViT --------------------------------


def _stand_in(name: str, **attributes: object) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__dict__["__stand_in__"] = True
    sys.modules[name] = module


def _not_in_benchmark(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("bench_model.py stand-in: this torchvision function is never used here")


def _import_segment_anything() -> types.ModuleType:
    """``segment_anything`` 1.0, with a stand-in for torchvision if torchvision is missing.

    Its package ``__init__`` imports torchvision for two things this benchmark never calls:
    resizing images in ``SamPredictor.set_image`` (we hand it the resized image through
    ``set_torch_image``) and box NMS in the automatic mask generator. Installing torchvision
    would pull a CUDA build of torch, so when it is absent this process (and only this
    process) gets empty stand-in modules whose functions raise if ever called.
    """
    try:
        return importlib.import_module("segment_anything")
    except ModuleNotFoundError as err:
        if err.name != "torchvision":
            raise
    _stand_in("torchvision")
    _stand_in("torchvision.transforms")
    _stand_in(
        "torchvision.transforms.functional",
        resize=_not_in_benchmark,
        to_pil_image=_not_in_benchmark,
    )
    _stand_in("torchvision.ops")
    _stand_in("torchvision.ops.boxes", batched_nms=_not_in_benchmark, box_area=_not_in_benchmark)
    return importlib.import_module("segment_anything")


class _InferenceDropPath(torch.nn.Module):
    """Stand-in for timm's DropPath: stochastic depth is the identity at inference."""

    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_prob:
            raise RuntimeError("bench_model.py stand-in for timm's DropPath is inference-only")
        return x


def _to_2tuple(x: object) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def _provide_timm() -> None:
    """Stand-ins for the four timm names ``tiny_vit_sam.py`` imports, if timm is missing.

    They serve training only (stochastic depth, weight initialisation, the model registry)
    apart from ``to_2tuple``, which is reproduced exactly; the checkpoint overwrites every
    initialised weight. Installing timm would pull torchvision and a CUDA build of torch.
    """
    try:
        importlib.import_module("timm.models.layers")
        return
    except ModuleNotFoundError as err:
        if err.name is None or not err.name.startswith("timm"):
            raise
    _stand_in("timm")
    _stand_in("timm.models")
    _stand_in(
        "timm.models.layers",
        DropPath=_InferenceDropPath,
        to_2tuple=_to_2tuple,
        trunc_normal_=torch.nn.init.trunc_normal_,
    )
    _stand_in("timm.models.registry", register_model=lambda fn: fn)


def _find_tiny_vit(code: str | None) -> Path | None:
    """MobileSAM's ``tiny_vit_sam.py``: a file, a folder holding a ``mobile_sam`` package, or
    an installed ``mobile_sam`` package (located without running its ``__init__``)."""
    if code:
        path = Path(code)
        if path.is_file():
            return path
        if path.is_dir():
            found = sorted(path.rglob("mobile_sam/modeling/tiny_vit_sam.py"))
            return found[0] if found else None
        return None
    spec = importlib.util.find_spec("mobile_sam")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidate = Path(root) / "modeling" / "tiny_vit_sam.py"
            if candidate.is_file():
                return candidate
    return None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # e.g. a source checkout on sys.path
        return None


class Reference:
    """The reference MobileSAM as its README builds it: ``Sam`` from segment-anything 1.0 with
    the official TinyViT encoder, and segment-anything's ``SamPredictor`` around it."""

    def __init__(self, checkpoint: Path, tiny_vit_file: Path) -> None:
        sa = _import_segment_anything()
        from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

        _provide_timm()
        spec = importlib.util.spec_from_file_location("_reference_tiny_vit_sam", tiny_vit_file)
        assert spec is not None and spec.loader is not None
        tiny_vit = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tiny_vit)

        # MobileSAM's build_sam_vit_t, argument for argument.
        self.sam = Sam(
            image_encoder=tiny_vit.TinyViT(
                img_size=1024,
                in_chans=3,
                num_classes=1000,
                embed_dims=[64, 128, 160, 320],
                depths=[2, 2, 6, 2],
                num_heads=[2, 4, 5, 10],
                window_sizes=[7, 7, 14, 7],
                mlp_ratio=4.0,
                drop_rate=0.0,
                drop_path_rate=0.0,
                use_checkpoint=False,
                mbconv_expand_ratio=4.0,
                local_conv_size=3,
                layer_lr_decay=0.8,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=256,
                image_embedding_size=(64, 64),
                input_image_size=(1024, 1024),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8
                ),
                transformer_dim=256,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self.sam.load_state_dict(state, strict=True)
        # After loading, as MobileSAM's README does: TinyViT's attention caches its bias table
        # when switched to eval mode, so eval() before loading would keep the initial zeros.
        self.sam.eval()
        self.predictor = sa.SamPredictor(self.sam)
        self.source = {
            "segment_anything": str(Path(sa.__file__).parent),
            "segment_anything_version": _version("segment-anything"),
            "tiny_vit_sam": str(tiny_vit_file),
            "tiny_vit_sam_sha256": hashlib.sha256(tiny_vit_file.read_bytes()).hexdigest(),
            "torchvision_stand_in": bool(
                getattr(sys.modules.get("torchvision"), "__stand_in__", False)
            ),
            "timm_stand_in": bool(getattr(sys.modules.get("timm"), "__stand_in__", False)),
        }

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """The image encoder alone, as ``SamPredictor.set_torch_image`` runs it."""
        with torch.no_grad():
            return self.sam.image_encoder(batch)

    def set_image(self, image: np.ndarray) -> None:
        """``SamPredictor.set_torch_image`` on our (PIL-exact) resized image."""
        resized = torch.as_tensor(np.array(model_input(image))).permute(2, 0, 1)[None]
        self.predictor.set_torch_image(resized.float(), image.shape[:2])

    def decode(
        self,
        points_xy: np.ndarray | None,
        labels: np.ndarray | None,
        box_xyxy: np.ndarray | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``SamPredictor.predict`` up to the decoder's output, without upscaling the masks."""
        p = self.predictor
        with torch.no_grad():
            points = boxes = None
            if points_xy is not None:
                xy = p.transform.apply_coords(points_xy, p.original_size)
                points = (
                    torch.as_tensor(xy, dtype=torch.float)[None],
                    torch.as_tensor(labels, dtype=torch.int)[None],
                )
            if box_xyxy is not None:
                box = p.transform.apply_boxes(box_xyxy, p.original_size)
                boxes = torch.as_tensor(box, dtype=torch.float)
            sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=None)
            return self.sam.mask_decoder(
                image_embeddings=p.features,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )


def load_reference(checkpoint: Path, code: str | None) -> tuple[Reference | None, str]:
    """The reference, or None and why it is missing."""
    if importlib.util.find_spec("segment_anything") is None:
        return None, 'segment-anything is not installed (pip install -e ".[reference]")'
    tiny_vit_file = _find_tiny_vit(code)
    if tiny_vit_file is None:
        return None, (
            "MobileSAM's tiny_vit_sam.py was not found: pass --mobile-sam-code (a file, or a "
            f"folder holding mobile_sam/modeling/tiny_vit_sam.py), set {MOBILE_SAM_CODE_ENV}, "
            "or install the mobile_sam package"
        )
    try:
        return Reference(checkpoint, tiny_vit_file), f"reference from {tiny_vit_file}"
    except Exception as err:  # report and go on with our own columns
        return None, f"the reference failed to load: {type(err).__name__}: {err}"


# --- the benchmark ----------------------------------------------------------------------------


def _max_abs(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(np.abs(diff).max())


def _click(model: SamModel, embedding: ImageEmbedding) -> np.ndarray:
    """One click to boolean masks at the image's size: what a viewer shows."""
    decoded = model.decode(embedding, points=POINT_YX, labels=np.array([1]), multimask=True)
    return (model.upscale(decoded.low_res_logits, embedding) > 0).cpu().numpy()


def run(args: argparse.Namespace) -> dict[str, object]:
    machine_at_start = machine()
    image = skimage.data.astronaut()  # (512, 512, 3) uint8
    checkpoint = fetch("mobile_sam")
    models = {
        "fast": load_model("mobile_sam", device="cpu", fast=True),
        "plain": load_model("mobile_sam", device="cpu", fast=False),
    }
    reference, note = load_reference(checkpoint, args.mobile_sam_code)
    print(f"reference: {note}")

    prepared, resized = models["plain"].prepare(image)
    batch = prepared[None]
    rows: dict[str, dict[str, object]] = {}

    def record(
        row: str,
        variants: dict[str, Callable[[], object]],
        repeats: int,
        parity: dict[str, float],
    ) -> None:
        print(f"timing {row}: {repeats} interleaved rounds of {', '.join(variants)}", flush=True)
        seconds = interleaved(variants, repeats, warmup=args.warmup)
        rows[row] = {
            "seconds": seconds,
            "summary": {k: summarize(v) for k, v in seconds.items()},
            # Median over rounds of each round's ratio to the fast path in that same round:
            # robust to the load drift of a shared machine, unlike the ratio of the medians.
            "ratio_to_fast": {
                k: float(np.median(np.divide(v, seconds["fast"])))
                for k, v in seconds.items()
                if k != "fast"
            },
            "parity": parity,
        }

    # Encoder: one prepared 1024 x 1024 input.
    embeddings = {k: m.encode(batch) for k, m in models.items()}
    encoder_variants: dict[str, Callable[[], object]] = {
        k: (lambda m=m: m.encode(batch)) for k, m in models.items()
    }
    parity = {"fast_vs_plain": _max_abs(embeddings["fast"], embeddings["plain"])}
    if reference is not None:
        reference.set_image(image)
        parity["reference_vs_plain"] = _max_abs(reference.predictor.features, embeddings["plain"])
        encoder_variants["reference"] = lambda: reference.encode(batch)
    record("encoder", encoder_variants, args.repeats, parity)

    # Decoder rows: both of our paths decode the same (plain) embedding.
    embedding = ImageEmbedding(embeddings["plain"], image.shape[:2], resized)
    point_xy, labels = POINT_YX[:, ::-1].copy(), np.array([1])
    box_xyxy = BOX_YXYX[[1, 0, 3, 2]]
    prompts = {
        "decoder, 1 point (3 masks)": (
            {"points": POINT_YX, "labels": labels, "multimask": True},
            (point_xy, labels, None, True),
        ),
        "decoder, 1 box (1 mask)": (
            {"boxes": BOX_YXYX, "multimask": False},
            (None, None, box_xyxy[None], False),
        ),
    }
    for row, (ours, theirs) in prompts.items():
        outputs = {k: m.decode(embedding, **ours).low_res_logits for k, m in models.items()}
        variants: dict[str, Callable[[], object]] = {
            k: (lambda m=m, kw=ours: m.decode(embedding, **kw)) for k, m in models.items()
        }
        parity = {"fast_vs_plain": _max_abs(outputs["fast"], outputs["plain"])}
        if reference is not None:
            low_res, _ = reference.decode(*theirs)
            parity["reference_vs_plain"] = _max_abs(low_res, outputs["plain"])
            variants["reference"] = lambda t=theirs: reference.decode(*t)
        record(row, variants, args.repeats * args.decoder_factor, parity)

    # A whole click on the 512 x 512 image: decoder, upscaling, threshold.
    logits = {
        k: m.upscale(m.decode(embedding, points=POINT_YX, labels=labels).low_res_logits, embedding)
        for k, m in models.items()
    }
    parity = {
        "fast_vs_plain": _max_abs(logits["fast"], logits["plain"]),
        "fast_vs_plain_mask_pixels_differing": int(
            ((logits["fast"] > 0) != (logits["plain"] > 0)).sum()
        ),
    }
    click_variants: dict[str, Callable[[], object]] = {
        k: (lambda m=m: _click(m, embedding)) for k, m in models.items()
    }
    if reference is not None:
        predictor = reference.predictor
        ref_logits, _, _ = predictor.predict(
            point_xy, labels, multimask_output=True, return_logits=True
        )
        parity["reference_vs_plain"] = _max_abs(ref_logits, logits["plain"][0])
        parity["reference_vs_plain_mask_pixels_differing"] = int(
            ((ref_logits > 0) != (logits["plain"][0] > 0).numpy()).sum()
        )
        click_variants["reference"] = lambda: predictor.predict(
            point_xy, labels, multimask_output=True
        )
    record(
        "click: decoder + upscale to 512 x 512",
        click_variants,
        args.repeats * args.decoder_factor,
        parity,
    )

    return {
        "benchmark": "bench_model",
        "machine": machine_at_start,
        "settings": {
            "repeats_encoder": args.repeats,
            "repeats_decoder": args.repeats * args.decoder_factor,
            "warmup": args.warmup,
            "image": "skimage.data.astronaut() (512, 512, 3)",
            "point_yx": POINT_YX.tolist(),
            "box_yxyx": BOX_YXYX.tolist(),
        },
        "model": {
            "name": "mobile_sam",
            "checkpoint": str(checkpoint),
            "sha256": models["plain"].sha256,
        },
        "reference": {
            "available": reference is not None,
            "note": note,
            **({"source": reference.source} if reference is not None else {}),
        },
        "rows": rows,
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def table(results: dict[str, object]) -> str:
    """The results as a Markdown table: p50 / p95 ms, paired ratios, max abs differences."""
    rows = results["rows"]
    has_ref = results["reference"]["available"]
    headers = ["ms (p50 / p95)", "ours fast", "ours plain", "plain ÷ fast"]
    if has_ref:
        headers += ["reference", "reference ÷ fast"]
    headers += ["max abs diff fast vs plain"]
    if has_ref:
        headers += ["reference vs plain"]
    lines = []
    for name, row in rows.items():
        s, parity = row["summary"], row["parity"]
        ratio = row["ratio_to_fast"]
        cells = [name, s["fast"].cell(), s["plain"].cell(), f"{ratio['plain']:.2f}x"]
        if has_ref:
            cells += [s["reference"].cell(), f"{ratio['reference']:.2f}x"]
        cells.append(f"{parity['fast_vs_plain']:.1e}")
        if has_ref:
            cells.append(f"{parity['reference_vs_plain']:.1e}")
        lines.append(cells)
    return markdown_table(headers, lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="encoder rounds (default 10)")
    parser.add_argument(
        "--decoder-factor",
        type=int,
        default=10,
        help="decoder rows run this many times --repeats rounds (default 10)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="write all raw timings as JSON here")
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
        f"{info['torch_threads']} threads; ms are medians / 95th percentiles of interleaved "
        "rounds, ratios the median of each round's time over the fast path's"
    )
    if not results["reference"]["available"]:
        print(f"reference columns skipped: {results['reference']['note']}")
    print(table(results))
    if args.out:
        write_json(args.out, results)
        print(f"raw timings written to {args.out}")


if __name__ == "__main__":
    main()
