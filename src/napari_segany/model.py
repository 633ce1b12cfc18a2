"""A loaded SAM model: the network on a device, its checkpoint identity, and inference.

:func:`load_model` is the entry point; :class:`SamModel` embeds images and decodes prompts
in the user's frame (image pixels, ``(y, x)`` order).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint_files import (
    CheckpointError,
    is_decoder_file,
    state_dict_of,
    weights_sha256,
    with_base,
)
from .device import choose_device, keep_large_allocations
from .models import Sam, build_sam, infer_architecture
from .models.fast import fold_batchnorm, set_fused_attention
from .models.fast_decoder import FastDecoder
from .preprocess import model_input
from .prompts import as_tensor, boxes_to_model, points_to_model


@dataclass(frozen=True)
class ImageEmbedding:
    """One image's embedding and the geometry needed to map prompts and masks.

    Attributes
    ----------
    features
        ``(1, 256, 64, 64)`` float32 tensor on the model's device.
    original_size
        ``(height, width)`` of the image as the user sees it.
    resized_size
        ``(height, width)`` of the image inside the padded model input.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    resized_size: tuple[int, int]


@dataclass(frozen=True)
class Decoded:
    """Decoder output for ``B`` prompts (objects), ``K`` candidate masks each.

    Attributes
    ----------
    low_res_logits
        ``(B, K, 256, 256)`` mask logits in the model frame (feed back as ``mask_logits``).
    iou
        ``(B, K)`` predicted IoU of each candidate.
    """

    low_res_logits: torch.Tensor
    iou: torch.Tensor


def same_encoder(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether two signatures' ``model`` entries have the same image encoder.

    The encoder's own sha256 decides where both have one, so a model whose decoder was
    tuned keeps the stores of its base; stores written before encoders had their own
    sha256 compare the checkpoints' sha256.
    """
    if stored.get("architecture") != wanted.get("architecture"):
        return False
    if stored.get("encoder_sha256") and wanted.get("encoder_sha256"):
        return bool(stored["encoder_sha256"] == wanted["encoder_sha256"])
    return bool(stored.get("sha256") == wanted.get("sha256"))


def _load_state(net: Sam, state: Mapping[str, torch.Tensor], architecture: str, path: Path) -> None:
    missing = sorted(set(net.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(net.state_dict()))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the {architecture} architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{path} does not fit {architecture}: {err}") from None


class SamModel:
    """A SAM network loaded on a device, ready for inference.

    Use :func:`load_model` to make one. Images go in as ``(H, W)`` grey or ``(H, W, 3)`` RGB
    arrays already scaled to 0-255 (see :mod:`napari_segany.volume.intensity`); prompts are in
    image pixels, NumPy order.

    Attributes
    ----------
    name
        The registry name, or the checkpoint's file name for a checkpoint given by path.
    architecture
        ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or ``"mobile_sam"``.
    checkpoint
        Path of the weights file (None for an untrained network).
    device
        Where the network runs.
    net
        The :class:`~napari_segany.models.Sam` network (eval mode).
    autocast_dtype
        Reduced precision used for the encoder (bf16 on CUDA by default), or None.
    encoder_sha256
        A sha256 of the image encoder's weights alone: what an embedding store's
        embeddings depend on, so stores stay valid for a model whose decoder was tuned
        (:func:`napari_segany.finetune`) and are refused for another encoder.
    fast
        Whether the fast paths are on; for the decoder this means
        :class:`~napari_segany.models.fast_decoder.FastDecoder`, which keeps the last
        image's prompt-independent work between calls.
    """

    def __init__(
        self,
        net: Sam,
        *,
        name: str,
        architecture: str,
        device: torch.device,
        checkpoint: Path | None = None,
        sha256: str | None = None,
        autocast_dtype: torch.dtype | None = None,
        fast: bool = False,
        encoder_sha256: str | None = None,
    ) -> None:
        self.net = net
        self.name = name
        self.architecture = architecture
        self.device = device
        self.checkpoint = checkpoint
        self._sha256 = sha256
        self.autocast_dtype = autocast_dtype
        self.fast = fast
        self.encoder_sha256 = encoder_sha256
        self._fast_decoder: FastDecoder | None = None

    def __repr__(self) -> str:
        return f"SamModel({self.name!r}, architecture={self.architecture!r}, device={self.device})"

    @property
    def sha256(self) -> str | None:
        """The checkpoint's sha256 (computed once for checkpoints given by path)."""
        if self._sha256 is None and self.checkpoint is not None:
            digest = hashlib.sha256()
            with open(self.checkpoint, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._sha256 = digest.hexdigest()
        return self._sha256

    @property
    def identity(self) -> dict[str, Any]:
        """What decides whether embeddings fit this model: architecture, checkpoint sha256
        and encoder sha256 (compare two with :func:`same_encoder`)."""
        return {
            "architecture": self.architecture,
            "sha256": self.sha256,
            "encoder_sha256": self.encoder_sha256,
        }

    @property
    def image_size(self) -> int:
        """Side of the square model input (1024)."""
        return self.net.image_size

    def _autocast(self) -> AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize, normalise and pad one image: ``(3, 1024, 1024)`` float32 and its resized size.

        Parameters
        ----------
        image
            ``(H, W)`` or ``(H, W, 3)`` values in 0-255 (uint8 or float; rounded to 8 bits).
        """
        rgb = model_input(image, self.image_size)
        x = as_tensor(rgb, self.device, torch.float32).permute(2, 0, 1)[None]
        return self.net.normalize_and_pad(x)[0], (rgb.shape[0], rgb.shape[1])

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, 256, 64, 64)`` float32 of prepared ``(B, 3, 1024, 1024)`` inputs."""
        batch = batch.to(self.device, memory_format=torch.channels_last)
        with self._autocast():
            features = self.net.encode(batch)
        return features.float()

    def embed_image(self, image: np.ndarray) -> ImageEmbedding:
        """Embed one ``(H, W)`` or ``(H, W, 3)`` image (values in 0-255)."""
        prepared, resized = self.prepare(image)
        features = self.encode(prepared[None])
        return ImageEmbedding(features, (int(image.shape[0]), int(image.shape[1])), resized)

    @torch.inference_mode()
    def decode(
        self,
        embedding: ImageEmbedding,
        *,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_logits: torch.Tensor | np.ndarray | None = None,
        multimask: bool = True,
    ) -> Decoded:
        """Decode prompts for one or several objects on one image.

        Parameters
        ----------
        embedding
            From :meth:`embed_image` (or an embedding store).
        points
            ``(N, 2)`` for one object or ``(B, N, 2)`` for B objects: ``(y, x)`` image pixels.
        labels
            ``(N,)`` or ``(B, N)``: 1 positive, 0 negative.
        boxes
            ``(4,)`` or ``(B, 4)``: ``(y0, x0, y1, x1)`` image pixels.
        mask_logits
            ``(256, 256)`` or ``(B, 256, 256)`` low-resolution logits from an earlier call.
        multimask
            Three candidates per object (True) or the single best guess (False).
        """
        original, resized = embedding.original_size, embedding.resized_size
        dev = self.device
        model_points = model_boxes = model_masks = None
        if points is not None:
            if labels is None:
                raise ValueError("points need labels (1 positive, 0 negative), one per point")
            xy = points_to_model(np.asarray(points, dtype=np.float64), original, resized)
            lab = np.asarray(labels)
            if xy.ndim == 2:
                xy, lab = xy[None], lab[None]
            if lab.shape != xy.shape[:2]:
                raise ValueError(f"{xy.shape[1]} points but labels of shape {lab.shape}")
            model_points = (as_tensor(xy, dev, torch.float32), as_tensor(lab, dev, torch.int64))
        if boxes is not None:
            xyxy = boxes_to_model(np.asarray(boxes, dtype=np.float64), original, resized)
            model_boxes = as_tensor(xyxy.reshape(-1, 4), dev, torch.float32)
        if mask_logits is not None:
            m = torch.as_tensor(mask_logits, dtype=torch.float32, device=dev)
            model_masks = m.reshape(-1, 1, *m.shape[-2:])
        if not self.fast:
            low_res, iou = self.net.decode(
                embedding.features,
                points=model_points,
                boxes=model_boxes,
                mask_logits=model_masks,
                multimask_output=multimask,
            )
            return Decoded(low_res, iou)
        if self._fast_decoder is None:
            self._fast_decoder = FastDecoder(self.net.prompt_encoder, self.net.mask_decoder)
        sparse, dense = self.net.prompt_encoder(model_points, model_boxes, model_masks)
        low_res, iou = self._fast_decoder(
            embedding.features, sparse, None if model_masks is None else dense, multimask
        )
        return Decoded(low_res, iou)

    @torch.inference_mode()
    def upscale(self, low_res_logits: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
        """Low-resolution logits ``(..., 256, 256)`` to the image's size ``(..., H, W)``."""
        lead = low_res_logits.shape[:-2]
        x = low_res_logits.reshape(-1, 1, *low_res_logits.shape[-2:])
        out = self.net.upscale_masks(x, embedding.resized_size, embedding.original_size)
        return out.reshape(*lead, *out.shape[-2:])


_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _autocast_dtype(precision: str, device: torch.device, fast: bool) -> torch.dtype | None:
    if precision == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if fast and bf16 else None
    try:
        return _PRECISIONS[precision]
    except KeyError:
        known = ", ".join(["auto", *_PRECISIONS])
        raise ValueError(f"unknown precision {precision!r}; use one of {known}") from None


def as_model(
    model: str | os.PathLike[str] | SamModel,
    *,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> SamModel:
    """``model`` if it is loaded already, else :func:`load_model` of the name or path.

    Every function that takes "a model name, a checkpoint path or a SamModel" resolves it
    here, so that they all accept the same things.
    """
    if isinstance(model, SamModel):
        return model
    return load_model(model, device=device, progress=progress)


def load_model(
    name_or_path: str | os.PathLike[str] = "mobile_sam",
    device: str | torch.device = "auto",
    *,
    architecture: str | None = None,
    fast: bool = True,
    precision: str = "auto",
    progress: bool = True,
) -> SamModel:
    """Load a SAM model by registry name or checkpoint path.

    Parameters
    ----------
    name_or_path
        A name from :func:`list_models` (fetched and verified on first use) or the path of
        any SAM-format checkpoint, e.g. a fine-tuned one.
    device
        ``"auto"`` (CUDA, then MPS, then CPU) or a torch device name.
    architecture
        For a checkpoint by path: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or ``"mobile_sam"``;
        inferred from the checkpoint when None.
    fast
        Inference fast paths: fused attention kernels, BatchNorm folded into convolutions,
        channels-last memory, bf16 autocast of the encoder on CUDA, the rearranged decoder
        (:mod:`napari_segany.models.fast_decoder`), and on the CPU large
        freed blocks kept for reuse (:func:`napari_segany.device.keep_large_allocations`).
        False gives the plain float32 path of the reference implementation.
    precision
        The image encoder's arithmetic: ``"auto"`` (bfloat16 autocast on CUDA GPUs that
        support it when ``fast``, else float32), ``"float32"``, ``"bfloat16"`` or
        ``"float16"`` (autocast on any device that supports it). Embeddings are always
        returned as float32; prompts are always decoded in float32.
    progress
        Show a progress bar while downloading weights.

    Returns
    -------
    SamModel

    Raises
    ------
    napari_segany.weights.UnknownModelError
        ``name_or_path`` is neither a known model nor an existing file.
    napari_segany.weights.WeightsError
        The weights could not be fetched or failed their checksum.
    CheckpointError
        The checkpoint's parameters do not fit the architecture.
    """
    from .weights import resolve_checkpoint

    target = choose_device(device)  # bad device or precision: say so before any download
    autocast_dtype = _autocast_dtype(precision, target, fast)
    path, entry = resolve_checkpoint(name_or_path, progress=progress)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with code in it, a truncated or foreign file
        raise CheckpointError(
            f"{path} could not be read as a torch checkpoint with weights_only=True "
            f"(only plain tensors are loaded, never code): {type(err).__name__}: {err}"
        ) from None
    state: Mapping[str, torch.Tensor]
    if is_decoder_file(checkpoint):
        state = with_base(checkpoint, Path(path), progress)
    else:
        state = state_dict_of(checkpoint, path)
    if entry is not None:
        arch = entry.architecture
    else:
        try:
            arch = architecture or infer_architecture(state)
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from None
    net = build_sam(arch)
    _load_state(net, state, arch, path)
    encoder_sha256 = weights_sha256(state)
    del checkpoint, state

    set_fused_attention(net, fast)
    if fast and target.type == "cpu":
        keep_large_allocations()
    if fast:
        fold_batchnorm(net)
        # Module.to takes memory_format at run time; torch's overloads leave it out.
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net = net.to(target).eval()
    return SamModel(
        net,
        name=entry.name if entry is not None else Path(path).name,
        architecture=arch,
        device=target,
        checkpoint=Path(path),
        sha256=entry.sha256 if entry is not None else None,
        autocast_dtype=autocast_dtype,
        fast=fast,
        encoder_sha256=encoder_sha256,
    )


__all__ = [
    "CheckpointError",
    "Decoded",
    "ImageEmbedding",
    "SamModel",
    "as_model",
    "load_model",
    "same_encoder",
    "weights_sha256",
]
