"""The mask decoder's two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLPBlock, attention

__all__ = [
    "Attention",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
]


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections, optionally to a narrower width."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        internal = embedding_dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the width {internal}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, internal)
        self.k_proj = nn.Linear(embedding_dim, internal)
        self.v_proj = nn.Linear(embedding_dim, internal)
        self.out_proj = nn.Linear(internal, embedding_dim)
        self.fused = True  # see common.attention

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention over already projected ``(B, heads, N, d)`` tensors, heads merged back."""
        out = attention(q, k, v, fused=self.fused)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        )


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of the tokens, tokens to image, MLP, image to tokens."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        keys_with_pe = keys + key_pe
        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, keys_with_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys_with_pe, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """A stack of :class:`TwoWayAttentionBlock` and a last attention of tokens to image."""

    def __init__(
        self,
        *,
        depth: int = 2,
        embedding_dim: int = 256,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def block(self, index: int) -> TwoWayAttentionBlock:
        """Layer ``index`` of ``layers``, typed as the block it is."""
        layer = self.layers[index]
        assert isinstance(layer, TwoWayAttentionBlock)
        return layer

    def blocks(self) -> list[TwoWayAttentionBlock]:
        """All of ``layers``, in order, typed as the blocks they are."""
        return [self.block(i) for i in range(len(self.layers))]

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the updated tokens ``(B, N, C)`` and image tokens ``(B, HW, C)``.

        ``image_embedding`` and ``image_pe`` are ``(B, C, H, W)``; ``point_embedding`` is
        ``(B, N, C)``.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        queries = queries + self.final_attn_token_to_image(q, keys + key_pe, keys)
        return self.norm_final_attn(queries), keys
