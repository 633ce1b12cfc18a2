"""Small building blocks shared by the SAM networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MLP",
    "LayerNorm2d",
    "MLPBlock",
    "attention",
    "neck",
]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    fused: bool = True,
) -> torch.Tensor:
    """Softmax attention over ``(..., N, d)`` tensors, with an optional additive bias.

    ``fused=True`` takes the fastest kernel for the device: ``scaled_dot_product_attention``
    on accelerators and whenever there is no bias; on the CPU with a bias, one ``baddbmm``
    (SDPA's masked CPU path checks every row for -inf and is ~1.5x slower there).
    ``fused=False`` is the plain formulation of the reference implementations.
    """
    scale = q.shape[-1] ** -0.5
    if not fused:
        attn = (q * scale) @ k.transpose(-2, -1)
        if bias is not None:
            attn = attn + bias
        return attn.softmax(dim=-1) @ v
    if bias is None or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    *lead, n, d = q.shape
    m = k.shape[-2]
    q3, k3, v3 = q.reshape(-1, n, d), k.reshape(-1, m, d), v.reshape(-1, m, v.shape[-1])
    bias3 = bias.expand(*lead, n, m).reshape(-1, n, m)
    attn = torch.baddbmm(bias3, q3, k3.transpose(1, 2), alpha=scale).softmax(dim=-1)
    return torch.bmm(attn, v3).view(*lead, n, v.shape[-1])


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two linear layers with an activation between them (transformer feed-forward)."""

    def __init__(
        self, embedding_dim: int, mlp_dim: int, activation: type[nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """A stack of linear layers with ReLU between them (the decoder's heads)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))

    def linears(self) -> list[nn.Linear]:
        """The linear layers of ``layers``, in order, typed as such."""
        linears = []
        for layer in self.layers:
            assert isinstance(layer, nn.Linear)
            linears.append(layer)
        return linears

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = torch.relu(x)
        return x


def neck(in_dim: int, out_chans: int) -> nn.Sequential:
    """The encoders' shared neck: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d."""
    return nn.Sequential(
        nn.Conv2d(in_dim, out_chans, kernel_size=1, bias=False),
        LayerNorm2d(out_chans),
        nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_chans),
    )
