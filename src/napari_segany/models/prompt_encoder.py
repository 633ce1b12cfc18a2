"""SAM's prompt encoder: points, boxes and a low-resolution mask to embeddings.

Coordinates here are the model's: ``(x, y)`` in pixels of the 1024 x 1024 model input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d

__all__ = [
    "PositionEmbeddingRandom",
    "PromptEncoder",
]

#: Point labels understood by the encoder: -1 padding, 0 negative, 1 positive,
#: 2 and 3 the top-left and bottom-right corners of a box.
PADDING, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (Fourier features)."""

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(self, num_pos_feats: int = 64) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode coordinates normalised to [0, 1] (last axis ``(x, y)``)."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of a ``(h, w)`` grid of pixel centres: ``(C, h, w)``."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=matrix.device, dtype=matrix.dtype) + 0.5) / h
        xs = (torch.arange(w, device=matrix.device, dtype=matrix.dtype) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(
        self, coords: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Encode ``(x, y)`` pixel coordinates in an image of ``(h, w)`` pixels."""
        scale = torch.tensor(
            [image_size[1], image_size[0]], dtype=torch.float32, device=coords.device
        )
        return self._encode(coords.float() / scale)


class PromptEncoder(nn.Module):
    """Encode points, boxes and masks for the mask decoder."""

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # positive point, negative point, box top-left, box bottom-right (see PADDING, ... above)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: ``(1, C, 64, 64)``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _point_embedding(self, label: int) -> torch.Tensor:
        """The ``(1, C)`` learned embedding of a point label (not PADDING)."""
        embedding = self.point_embeddings[label]
        assert isinstance(embedding, nn.Embedding)
        return embedding.weight

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # to pixel centres
        if pad:
            b = points.shape[0]
            points = torch.cat([points, points.new_zeros(b, 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((b, 1), PADDING)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == PADDING, self.not_a_point_embed.weight, emb)
        emb = emb + (lab == NEGATIVE) * self._point_embedding(NEGATIVE)
        emb = emb + (lab == POSITIVE) * self._point_embedding(POSITIVE)
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_weights = torch.cat(
            [
                self._point_embedding(BOX_TOP_LEFT),
                self._point_embedding(BOX_BOTTOM_RIGHT),
            ]
        )
        return emb + corner_weights

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Low-resolution mask logits ``(B, 1, 256, 256)`` to dense embeddings."""
        return self.mask_downscaling(masks)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse ``(B, N, C)`` and dense ``(B, C, 64, 64)`` prompt embeddings.

        Parameters
        ----------
        points
            ``(coords (B, N, 2), labels (B, N))`` in model-input pixels, or None.
        boxes
            ``(B, 4)`` as ``(x0, y0, x1, y1)`` in model-input pixels, or None.
        masks
            ``(B, 1, 256, 256)`` low-resolution mask logits, or None.
        """
        if points is not None:
            b = points[0].shape[0]
        elif boxes is not None:
            b = boxes.shape[0]
        elif masks is not None:
            b = masks.shape[0]
        else:
            b = 1
        weight = self.no_mask_embed.weight
        sparse = [weight.new_empty((b, 0, self.embed_dim))]
        if points is not None:
            sparse.append(self._embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(b, -1, h, w)
        return torch.cat(sparse, dim=1), dense
