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

The image-to-token output bias is folded into the prompt side (each head's attention
weights sum to one per image token), so the residual ``X + P^T U`` is one fused product.
The output upscaling (:mod:`.fast_upscale`) runs as matrix products in a blocked pixel
order, and without a mask prompt its first convolution is carried through the transformer
from a once-per-image product. The final token-to-image attention is computed only for
the tokens that are read out: the IoU token and the mask tokens of the chosen outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import MLP
from .fast_upscale import Upscaler
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import Attention

__all__ = [
    "KEPT_IMAGES",
    "FastDecoder",
]


@dataclass
class _ImageState:
    """What one image contributes to every prompt (no mask prompt)."""

    features: torch.Tensor  # the embedding it was made from (identity check)
    keys: torch.Tensor  # (1, M, C) image tokens plus the no-mask embedding
    keys_pe: torch.Tensor  # (1, M, C) the same plus the position encoding
    t2i_k: torch.Tensor  # (1, h, M, d) first layer, token-to-image keys
    t2i_v: torch.Tensor  # (1, h, M, d) first layer, token-to-image values
    i2t_q: torch.Tensor  # (h, M, d) first layer, image-to-token queries
    carried: torch.Tensor  # (1, M, 4 * C/4) the keys times the carried first convolution


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image tokens ``xq`` (``(B or 1, M, C)``) attend to the prompt tokens.

    Returns the attention weights ``P^T`` ``(B, M, h N)`` and the prompt side ``U``
    ``(B, h N, C)``: the attention's output is ``P^T @ U``, its output bias included
    (each head's N weights sum to one, so ``bias / h`` on every row of ``U`` adds it).
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
    return p.transpose(1, 2), u + attn.out_proj.bias / h


def _linears(mlp: torch.nn.Module) -> list[torch.nn.Linear]:
    """The linear layers of one of the decoder's hypernetwork MLPs."""
    assert isinstance(mlp, MLP)
    return mlp.linears()


KEPT_IMAGES = 9
"""Images whose prompt-independent work is kept: the windows of a 2048 x 2048 slice."""


def _chosen(decoder: MaskDecoder) -> dict[bool, list[int]]:
    """The mask tokens read out: the three candidates (multimask) or the single mask."""
    return {True: list(range(1, decoder.num_mask_tokens)), False: [0]}


class FastDecoder:
    """Prompt embeddings to masks with the rearranged decoder (see the module docstring).

    Holds references to the network's modules (no copies of their weights beyond the
    reshaped upscaling and hypernetwork matrices) and the per-image state of the last
    :data:`KEPT_IMAGES` images decoded (about 18 MiB each for a 64 x 64 embedding), so that
    clicks moving between the windows of a large slice do not redo it.

    Parameters
    ----------
    prompt_encoder, mask_decoder
        The network's modules, in eval mode.
    """

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
        self.prompt_encoder = prompt_encoder
        self.decoder = mask_decoder
        self.upscaler = Upscaler(mask_decoder)
        self._chosen = _chosen(mask_decoder)
        self._images: list[_ImageState] = []  # most recently used last
        self._pe: torch.Tensor | None = None
        # The hypernetwork MLPs of the three candidates (or of the single mask) stacked,
        # so that each of their layers is one batched product.
        mlps = [_linears(mlp) for mlp in mask_decoder.output_hypernetworks_mlps]
        self._hyper = {
            multi: [
                (
                    torch.stack([mlps[i][j].weight.detach().t() for i in chosen]),
                    torch.stack([mlps[i][j].bias.detach() for i in chosen]).unsqueeze(1),
                )
                for j in range(len(mlps[0]))
            ]
            for multi, chosen in self._chosen.items()
        }

    def _position_encoding(self) -> torch.Tensor:
        if self._pe is None:
            pe = self.prompt_encoder.get_dense_pe()  # (1, C, H, W)
            self._pe = pe.flatten(2).transpose(1, 2).contiguous()
        return self._pe

    @property
    def _image(self) -> _ImageState | None:
        """The state of the image decoded last."""
        return self._images[-1] if self._images else None

    def _image_state(self, features: torch.Tensor) -> _ImageState:
        """The prompt-independent work for ``features`` ``(1, C, H, W)``, made once."""
        for i, state in enumerate(self._images):
            if state.features is features:
                self._images.append(self._images.pop(i))
                return state
        first = self.decoder.transformer.block(0)
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
            carried=self.upscaler.image_part(keys),
        )
        self._images = [*self._images[1 - KEPT_IMAGES :], state]
        return state

    def _layer(
        self,
        index: int,
        queries: torch.Tensor,
        keys: torch.Tensor,
        keys_pe: torch.Tensor,
        query_pe: torch.Tensor,
        state: _ImageState | None,
        carried: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One two-way block; ``carried`` is the first upscaling convolution carried along."""
        layer = self.decoder.transformer.block(index)
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q, q, queries)
        queries = layer.norm1(queries)
        q = queries + query_pe
        t2i = layer.cross_attn_token_to_image
        shared = state if index == 0 else None  # the first layer's image side, if cached
        if shared is not None:
            attended = _token_to_image_cached(t2i, q, shared.t2i_k, shared.t2i_v)
        else:
            attended = _token_to_image(t2i, q, keys_pe, keys)
        queries = layer.norm2(queries + attended)
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + query_pe
        i2t = layer.cross_attn_image_to_token
        cached_q = shared.i2t_q if shared is not None else None
        weights, side = _image_to_token(i2t, keys_pe, q, queries, cached_q)
        norm = layer.norm4
        updated = torch.baddbmm(keys, weights, side)
        keys, mean, rstd = torch.native_layer_norm(
            updated, (updated.shape[-1],), norm.weight, norm.bias, norm.eps
        )
        if carried is not None:
            carried = self.upscaler.add_layer(carried, index, weights, side, i2t.num_heads)
            carried = self.upscaler.apply_norm(carried, index, mean, rstd)
        return queries, keys, carried

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
        state: _ImageState | None
        if dense is None:
            state = self._image_state(features)
            keys, keys_pe, carried = state.keys, state.keys_pe, state.carried
        else:
            state = carried = None
            keys = (features + dense).flatten(2).transpose(1, 2)
            keys_pe = keys + pe
        transformer = dec.transformer
        queries = tokens
        for index in range(len(transformer.layers)):
            queries, keys, carried = self._layer(
                index, queries, keys, keys_pe, tokens, state, carried
            )
            keys_pe = keys + pe
        # Only the IoU token and the chosen mask tokens are read out after the last attention.
        chosen = self._chosen[multimask]
        rows = [0, *(1 + i for i in chosen)]
        final = transformer.final_attn_token_to_image
        read = queries[:, rows] + _token_to_image(
            final, queries[:, rows] + tokens[:, rows], keys_pe, keys
        )
        read = transformer.norm_final_attn(read)
        hyper = read[:, 1:].transpose(0, 1)  # (K, B, C): one hypernetwork per candidate
        layers = self._hyper[multimask]
        for j, (weight, bias) in enumerate(layers):
            hyper = torch.baddbmm(bias, hyper, weight)
            if j < len(layers) - 1:
                hyper = torch.relu(hyper)
        hyper = hyper.transpose(0, 1)
        first = carried if carried is not None else self.upscaler.first(keys)
        h, w = features.shape[-2:]
        masks = self.upscaler.masks(first, hyper, (h, w))
        iou = dec.iou_prediction_head(read[:, 0])
        return masks, iou[:, chosen]
