"""Tuned decoders on disk: a whole SAM checkpoint, and a small decoder-only file.

A tuned model is saved as an ordinary SAM checkpoint: the base checkpoint's parameters,
the prompt encoder's and mask decoder's replaced, nothing added, so any SAM tool loads it
(``load_state_dict(strict=True)``). For the large encoders (hundreds of MB to 2.5 GB)
a decoder-only file is written beside it: the tuned parameters and the base model's name
and sha256, a few MB; :func:`napari_segany.load_model` rebuilds the model from it and the
base (fetched and verified like any registry model).

Files are written to a temporary name in the same folder and renamed over the target, so
an interrupted run leaves the previous file whole, never a half-written one.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

from ..checkpoint_files import (
    FORMAT,
    TUNED,
    VERSION,
    CheckpointError,
    is_decoder_file,
    read_decoder_file,
    state_dict_of,
    with_base,
)
from ..model import SamModel

LARGE = ("vit_b", "vit_l", "vit_h")
"""Architectures whose tuned decoders also get a decoder-only file by default."""


def tuned_state(model: SamModel) -> dict[str, torch.Tensor]:
    """The prompt encoder's and mask decoder's parameters, SAM names, on the CPU."""
    out = {}
    for prefix in TUNED:
        module = getattr(model.net, prefix[:-1])
        for key, value in module.state_dict().items():
            out[prefix + key] = value.detach().to("cpu", copy=True)
    return out


def _atomic_save(obj: Any, path: Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def decoder_path(path: str | os.PathLike[str]) -> Path:
    """Where the decoder-only file of the checkpoint ``path`` goes: ``<stem>.decoder.pt``."""
    path = Path(path).expanduser()
    return path.with_name(f"{path.stem}.decoder.pt")


def save_tuned(
    tuned: SamModel, base: SamModel, path: str | os.PathLike[str], *, decoder_only: bool | None
) -> tuple[Path, Path | None]:
    """Write ``tuned`` as a SAM checkpoint at ``path`` (and its decoder-only file).

    Parameters
    ----------
    tuned, base
        The tuned model and the model it was tuned from (whose checkpoint file gives
        every other parameter, untouched: BatchNorm folding and the like never reach it).
    path
        The checkpoint's file.
    decoder_only
        Also write the decoder-only file; None: for :data:`LARGE` architectures.

    Returns
    -------
    The checkpoint's path and the decoder-only file's (or None).
    """
    if base.checkpoint is None:
        raise CheckpointError(f"{base.name} has no checkpoint file to build the tuned one from")
    state = tuned_state(tuned)
    loaded = torch.load(base.checkpoint, map_location="cpu", weights_only=True)
    if is_decoder_file(loaded):  # tuned again: the whole state comes from its own base
        whole = with_base(loaded, Path(base.checkpoint), progress=False)
    else:
        whole = dict(state_dict_of(loaded, base.checkpoint))
    missing = sorted(set(state) - set(whole))
    if missing:
        raise CheckpointError(f"{base.checkpoint} lacks tuned parameters such as {missing[:3]}")
    whole.update(state)
    written = _atomic_save(whole, Path(path))
    small = None
    if decoder_only if decoder_only is not None else base.architecture in LARGE:
        small = _atomic_save(
            {
                "format": FORMAT,
                "version": VERSION,
                "base": {
                    "name": base.name,
                    "architecture": base.architecture,
                    "sha256": base.sha256,
                    "encoder_sha256": base.encoder_sha256,
                    "checkpoint": str(base.checkpoint),
                },
                "state": state,
            },
            decoder_path(path),
        )
    return written, small


__all__ = ["decoder_path", "is_decoder_file", "read_decoder_file", "save_tuned", "tuned_state"]
