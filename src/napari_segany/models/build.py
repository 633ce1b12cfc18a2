"""The architectures by name: one private builder per encoder family, thin named entries."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer
from .vit import ImageEncoderViT

__all__ = [
    "ARCHITECTURES",
    "EMBED_DIM",
    "IMAGE_SIZE",
    "PATCH",
    "build_sam",
    "infer_architecture",
]

IMAGE_SIZE = 1024
EMBED_DIM = 256
PATCH = 16


def _sam(image_encoder: torch.nn.Module) -> Sam:
    grid = IMAGE_SIZE // PATCH
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=EMBED_DIM,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=EMBED_DIM, num_heads=8, mlp_dim=2048
            ),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        image_size=IMAGE_SIZE,
    )


def _vit(
    embed_dim: int, depth: int, num_heads: int, global_attn: tuple[int, ...]
) -> Callable[[], Sam]:
    def build() -> Sam:
        return _sam(
            ImageEncoderViT(
                img_size=IMAGE_SIZE,
                patch_size=PATCH,
                embed_dim=embed_dim,
                depth=depth,
                num_heads=num_heads,
                out_chans=EMBED_DIM,
                window_size=14,
                global_attn_indexes=global_attn,
            )
        )

    return build


def _tiny_vit() -> Sam:
    return _sam(TinyViT(img_size=IMAGE_SIZE, out_chans=EMBED_DIM))


#: Architecture name -> builder of an untrained :class:`Sam`.
ARCHITECTURES: Mapping[str, Callable[[], Sam]] = {
    "vit_b": _vit(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": _vit(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": _vit(1280, 32, 16, (7, 15, 23, 31)),
    "mobile_sam": _tiny_vit,
}

_VIT_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def build_sam(architecture: str) -> Sam:
    """An untrained :class:`Sam` of the named architecture (on the CPU, float32, eval mode)."""
    try:
        builder = ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise ValueError(f"unknown architecture {architecture!r}; known: {known}") from None
    return builder().eval()


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Tell the architecture of a SAM-format state dict from its keys and shapes."""
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state_dict:
        return "mobile_sam"
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    if patch is not None and patch.shape[0] in _VIT_WIDTHS:
        return _VIT_WIDTHS[patch.shape[0]]
    raise ValueError(
        "cannot tell the architecture of this checkpoint: it has neither a TinyViT encoder "
        "(MobileSAM) nor a ViT encoder of width 768, 1024 or 1280 (SAM vit_b, vit_l, vit_h)"
    )
