"""Every architecture has exactly the official checkpoints' parameter names and shapes."""

from __future__ import annotations

import json

import pytest
import torch

from napari_segany.models import ARCHITECTURES, build_sam, infer_architecture

from ._reference import DATA

OFFICIAL_SHAPES = json.loads((DATA / "sam_checkpoint_shapes.json").read_text())


@pytest.mark.parametrize("architecture", sorted(OFFICIAL_SHAPES))
def test_state_dict_matches_official_checkpoint(architecture: str) -> None:
    with torch.device("meta"):  # no memory for vit_h's 2.5 GB of parameters
        net = build_sam(architecture)
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    official = OFFICIAL_SHAPES[architecture]
    assert sorted(set(official) - set(ours)) == []  # missing
    assert sorted(set(ours) - set(official)) == []  # unexpected
    assert {k: v for k, v in ours.items() if v != official[k]} == {}


@pytest.mark.parametrize("architecture", sorted(OFFICIAL_SHAPES))
def test_architecture_is_inferred_from_the_state_dict(architecture: str) -> None:
    fake = {
        k: torch.empty(shape, device="meta") for k, shape in OFFICIAL_SHAPES[architecture].items()
    }
    assert infer_architecture(fake) == architecture


def test_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="vit_b, vit_l, vit_h, mobile_sam"):
        build_sam("vit_q")
    assert set(ARCHITECTURES) == set(OFFICIAL_SHAPES)


def test_unrecognisable_state_dict_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot tell the architecture"):
        infer_architecture({"image_encoder.patch_embed.proj.weight": torch.empty(7, 3, 16, 16)})
