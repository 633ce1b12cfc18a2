"""The mask decoder's forward pass for training: differentiable, rearranged, on windows.

Training the prompt encoder and mask decoder on stored embeddings costs only decoder
passes, and two things make those passes several times cheaper than the plain module's
without changing a single output:

* the attention runs in the rearranged order of :mod:`.fast_decoder` (projection weights
  moved to the few prompt tokens), which is also far lighter on the activations kept for
  the backward pass;
* the output upscaling (two 2x2 stride-2 transposed convolutions, a per-pixel layer norm
  and GELU, then a per-pixel product with the hypernetwork vectors) maps each image token
  to its own 4 x 4 block of logits, so the logits of a window of tokens are exactly the
  window of the full logits: only the window around each object is upscaled.

Everything here is plain autograd; nothing is cached between calls, so the weights may
change after every step.
"""

from __future__ import annotations

import torch

from .fast_decoder import _image_to_token, _token_to_image
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayAttentionBlock


def _layer(
    layer: TwoWayAttentionBlock,
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_pe: torch.Tensor,
    key_pe: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One two-way block: prompt tokens ``(B, N, C)``, image tokens ``(B or 1, M, C)``."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q, q, queries)
    queries = layer.norm1(queries)
    q = queries + query_pe
    attended = _token_to_image(layer.cross_attn_token_to_image, q, keys + key_pe, keys)
    queries = layer.norm2(queries + attended)
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + query_pe
    weights, side = _image_to_token(layer.cross_attn_image_to_token, keys + key_pe, q, queries)
    keys = layer.norm4(torch.baddbmm(keys.expand(weights.shape[0], -1, -1), weights, side))
    return queries, keys


def decode_windows(
    prompt_encoder: PromptEncoder,
    decoder: MaskDecoder,
    features: torch.Tensor,
    *,
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    mask_logits: torch.Tensor | None,
    windows: torch.Tensor,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All four mask tokens' logits on a window per prompt, and the four predicted IoUs.

    Parameters
    ----------
    prompt_encoder, decoder
        The network's modules (train or eval mode; nothing is kept).
    features
        ``(B, C, H, W)`` image embeddings, one per prompt (or ``(1, C, H, W)`` shared).
    points, boxes, mask_logits
        As :meth:`PromptEncoder.forward` takes them: model-input pixels, ``(x, y)``.
    windows
        ``(B, 2)`` integer ``(row, column)`` of each window's first image token.
    size
        The side of every window in image tokens (the logits' window is 4x that).

    Returns
    -------
    masks, iou
        ``(B, 4, 4 size, 4 size)`` logits (token 0 the single mask, 1-3 the candidates) and
        ``(B, 4)``.
    """
    sparse, dense = prompt_encoder(points, boxes, mask_logits)
    b = sparse.shape[0]
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    _, c, h, w = features.shape
    if mask_logits is None:  # the same no-mask embedding everywhere: broadcast, not copied
        dense = dense[:1]
    keys = (features + dense).flatten(2).transpose(1, 2)
    pe = prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)
    transformer = decoder.transformer
    queries = tokens
    for layer in transformer.blocks():
        queries, keys = _layer(layer, queries, keys, tokens, pe)
    final = transformer.final_attn_token_to_image
    queries = queries + _token_to_image(final, queries + tokens, keys + pe, keys)
    queries = transformer.norm_final_attn(queries)

    grid = keys.transpose(1, 2).reshape(b, c, h, w)
    rows = windows[:, 0, None] + torch.arange(size, device=grid.device)  # (B, size)
    cols = windows[:, 1, None] + torch.arange(size, device=grid.device)
    index = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, -1).expand(-1, c, -1)
    cropped = torch.gather(grid.flatten(2), 2, index).view(b, c, size, size)
    upscaled = decoder.output_upscaling(cropped)  # (B, C/8, 4 size, 4 size)
    mask_tokens = queries[:, 1 : 1 + decoder.num_mask_tokens]
    hyper = torch.stack(
        [mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
        dim=1,
    )  # (B, 4, C/8)
    masks = torch.einsum("bkc,bchw->bkhw", hyper, upscaled)
    return masks, decoder.iou_prediction_head(queries[:, 0])


def window_starts(boxes: torch.Tensor, size: int, grid: int = 64, patch: int = 16) -> torch.Tensor:
    """``(B, 2)`` first token of a ``size``-token window centred on each model-frame box.

    ``boxes`` are ``(B, 4)`` ``(x0, y0, x1, y1)`` in model-input pixels; windows are kept
    inside the ``grid`` x ``grid`` token grid (``patch`` pixels a token).
    """
    centre = torch.stack([(boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2], 1)
    start = torch.round(centre / patch - size / 2).long()
    return start.clamp(0, grid - size)


def crop_windows(maps: torch.Tensor, windows: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 4 size, 4 size)`` windows of ``(B, 256, 256)`` low-resolution maps."""
    b = maps.shape[0]
    side = 4 * size
    rows = 4 * windows[:, 0, None] + torch.arange(side, device=maps.device)
    cols = 4 * windows[:, 1, None] + torch.arange(side, device=maps.device)
    index = (rows[:, :, None] * maps.shape[-1] + cols[:, None, :]).reshape(b, -1)
    return torch.gather(maps.flatten(1), 1, index).view(b, side, side)


__all__ = ["crop_windows", "decode_windows", "window_starts"]
