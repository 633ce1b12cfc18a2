"""The Sam network: image encoder, prompt encoder and mask decoder composed.

Pure torch, no I/O. Works in the model's own frame: images resized so that the longest
side is ``image_size`` (1024), normalised with the pixel mean/std and zero-padded to a
square at the bottom and right; prompts as ``(x, y)`` in that frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_STD",
    "Sam",
    "input_size",
]

#: ImageNet statistics in 0-255 units, as the official SAM checkpoints expect.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def input_size(original: tuple[int, int], long_side: int = 1024) -> tuple[int, int]:
    """The ``(h, w)`` an image of ``original`` size takes after resizing its longest side."""
    h, w = original
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


class Sam(nn.Module):
    """Segment Anything: ``image_encoder`` + ``prompt_encoder`` + ``mask_decoder``."""

    mask_threshold: float = 0.0
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        image_size: int = 1024,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_size = image_size
        self.register_buffer(
            "pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False
        )

    def normalize_and_pad(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise resized ``(B, 3, h, w)`` 0-255 images and zero-pad them to a square."""
        x = (images - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``(B, 256, 64, 64)`` of normalised, padded ``(B, 3, 1024, 1024)``."""
        return self.image_encoder(images)

    def decode(
        self,
        embeddings: torch.Tensor,
        *,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits ``(B, K, 256, 256)`` and predicted IoU ``(B, K)``.

        ``B`` is the number of prompts (objects); ``embeddings`` is ``(1, 256, 64, 64)`` shared
        by all of them or one per prompt. Coordinates are model-frame ``(x, y)``.
        """
        sparse, dense = self.prompt_encoder(points, boxes, mask_logits)
        return self.mask_decoder(
            embeddings,
            self.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            multimask_output,
        )

    def upscale_masks(
        self,
        low_res: torch.Tensor,
        resized: tuple[int, int],
        original: tuple[int, int],
    ) -> torch.Tensor:
        """Mask logits ``(B, K, 256, 256)`` to the original image size ``(B, K, H, W)``.

        ``resized`` is the image's size inside the padded model input.
        """
        masks = F.interpolate(
            low_res, (self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        masks = masks[..., : resized[0], : resized[1]]
        return F.interpolate(masks, original, mode="bilinear", align_corners=False)
