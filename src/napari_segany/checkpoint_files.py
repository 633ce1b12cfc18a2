"""What a checkpoint file holds: a SAM state dict (bare, or wrapped as trainers save it),
or one of our decoder-only files laid over its base model's checkpoint.

Below :mod:`.model` (which loads the files) and :mod:`.finetuning.checkpoint` (which
writes them), so neither imports the other."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ENCODER",
    "FORMAT",
    "TUNED",
    "VERSION",
    "CheckpointError",
    "is_decoder_file",
    "read_decoder_file",
    "state_dict_of",
    "weights_sha256",
    "with_base",
]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used for the asked-for architecture."""


def state_dict_of(checkpoint: object, path: Path) -> Mapping[str, torch.Tensor]:
    """The SAM state dict inside a loaded checkpoint (bare, or wrapped as some trainers save)."""
    if isinstance(checkpoint, Mapping):
        if any(k.startswith("image_encoder.") for k in checkpoint):
            return checkpoint
        for key in ("model_state", "state_dict", "model"):
            inner = checkpoint.get(key)
            if isinstance(inner, Mapping) and any(k.startswith("image_encoder.") for k in inner):
                return inner
    raise CheckpointError(
        f"{path} is not a SAM checkpoint: no 'image_encoder.*' parameters found in it"
    )


ENCODER = "image_encoder."


def weights_sha256(state: Mapping[str, torch.Tensor], prefix: str = ENCODER) -> str:
    """A sha256 of the parameters whose names start with ``prefix``: names, dtypes, shapes
    and values, in name order; the same however the checkpoint file was written."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state if k.startswith(prefix)):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def with_base(
    checkpoint: Mapping[str, object], path: Path, progress: bool
) -> dict[str, torch.Tensor]:
    """A decoder-only file's parameters over those of its base model's checkpoint."""
    from .weights import UnknownModelError, resolve_checkpoint

    base, tuned = read_decoder_file(checkpoint, path)
    try:  # a registry model, fetched and verified; else the file it was tuned from
        base_path, _ = resolve_checkpoint(str(base["name"]), progress=progress)
    except UnknownModelError:
        base_path, _ = resolve_checkpoint(str(base.get("checkpoint")), progress=progress)
    loaded = torch.load(base_path, map_location="cpu", weights_only=True)
    state = dict(state_dict_of(loaded, base_path))
    if base.get("encoder_sha256") and weights_sha256(state) != base["encoder_sha256"]:
        raise CheckpointError(
            f"{path} was tuned from {base['name']!r} with another image encoder than the "
            f"{base_path} found now: fetch the checkpoint it was tuned from"
        )
    state.update(tuned)
    return state


FORMAT = "napari-segany.decoder"


VERSION = 1


TUNED = ("prompt_encoder.", "mask_decoder.")
"""The parameters fine-tuning changes."""


def is_decoder_file(checkpoint: object) -> bool:
    """Whether a loaded file is a decoder-only file of this package."""
    return isinstance(checkpoint, Mapping) and checkpoint.get("format") == FORMAT


def read_decoder_file(checkpoint: Mapping[str, Any], path: Path) -> tuple[dict[str, Any], dict]:
    """The base model's description and the tuned parameters of a decoder-only file."""
    version = checkpoint.get("version")
    if version != VERSION:
        raise CheckpointError(
            f"{path} is a decoder file of version {version!r}; this reads {VERSION}"
        )
    base, state = checkpoint.get("base"), checkpoint.get("state")
    if not isinstance(base, Mapping) or not isinstance(state, Mapping) or not base.get("name"):
        raise CheckpointError(f"{path} is a damaged decoder file: its base or state is missing")
    wrong = sorted(k for k in state if not k.startswith(TUNED))
    if wrong:
        raise CheckpointError(f"{path} holds parameters a decoder file may not: {wrong[:3]}")
    return dict(base), dict(state)
