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
            module.fused = enabled
    return model


def _folded(block: Conv2dBN) -> nn.Conv2d:
    conv, bn = block.c, block.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
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
