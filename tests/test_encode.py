"""Batch sizes for the encoder: from free GPU memory, 1 on the CPU."""

from __future__ import annotations

import torch

from napari_segany.encode import MAX_BATCH, choose_batch_size
from napari_segany.model import SamModel
from napari_segany.models import build_sam


def _model(architecture: str, device: str = "cpu") -> SamModel:
    with torch.device("meta"):
        net = build_sam(architecture)
    return SamModel(net, name=architecture, architecture=architecture, device=torch.device(device))


def test_cpu_encodes_one_slice_at_a_time() -> None:
    assert choose_batch_size(_model("mobile_sam")) == 1


def test_gpu_batch_follows_free_memory_and_model_size() -> None:
    gib = 2**30
    small, large = _model("mobile_sam", "cuda"), _model("vit_h", "cuda")

    def batch(model: SamModel, free_gib: float) -> int:
        return choose_batch_size(model, free_bytes=int(free_gib * gib))

    assert batch(small, 16) > batch(large, 16)
    assert batch(large, 8) < batch(large, 60)
    assert batch(large, 0.1) == 1  # never zero
    assert batch(small, 1000) == MAX_BATCH
