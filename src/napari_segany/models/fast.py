"""Inference fast paths as switches on an already built network.

Each switch keeps the parameter names of the official checkpoints apart from BatchNorm
folding, which is applied after the weights are loaded.
"""

from __future__ import annotations

import torch
from torch import nn

from .tiny_vit import Conv2dBN

__all__ = [
    "fold_batchnorm",
    "set_fused_attention",
]


def set_fused_attention(model: nn.Module, enabled: bool) -> nn.Module:
    """Use ``scaled_dot_product_attention`` (True) or the plain matmul/softmax path (False)."""
    for module in model.modules():
        if hasattr(module, "fused"):
            # setattr: nn.Module types its attributes as tensors or modules, not flags
            setattr(module, "fused", enabled)  # noqa: B010
    return model


def _two(size: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's per-axis setting (its attributes are typed for any number of axes)."""
    h, w = size
    return h, w


def _folded(block: Conv2dBN) -> nn.Conv2d:
    conv, bn = block.c, block.bn
    # Conv2dBN's BatchNorm tracks running statistics (the checkpoints hold them).
    assert bn.running_mean is not None and bn.running_var is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        _two(conv.kernel_size),
        _two(conv.stride),
        conv.padding if isinstance(conv.padding, str) else _two(conv.padding),
        _two(conv.dilation),
        conv.groups,
        bias=True,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    assert fused.bias is not None  # made with bias=True
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every convolution + BatchNorm pair by one convolution with a bias (inference only).

    Changes the state-dict keys of the folded layers: load weights first.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, Conv2dBN):
            setattr(model, name, _folded(child))
        else:
            fold_batchnorm(child)
    return model
