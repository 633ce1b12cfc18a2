"""One fine-tuning step at a time: the tuned modules, their optimiser, the prompts.

Each step takes :data:`BATCH` objects; each gets one kind of prompt (:data:`KINDS`): a
click at its deepest point or elsewhere deep inside it (all three candidates learn the
object), its tight box (jittered half the time), or a click followed by 1 to
:data:`CORRECTIONS` corrective clicks at the current model's own errors with its logits
fed back (the single mask learns). The loss is binary cross-entropy plus Dice on the
window of logits around each object (:mod:`~napari_segany.models.decoder_training`), and the
IoU head's
squared error against each mask's real IoU.
"""

from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluate.prompts import corrective_click
from ..models import Sam
from ..models.decoder_training import crop_windows, decode_windows, window_starts
from .data import Example

if TYPE_CHECKING:
    from ..embeddings import EmbeddingStore
    from ..model import SamModel

LEARNING_RATE = 1e-4
BATCH = 8
"""Objects per optimiser step."""
CORRECTIONS = 4
"""Most corrective clicks simulated before a training prompt."""
KINDS = ("click", "box", "corrected")
KIND_SHARES = (0.35, 0.25, 0.4)


class Trainer:
    """The tuned modules, their optimiser, and one training step at a time."""

    def __init__(
        self,
        base: SamModel,
        stores: list[EmbeddingStore],
        examples: list[Example],
        rng: np.random.Generator,
    ) -> None:
        self.base, self.stores, self.examples, self.rng = base, stores, examples, rng
        self.device = base.device
        self.prompt_encoder = copy.deepcopy(base.net.prompt_encoder).train()
        self.mask_decoder = copy.deepcopy(base.net.mask_decoder).train()
        for module in (self.prompt_encoder, self.mask_decoder):
            for p in module.parameters():
                p.requires_grad_(True)
        params = [*self.prompt_encoder.parameters(), *self.mask_decoder.parameters()]
        self.optimiser = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.01)
        self._features: dict[tuple[int, int, int], torch.Tensor] = {}
        self._order: list[int] = []
        autocast = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self._autocast = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else None

    # -- the model and its state ------------------------------------------------------

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "prompt_encoder": copy.deepcopy(self.prompt_encoder.state_dict()),
            "mask_decoder": copy.deepcopy(self.mask_decoder.state_dict()),
        }

    def model(self, state: dict[str, dict[str, torch.Tensor]] | None = None) -> SamModel:
        """A :class:`SamModel` with the current (or the given) tuned modules, eval mode."""
        from ..model import SamModel

        prompt_encoder = copy.deepcopy(self.prompt_encoder).eval()
        mask_decoder = copy.deepcopy(self.mask_decoder).eval()
        if state is not None:
            prompt_encoder.load_state_dict(state["prompt_encoder"])
            mask_decoder.load_state_dict(state["mask_decoder"])
        for module in (prompt_encoder, mask_decoder):
            module.requires_grad_(False)
        base = self.base
        net = Sam(
            image_encoder=base.net.image_encoder,
            prompt_encoder=prompt_encoder,
            mask_decoder=mask_decoder,
            image_size=base.net.image_size,
        ).to(base.device)
        return SamModel(
            net,
            name=f"{base.name}-tuned",
            architecture=base.architecture,
            device=base.device,
            checkpoint=None,
            sha256=None,
            autocast_dtype=base.autocast_dtype,
            fast=base.fast,
            encoder_sha256=base.encoder_sha256,
        )

    def save(
        self, out: str | os.PathLike[str], decoder_only: bool | None
    ) -> tuple[Path, Path | None]:
        from .checkpoint import save_tuned

        return save_tuned(self.model(), self.base, out, decoder_only=decoder_only)

    # -- training ----------------------------------------------------------------------

    def _batch(self) -> list[Example]:
        if len(self._order) < BATCH:
            self._order.extend(self.rng.permutation(len(self.examples)).tolist())
        chosen, self._order = self._order[:BATCH], self._order[BATCH:]
        return [self.examples[i] for i in chosen]

    def _embedding(self, ex: Example) -> torch.Tensor:
        key = (ex.pair, ex.z, ex.tile)
        features = self._features.get(key)
        if features is None:
            features = self.stores[ex.pair].get(ex.z, ex.tile).features.to(self.device)
            self._features[key] = features
        return features

    def step(self) -> float:
        batch = self._batch()
        kinds = self.rng.choice(len(KINDS), size=len(batch), p=KIND_SHARES)
        total = 0.0
        self.optimiser.zero_grad(set_to_none=True)
        for kind in range(len(KINDS)):
            group = [ex for ex, k in zip(batch, kinds, strict=True) if k == kind]
            if group:
                total += self._learn(KINDS[kind], group, len(batch))
        self.optimiser.step()
        return total

    def _learn(self, kind: str, group: list[Example], batch: int) -> float:
        dev = self.device
        features = torch.cat([self._embedding(ex) for ex in group])
        target = torch.stack([ex.target for ex in group]).to(dev)
        boxes = torch.as_tensor(np.stack([ex.box for ex in group]), dtype=torch.float32, device=dev)
        size = _window_size(boxes)
        windows = window_starts(boxes, size)
        if kind == "box":
            prompt: dict[str, Any] = {
                "points": None,
                "boxes": _jitter(boxes, self.rng),
                "mask_logits": None,
            }
        else:
            first = [
                ex.clicks[0 if self.rng.random() < 0.5 else self.rng.integers(len(ex.clicks))]
                for ex in group
            ]
            xy = torch.as_tensor(np.stack(first)[:, None], dtype=torch.float32, device=dev)
            labels = torch.ones(len(group), 1, dtype=torch.int64, device=dev)
            prompt = {"points": (xy, labels), "boxes": None, "mask_logits": None}
            if kind == "corrected":
                prompt = self._corrected(prompt, features, target, group, windows, size)
        tokens = slice(1, 4) if kind == "click" else slice(0, 1)
        with self._autocast or nullcontext():
            logits, iou = decode_windows(
                self.prompt_encoder,
                self.mask_decoder,
                features,
                windows=windows,
                size=size,
                **prompt,
            )
        logits, iou = logits[:, tokens].float(), iou[:, tokens].float()
        want = crop_windows(target, windows, size)[:, None].expand_as(logits)
        loss = _mask_loss(logits, want) + _iou_loss(logits, want, iou)
        (loss * len(group) / batch).backward()
        return float(loss.detach())

    @torch.no_grad()
    def _corrected(
        self,
        prompt: dict[str, Any],
        features: torch.Tensor,
        target: torch.Tensor,
        group: list[Example],
        windows: torch.Tensor,
        size: int,
    ) -> dict[str, Any]:
        """The prompt after 1 to :data:`CORRECTIONS` corrective clicks at the current
        model's own errors, with its last logits.

        Decoded on the training windows: clicks go to errors inside them, and the logits
        fed back are the window's, with "no object" around it.
        """
        xy, labels = prompt["points"]
        b, side = len(group), 4 * size
        truth = (crop_windows(target, windows, size) > 0.5).cpu().numpy()
        logits = None
        rows = torch.arange(b, device=features.device)
        for _ in range(int(self.rng.integers(1, CORRECTIONS + 1))):
            with self._autocast or nullcontext():
                out, _iou = decode_windows(
                    self.prompt_encoder,
                    self.mask_decoder,
                    features,
                    points=(xy, labels),
                    boxes=None,
                    mask_logits=logits,
                    windows=windows,
                    size=size,
                )
            out = out.float()
            if logits is None:  # a lone click: the smallest candidate that is not a speck
                cells = (out[:, 1:] > 0).sum((-2, -1)).float()
                pick = torch.where(cells >= 2, cells, torch.inf).argmin(1) + 1
            else:
                pick = torch.zeros(b, dtype=torch.long, device=out.device)
            chosen = out[rows, pick]  # (B, side, side)
            pred = (chosen > 0).cpu().numpy()
            logits = torch.full((b, 1, 256, 256), -20.0, device=out.device)
            for i in range(b):
                y0, x0 = (4 * windows[i]).tolist()
                logits[i, 0, y0 : y0 + side, x0 : x0 + side] = chosen[i]
            new_xy, new_labels = [], []
            for i, ex in enumerate(group):
                y0, x0 = (4 * windows[i]).tolist()
                pred[i, max(0, ex.valid[0] - y0) :] = False  # the padding is never shown
                pred[i, :, max(0, ex.valid[1] - x0) :] = False
                click = corrective_click(truth[i], pred[i])
                if click is None:  # perfect already: a second click at the deepest point
                    new_xy.append(xy[i, 0].tolist())
                    new_labels.append(1)
                    continue
                (y, x), label = click
                new_xy.append([4 * (x0 + x) + 1.5, 4 * (y0 + y) + 1.5])
                new_labels.append(label)
            xy = torch.cat([xy, torch.tensor(new_xy, dtype=xy.dtype, device=xy.device)[:, None]], 1)
            labels = torch.cat([labels, torch.tensor(new_labels, device=labels.device)[:, None]], 1)
        return {"points": (xy, labels), "boxes": None, "mask_logits": logits}


def _window_size(boxes: torch.Tensor) -> int:
    """Tokens a side of the windows of a group: twice the largest object, 16 to 64."""
    extent = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).max().item()
    tokens = int(np.ceil(2 * extent / 16 / 8)) * 8
    return int(min(64, max(16, tokens)))


def _jitter(boxes: torch.Tensor, rng: np.random.Generator, share: float = 0.05) -> torch.Tensor:
    """Boxes with each side moved by up to ``share`` of the box's size, half the time."""
    if rng.random() < 0.5:
        return boxes
    size = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=1)
    moves = torch.as_tensor(rng.uniform(-share, share, boxes.shape), dtype=boxes.dtype)
    return boxes + moves.to(boxes.device) * size


def _mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus Dice, per mask, averaged."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((-2, -1))
    prob = logits.sigmoid()
    inter = (prob * target).sum((-2, -1))
    dice = 1 - (2 * inter + 1) / (prob.sum((-2, -1)) + target.sum((-2, -1)) + 1)
    return (bce + dice).mean()


def _iou_loss(logits: torch.Tensor, target: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """The IoU head's squared error against each mask's real IoU (on the window)."""
    with torch.no_grad():
        mine, truth = logits > 0, target > 0.5
        inter = (mine & truth).sum((-2, -1)).float()
        union = (mine | truth).sum((-2, -1)).float()
        real = inter / union.clamp(min=1)
    return F.mse_loss(predicted, real)


__all__ = ["BATCH", "KINDS", "LEARNING_RATE", "Trainer"]
