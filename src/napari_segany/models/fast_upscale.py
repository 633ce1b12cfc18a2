"""The mask decoder's output upscaling, rearranged for the fast decoder.

SAM's output upscaling turns the ``(H*W, C)`` image tokens left by the two-way transformer
into ``(4H, 4W)`` mask logits: a 2x2 stride-2 transposed convolution, a layer norm over
channels and GELU, a second such convolution and GELU, then a dot product with one
hypernetwork vector per mask. A 2x2 stride-2 transposed convolution maps every pixel on
its own, so both run here as plain matrix products in a blocked pixel order (rows ``(i, j,
a, b)`` for output pixel ``(2i + a, 2j + b)``), and only the final masks are put back in
image order, by one gather with a precomputed index.

The first convolution can also be carried through the transformer instead of applied to
its output. Each layer ends with ``X' = LayerNorm(X + P^T U)``, where ``P`` holds the
image tokens' attention over the few prompt tokens and ``U`` the prompt side; a layer norm
is ``(y - mean) * rstd * g + beta`` per row. So with ``M = diag(g) W`` for the last layer
and ``M_prev = diag(g_prev) M`` before it, ``X' W`` unrolls into the image's own tokens
times ``M_0`` (the same for every prompt: computed once per image), plus ``P^T (U M)``
for each layer (a product with as many columns as attention rows, about 56 for a click),
with each layer's mean and rstd applied per row. That replaces the
``4096 x 256 x 256`` first convolution by two ``4096 x 56 x 256`` products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .mask_decoder import MaskDecoder

__all__ = [
    "Upscaler",
]


class Upscaler:
    """Image tokens (or the carried first convolution) to mask logits.

    Parameters
    ----------
    decoder
        The network's mask decoder (its output upscaling and transformer layer norms).
    """

    def __init__(self, decoder: MaskDecoder) -> None:
        up1, norm, _, up2, _ = decoder.output_upscaling
        assert isinstance(up1, nn.ConvTranspose2d) and isinstance(up2, nn.ConvTranspose2d)
        assert isinstance(norm, LayerNorm2d)
        assert up1.bias is not None and up2.bias is not None  # made with biases
        # (C_in, C_out, 2, 2) -> (C_in, 2 * 2 * C_out): columns ordered (row, column, out).
        self.w1 = up1.weight.permute(0, 2, 3, 1).reshape(up1.in_channels, -1).detach()
        self.b1 = up1.bias.repeat(4).detach()
        self.w2 = up2.weight.permute(0, 2, 3, 1).reshape(up2.in_channels, -1).detach()
        self.b2 = up2.bias.repeat(4).detach()
        self.norm = norm
        # The first convolution carried back through each layer's closing layer norm.
        norms = [layer.norm4 for layer in decoder.transformer.blocks()]
        carried = [self.w1]
        for n in reversed(norms):
            carried.insert(0, n.weight.detach()[:, None] * carried[0])
        self.carried = carried[:-1]  # M_l for each layer l
        self.column_sums = [m.sum(0) for m in self.carried]
        # beta_{l-1} M_l joins layer l's product; the last beta and the bias come at the end
        self.shifts = [None] + [
            n.bias.detach() @ m for n, m in zip(norms[:-1], self.carried[1:], strict=True)
        ]
        self.end_shift = norms[-1].bias.detach() @ self.w1 + self.b1
        self._order: dict[tuple[int, int], torch.Tensor] = {}

    # --- the first convolution carried through the transformer -------------------------------

    def image_part(self, keys: torch.Tensor) -> torch.Tensor:
        """``(1, M, C)`` image tokens entering the transformer, times ``M_0`` (once per image)."""
        return torch.matmul(keys, self.carried[0])

    def add_layer(
        self,
        carried: torch.Tensor,
        layer: int,
        weights: torch.Tensor,
        prompt_side: torch.Tensor,
        heads: int,
    ) -> torch.Tensor:
        """Add layer ``layer``'s attention update ``weights @ prompt_side`` (before its norm).

        ``weights`` is ``(B, M, heads * N)``, each head's N columns summing to one per row,
        ``prompt_side`` ``(B, heads * N, C)`` with the output bias already in it. For the
        first layer ``carried`` is :meth:`image_part` (kept, not changed); later it is the
        ``(B, M, 4 * C/4)`` result of the layer before, updated in place and returned.
        """
        side = torch.matmul(prompt_side, self.carried[layer])
        shift = self.shifts[layer]
        if shift is not None:  # a constant row: each head's weights sum to one
            side = side + shift / heads
        if layer == 0:
            return torch.baddbmm(carried, weights, side)
        return carried.baddbmm_(weights, side)

    def apply_norm(
        self, carried: torch.Tensor, layer: int, mean: torch.Tensor, rstd: torch.Tensor
    ) -> torch.Tensor:
        """Layer ``layer``'s closing layer norm, given its ``(B, M, 1)`` mean and rstd."""
        carried.addcmul_(mean, self.column_sums[layer], value=-1).mul_(rstd)
        if layer == len(self.carried) - 1:
            carried.add_(self.end_shift)
        return carried

    # --- from the first convolution's output to masks ---------------------------------------

    def first(self, keys: torch.Tensor) -> torch.Tensor:
        """The first convolution applied to the transformer's ``(B, M, C)`` image tokens."""
        b, m, _ = keys.shape
        return torch.addmm(self.b1, keys.reshape(b * m, -1), self.w1).view(b, m, -1)

    def masks(
        self, first: torch.Tensor, hyper: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """``(B, K, 4H, 4W)`` mask logits.

        Parameters
        ----------
        first
            ``(B, H*W, 4 * C/4)`` output of the first convolution, blocked pixel order.
        hyper
            ``(B, K, C/8)`` hypernetwork vectors, one per mask.
        size
            ``(H, W)`` of the image tokens.
        """
        b, m, _ = first.shape
        norm = self.norm
        x = first.reshape(b * m * 4, -1)
        x = F.gelu(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
        x = F.gelu(torch.addmm(self.b2, x, self.w2))  # (BM4, 4 * C/8)
        masks = torch.bmm(x.view(b, m * 16, -1), hyper.transpose(1, 2))  # (B, 16M, K)
        h, w = size
        masks = masks.index_select(1, self._image_order(h, w))
        return masks.transpose(1, 2).reshape(b, -1, 4 * h, 4 * w)

    def _image_order(self, h: int, w: int) -> torch.Tensor:
        """For each pixel in image order, its row in the blocked order."""
        order = self._order.get((h, w))
        if order is None:
            # blocked rows are (i, j, a, b, a2, b2): pixel (4i + 2a + a2, 4j + 2b + b2)
            blocked = torch.arange(16 * h * w, device=self.w1.device).view(h, w, 2, 2, 2, 2)
            order = blocked.permute(0, 2, 4, 1, 3, 5).reshape(-1)
            self._order[(h, w)] = order
        return order
