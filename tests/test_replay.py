"""The annotation log replays to the same labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_segany as sg
from napari_segany.labels.store import LabelsStore
from napari_segany.replay import annotate, prompt_from_record, prompt_record, replay
from napari_segany.segmenter import Prompt, Segmenter

pytestmark = pytest.mark.slow


def test_prompts_round_trip_through_records() -> None:
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:12, 7:30] = True
    mask[20, 3] = True
    prompt = Prompt(points=np.array([[3.0, 4.0]]), labels=np.array([1]), mask=mask)
    back = prompt_from_record(prompt_record(prompt))
    np.testing.assert_array_equal(back.mask, mask)
    np.testing.assert_array_equal(back.points, prompt.points)
    assert back.box is None
    with pytest.raises(ValueError, match="only boolean mask prompts"):
        prompt_record(Prompt(points=np.array([[1.0, 1.0]]), mask=np.zeros((256, 256))))


def test_replay_reproduces_the_committed_labels(tmp_path: Path) -> None:
    zz, yy, xx = np.ogrid[:6, :96, :160]
    ball = ((zz - 3) / 2.2) ** 2 + ((yy - 48) / 22) ** 2 + ((xx - 50) / 22) ** 2 <= 1
    disk = (((yy - 40) / 15) ** 2 + ((xx - 120) / 18) ** 2 <= 1)[0]
    image = np.where(ball | np.broadcast_to(disk, ball.shape), 190.0, 35.0)
    image += np.random.default_rng(3).normal(0, 8, image.shape)
    model = sg.load_model("mobile_sam", device="cpu", progress=False)
    seg = Segmenter(model, sg.embed(sg.open_volume(image), model, progress=False))
    labels = LabelsStore.create(tmp_path / "labels.ome.zarr", image.shape)

    first = annotate(
        labels,
        seg,
        3,
        Prompt(points=np.array([[48.0, 50.0]]), labels=np.array([1])),
        propagate={"direction": "both"},
    )
    second = annotate(labels, seg, 2, Prompt(box=np.array([25.0, 100.0, 56.0, 140.0])))
    undone = annotate(labels, seg, 4, Prompt(box=np.array([25.0, 100.0, 56.0, 140.0])))
    assert labels.undo() == undone
    third = annotate(labels, seg, 1, Prompt(mask=disk), overlap="overwrite")

    stored = labels.read()
    assert {first, second, third} <= set(np.unique(stored)) and undone not in np.unique(stored)
    assert (stored == first).any(axis=(1, 2)).sum() >= 3  # carried through z
    np.testing.assert_array_equal(replay(labels.log(), seg), stored)
    # the chosen candidate is logged: the other choice rule replays the same labels
    other = Segmenter(model, seg.store, refine=not seg.refine)
    np.testing.assert_array_equal(replay(labels.log(), other), stored)
    assert labels.log()[0]["record"]["candidate"] is not None
    labels.close()
