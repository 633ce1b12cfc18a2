"""TinyViT-5M, MobileSAM's image encoder: ``(B, 3, 1024, 1024)`` to ``(B, 256, 64, 64)``.

A convolutional first stage (MBConv blocks) followed by three stages of windowed
attention with a learned bias per relative offset, each block closing with a
depthwise "local" convolution. Stage widths 64-128-160-320; the last stage keeps the
64 x 64 grid so the output matches SAM's decoder.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .common import attention, neck

__all__ = [
    "Attention",
    "BasicLayer",
    "Conv2dBN",
    "ConvLayer",
    "MBConv",
    "Mlp",
    "PatchEmbed",
    "PatchMerging",
    "TinyViT",
    "TinyViTBlock",
]


class Conv2dBN(nn.Sequential):
    """A bias-free convolution followed by BatchNorm (``c``, ``bn`` as in the checkpoint)."""

    c: nn.Conv2d
    bn: nn.BatchNorm2d

    def __init__(
        self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.add_module(
            "c",
            nn.Conv2d(
                in_chans, out_chans, kernel, stride, padding=kernel // 2, groups=groups, bias=False
            ),
        )
        self.add_module("bn", nn.BatchNorm2d(out_chans))


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: 1024 to 256 pixels a side."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, 3, 2),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, 3, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: expand 1x1, depthwise 3x3, project 1x1, add the input."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, 1)
        self.conv2 = Conv2dBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsampling between stages; takes ``(B, C, H, W)`` or tokens, returns tokens."""

    def __init__(self, resolution: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        # MobileSAM keeps the 64 x 64 grid into the last stage: no stride for its widths.
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = Conv2dBN(dim, out_dim, 1)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            b, _, c = x.shape
            x = x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Window attention with a learned bias per (|dy|, |dx|) offset and head.

    The qkv projection is laid out per head as ``[q_h, k_h, v_h]``.
    """

    attention_bias_idxs: torch.Tensor

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fused = True  # see common.attention
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        index = []
        for p in points:
            for q in points:
                key = (abs(p[0] - q[0]), abs(p[1] - q[1]))
                index.append(offsets.setdefault(key, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer(
            "attention_bias_idxs",
            torch.tensor(index, dtype=torch.long).view(len(points), len(points)),
            persistent=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        out = attention(q, k, v, bias, fused=self.fused)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """LayerNorm, then the feed-forward layers."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention, a depthwise local convolution, then the MLP; tokens in and out."""

    def __init__(
        self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, 3, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        size, ws = self.resolution, self.window
        if size == ws:
            return self.attn(x)
        x = x.view(b, size, size, c)
        pad = (ws - size % ws) % ws
        if pad:
            x = F.pad(x, (0, 0, 0, pad, 0, pad))
        padded = size + pad
        nw = padded // ws
        x = x.view(b, nw, ws, nw, ws, c).transpose(2, 3).reshape(b * nw * nw, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, nw, nw, ws, ws, c).transpose(2, 3).reshape(b, padded, padded, c)
        if pad:
            x = x[:, :size, :size].contiguous()
        return x.view(b, n, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        x = x + self._windowed_attention(x)
        x = x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution)
        x = self.local_conv(x).view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    """The convolutional first stage."""

    def __init__(
        self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class BasicLayer(nn.Module):
    """An attention stage."""

    def __init__(
        self,
        dim: int,
        resolution: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """MobileSAM's TinyViT image encoder.

    The classification head (``norm_head``, ``head``) is kept only so that the
    official checkpoint loads with ``strict=True``; it is never run.
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        grid = img_size // 4
        layers: list[nn.Module] = []
        for i, dim in enumerate(embed_dims):
            # The last stage runs at the previous stage's resolution (no stride, see PatchMerging).
            resolution = grid // 2 ** min(i, len(embed_dims) - 2)
            last = i == len(embed_dims) - 1
            down = None if last else PatchMerging(resolution, dim, embed_dims[i + 1])
            if i == 0:
                layers.append(ConvLayer(dim, depths[0], mbconv_expand_ratio, down))
            else:
                layers.append(
                    BasicLayer(
                        dim, resolution, depths[i], num_heads[i], window_sizes[i], mlp_ratio, down
                    )
                )
        self.layers = nn.ModuleList(layers)
        self.out_grid = grid // 2 ** (len(embed_dims) - 2)
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = neck(embed_dims[-1], out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, self.out_grid, self.out_grid)
        return self.neck(x)
