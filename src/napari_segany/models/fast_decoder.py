"""The mask decoder rearranged for few prompt tokens: same outputs, a third of the arithmetic.

SAM's decoder attends between a handful of prompt tokens (N, about 7) and 4096 image tokens
of width C = 256, through projections to a narrower width (128, 8 heads of d = 16). The
plain formulation projects all 4096 image tokens to keys, values and queries: 4096 x 256 x
128 multiply-adds each, most of the decoder's cost. Because attention is linear in those
projections, the same numbers come out of moving the projection weights to the few-token
side instead:

* token-to-image, scores: ``q . (W_k x + b_k) = (W_k^T q) . x + const``; the constant
  does not change a softmax over the image tokens, so the scores cost ``(heads N) x C``
  per image token instead of ``128 x C``;
* token-to-image, values: softmax rows sum to one, so ``P (X W_v^T + b_v) = (P X) W_v^T +
  b_v``;
* image-to-token, scores: ``(W_q x + b_q) . k = x . (W_q^T k) + b_q . k``, a bias per
  token and head;
* image-to-token, output projection: ``W_o [P_h V_h]_h = sum_h P_h (V_h W_{o,h}^T)``.

With ``heads x N < 128`` each rearranged product is cheaper (56 vs 128 columns for a
click). What does not depend on the prompt is computed once per image and kept: the image
tokens with the no-mask embedding and the position encoding, and the first layer's
image-side projections (its image tokens are still the same for every prompt).

The output upscaling's two 2x2 stride-2 transposed convolutions are per-pixel matrix
products followed by a pixel shuffle; they run here as plain matrix products in a blocked
pixel order, and only the final masks are shuffled back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import Attention, TwoWayAttentionBlock


@dataclass
class _ImageState:
    """What one image contributes to every prompt (no mask prompt)."""

    features: torch.Tensor  # the embedding it was made from (identity check)
    keys: torch.Tensor  # (1, M, C) image tokens plus the no-mask embedding
    keys_pe: torch.Tensor  # (1, M, C) the same plus the position encoding
    t2i_k: torch.Tensor  # (1, h, M, d) first layer, token-to-image keys
    t2i_v: torch.Tensor  # (1, h, M, d) first layer, token-to-image values
    i2t_q: torch.Tensor  # (h, M, d) first layer, image-to-token queries


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, heads * d)`` to ``(B, N, heads, d)``."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads)


def _token_to_image(
    attn: Attention, q_tokens: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor
) -> torch.Tensor:
    """Prompt tokens attend to image tokens ``xk`` / ``xv`` (``(B or 1, M, C)``)."""
    h = attn.num_heads
    b, n, _ = q_tokens.shape
    q = _split(attn.q_proj(q_tokens), h)  # (B, N, h, d)
    d = q.shape[-1]
    if h * n >= h * d:  # many tokens: the plain order is cheaper
        k = _split(attn.k_proj(xk), h).transpose(1, 2)
        v = _split(attn.v_proj(xv), h).transpose(1, 2)
        return attn.attend(q.transpose(1, 2), k, v)
    wk = attn.k_proj.weight.view(h, d, -1)  # (h, d, C)
    wv = attn.v_proj.weight.view(h, d, -1)
    a = torch.einsum("bnhd,hdc->bhnc", q, wk).reshape(b, h * n, -1)
    scores = torch.matmul(a * d**-0.5, xk.transpose(1, 2))  # (B, hN, M)
    mixed = torch.matmul(scores.softmax(dim=-1), xv).view(b, h, n, -1)  # (B, h, N, C)
    out = torch.einsum("bhnc,hdc->bnhd", mixed, wv).reshape(b, n, h * d) + attn.v_proj.bias
    return attn.out_proj(out)


def _token_to_image_cached(
    attn: Attention, q_tokens: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Token-to-image attention over keys/values ``(1, h, M, d)`` shared by every prompt."""
    h = attn.num_heads
    b, n, _ = q_tokens.shape
    q = _split(attn.q_proj(q_tokens), h)  # (B, N, h, d)
    # All prompts' tokens are rows of one attention over the shared image tokens.
    q = q.permute(2, 0, 1, 3).reshape(1, h, b * n, -1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (1, h, BN, d)
    out = out.view(h, b, n, -1).permute(1, 2, 0, 3).reshape(b, n, -1)
    return attn.out_proj(out)


def _image_to_token(
    attn: Attention,
    xq: torch.Tensor,
    k_tokens: torch.Tensor,
    v_tokens: torch.Tensor,
    cached_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image tokens ``xq`` (``(B or 1, M, C)``) attend to the prompt tokens.

    ``cached_q`` is ``(h, M, d)``, the projected queries when they are shared by every prompt.
    """
    h = attn.num_heads
    b, n, _ = k_tokens.shape
    k = _split(attn.k_proj(k_tokens), h)  # (B, N, h, d)
    v = _split(attn.v_proj(v_tokens), h)
    d = k.shape[-1]
    scale = d**-0.5
    # Scores are laid out (B, h, N, M): the softmax over the few tokens then runs along
    # a middle axis with the image tokens contiguous, which vectorises well.
    if cached_q is not None:
        m = cached_q.shape[1]
        kt = k.permute(2, 0, 1, 3).reshape(h, b * n, d)  # (h, BN, d)
        scores = torch.bmm(kt * scale, cached_q.transpose(1, 2))  # (h, BN, M)
        scores = scores.view(h, b, n, m).transpose(0, 1)
    else:
        m = xq.shape[1]
        wq = attn.q_proj.weight.view(h, d, -1)  # (h, d, C)
        g = torch.einsum("bnhd,hdc->bhnc", k * scale, wq).reshape(b, h * n, -1)  # (B, hN, C)
        bias = torch.einsum("bnhd,hd->bhn", k * scale, attn.q_proj.bias.view(h, d))
        scores = torch.baddbmm(bias.reshape(b, h * n, 1), g, xq.expand(b, -1, -1).transpose(1, 2))
        scores = scores.view(b, h, n, m)
    p = scores.softmax(dim=2).reshape(b, h * n, m)
    wo = attn.out_proj.weight.view(-1, h, d)  # (C, h, d)
    u = torch.einsum("bnhd,chd->bhnc", v, wo).reshape(b, h * n, -1)  # (B, hN, C)
    return torch.baddbmm(attn.out_proj.bias.expand(b, 1, -1), p.transpose(1, 2), u)


class FastDecoder:
    """Prompt embeddings to masks with the rearranged decoder (see the module docstring).

    Holds references to the network's modules (no copies of their weights beyond the two
    reshaped upscaling matrices) and the per-image state of the last image decoded.

    Parameters
    ----------
    prompt_encoder, mask_decoder
        The network's modules, in eval mode.
    """

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
        self.prompt_encoder = prompt_encoder
        self.decoder = mask_decoder
        self._image: _ImageState | None = None
        self._pe: torch.Tensor | None = None
        up1, norm, _, up2, _ = mask_decoder.output_upscaling
        # (C_in, C_out, 2, 2) -> (C_in, 2 * 2 * C_out): columns ordered (row, column, out).
        self._w1 = up1.weight.permute(0, 2, 3, 1).reshape(up1.in_channels, -1).detach()
        self._b1 = up1.bias.repeat(4).detach()
        self._w2 = up2.weight.permute(0, 2, 3, 1).reshape(up2.in_channels, -1).detach()
        self._b2 = up2.bias.repeat(4).detach()
        self._norm = norm

    def _position_encoding(self) -> torch.Tensor:
        if self._pe is None:
            pe = self.prompt_encoder.get_dense_pe()  # (1, C, H, W)
            self._pe = pe.flatten(2).transpose(1, 2).contiguous()
        return self._pe

    def _image_state(self, features: torch.Tensor) -> _ImageState:
        """The prompt-independent work for ``features`` ``(1, C, H, W)``, made once."""
        state = self._image
        if state is not None and state.features is features:
            return state
        first: TwoWayAttentionBlock = self.decoder.transformer.layers[0]
        no_mask = self.prompt_encoder.no_mask_embed.weight.view(1, 1, -1)
        keys = (features.flatten(2).transpose(1, 2) + no_mask).contiguous()
        keys_pe = keys + self._position_encoding()
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        heads = t2i.num_heads
        state = _ImageState(
            features=features,
            keys=keys,
            keys_pe=keys_pe,
            t2i_k=_split(t2i.k_proj(keys_pe), heads).transpose(1, 2).contiguous(),
            t2i_v=_split(t2i.v_proj(keys), heads).transpose(1, 2).contiguous(),
            i2t_q=_split(i2t.q_proj(keys_pe), i2t.num_heads)[0].transpose(0, 1).contiguous(),
        )
        self._image = state
        return state

    def _layer(
        self,
        layer: TwoWayAttentionBlock,
        queries: torch.Tensor,
        keys: torch.Tensor,
        keys_pe: torch.Tensor,
        query_pe: torch.Tensor,
        state: _ImageState | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q, q, queries)
        queries = layer.norm1(queries)
        q = queries + query_pe
        t2i = layer.cross_attn_token_to_image
        if state is not None:
            attended = _token_to_image_cached(t2i, q, state.t2i_k, state.t2i_v)
        else:
            attended = _token_to_image(t2i, q, keys_pe, keys)
        queries = layer.norm2(queries + attended)
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + query_pe
        cached_q = None if state is None else state.i2t_q
        update = _image_to_token(layer.cross_attn_image_to_token, keys_pe, q, queries, cached_q)
        keys = layer.norm4(keys + update)
        return queries, keys

    def _upscaled_masks(
        self, keys: torch.Tensor, hyper: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Image tokens ``(B, H*W, C)`` and hypernetwork weights ``(B, K, C/8)`` to
        ``(B, K, 4H, 4W)`` mask logits; ``size`` is ``(H, W)``."""
        b, m, _ = keys.shape
        h, w = size
        norm = self._norm
        x = torch.addmm(self._b1, keys.reshape(b * m, -1), self._w1)  # (BM, 4 * C/4)
        x = x.view(b * m * 4, -1)
        x = F.gelu(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
        x = F.gelu(torch.addmm(self._b2, x, self._w2))  # (BM4, 4 * C/8)
        masks = torch.bmm(x.view(b, m * 16, -1), hyper.transpose(1, 2))  # (B, 16M, K)
        k = hyper.shape[1]
        # rows are (i, j, a, b, a2, b2): pixel (4i + 2a + a2, 4j + 2b + b2)
        masks = masks.view(b, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, k, 4 * h, 4 * w)

    @torch.inference_mode()
    def __call__(
        self,
        features: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits ``(B, K, 256, 256)`` and predicted IoU ``(B, K)``.

        Parameters
        ----------
        features
            ``(1, C, H, W)`` image embedding shared by every prompt.
        sparse
            ``(B, N, C)`` point and box embeddings.
        dense
            ``(B, C, H, W)`` mask-prompt embeddings, or None for no mask prompt (then the
            image's prompt-independent work is reused across calls).
        multimask
            The three candidates (K=3) or the single mask (K=1).
        """
        dec = self.decoder
        b = sparse.shape[0]
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        pe = self._position_encoding()
        if dense is None:
            state = self._image_state(features)
            keys, keys_pe = state.keys, state.keys_pe
        else:
            state = None
            keys = (features + dense).flatten(2).transpose(1, 2)
            keys_pe = keys + pe
        transformer = dec.transformer
        queries = tokens
        for layer in transformer.layers:
            queries, keys = self._layer(layer, queries, keys, keys_pe, tokens, state)
            state = None  # only the first layer sees the shared image tokens
            keys_pe = keys + pe
        final = transformer.final_attn_token_to_image
        queries = queries + _token_to_image(final, queries + tokens, keys_pe, keys)
        queries = transformer.norm_final_attn(queries)

        chosen = range(1, dec.num_mask_tokens) if multimask else range(1)
        hyper = torch.stack(
            [dec.output_hypernetworks_mlps[i](queries[:, 1 + i]) for i in chosen], dim=1
        )
        masks = self._upscaled_masks(keys, hyper, features.shape[-2:])
        iou = dec.iou_prediction_head(queries[:, 0])
        return masks, iou[:, chosen.start : chosen.stop]
