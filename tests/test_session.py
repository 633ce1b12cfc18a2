"""The widget's engine without Qt: prompt grouping, the embedding queue, workspaces, sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_segany as sg
from napari_segany.embeddings import NotEmbeddedError
from napari_segany.replay import replay
from napari_segany.sample_data import nuclei_volume
from napari_segany.session import Preview, Session, group_prompts, volume_from_layer
from napari_segany.workspace import SESSIONS_ENV, embeddings_name, workspace_for


def test_points_without_boxes_are_one_object() -> None:
    (prompt,) = group_prompts(np.array([[5, 5], [9, 9]]), np.array([True, False]), [])
    np.testing.assert_array_equal(prompt.points, [[5, 5], [9, 9]])
    np.testing.assert_array_equal(prompt.labels, [1, 0])
    assert prompt.box is None


def test_only_negative_points_make_no_object() -> None:
    assert group_prompts(np.array([[5, 5]]), np.array([False]), []) == []


def test_points_go_to_the_smallest_box_holding_them() -> None:
    boxes = np.array([[0, 0, 100, 100], [10, 10, 30, 30]], dtype=float)
    points = np.array([[20, 20], [60, 60], [200, 200]], dtype=float)
    big, small, loose = group_prompts(points, np.array([True, False, True]), boxes)
    np.testing.assert_array_equal(small.points, [[20, 20]])
    np.testing.assert_array_equal(big.points, [[60, 60]])
    np.testing.assert_array_equal(big.labels, [0])
    np.testing.assert_array_equal(loose.points, [[200, 200]])
    np.testing.assert_array_equal(small.box, boxes[1])


def test_workspace_beside_the_file_or_in_the_sessions_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "stack.tif"
    source.write_bytes(b"")
    assert workspace_for(source, "ab" * 32) == tmp_path / "stack.tif.segany"
    monkeypatch.setenv(SESSIONS_ENV, str(tmp_path / "sessions"))
    assert workspace_for(None, "ab" * 32) == tmp_path / "sessions" / ("ab" * 12)
    assert embeddings_name("my model/v2") == "embeddings-my_model_v2.zarr"
    # One rule with batch outputs (naming.model_tag): a checkpoint's suffix is dropped.
    assert embeddings_name("tuned.pth") == "embeddings-tuned.zarr"


def test_layer_data_with_too_many_dimensions_is_refused() -> None:
    with pytest.raises(ValueError, match="2D images and 3D"):
        volume_from_layer(np.zeros((2, 3, 8, 8)))
    assert volume_from_layer(np.zeros((8, 9, 3), np.uint8), rgb=True).shape == (1, 8, 9)
    pyramid = [np.zeros((4, 64, 64)), np.zeros((4, 32, 32))]
    assert volume_from_layer(pyramid, multiscale=True).shape == (4, 64, 64)


@pytest.fixture(scope="module")
def model() -> sg.SamModel:
    return sg.load_model("mobile_sam", device="cpu", progress=False)


@pytest.mark.slow
def test_a_store_named_by_the_earlier_rule_is_found_by_its_encoder(
    model: sg.SamModel, tmp_path: Path
) -> None:
    volume = sg.open_volume(nuclei_volume()[0][6:8, :96, :96])
    session = Session.open(volume, model, workspace=tmp_path / "ws")
    session.embed_slice(1)
    features = session.store.get(1).features.numpy()
    session.close()
    # The rule before naming.model_tag kept a checkpoint's suffix, e.g. mobile_sam.pth.
    old = session.store.path.with_name("embeddings-mobile_sam.pth.zarr")
    session.store.path.rename(old)
    again = Session.open(volume, model, workspace=tmp_path / "ws")
    assert again.store.path == old and again.is_embedded(1) and not again.is_embedded(0)
    np.testing.assert_array_equal(again.store.get(1, compute=False).features.numpy(), features)
    again.close()


@pytest.mark.slow
def test_a_session_previews_commits_all_or_nothing_and_replays(
    model: sg.SamModel, tmp_path: Path
) -> None:
    image, truth = nuclei_volume()
    volume = sg.open_volume(image[6:9])
    session = Session.open(volume, model, workspace=tmp_path / "ws")
    z = 1
    ids, counts = np.unique(truth[7][truth[7] > 0], return_counts=True)
    first, second = ids[np.argsort(counts)[-2:]]
    centres = [np.argwhere(truth[7] == i).mean(axis=0) for i in (first, second)]
    with pytest.raises(NotEmbeddedError):
        session.preview(z, np.array(centres[:1]), np.array([True]), np.empty((0, 4)))
    session.embed_slice(z)
    one = session.preview(z, np.array(centres[:1]), np.array([True]), np.empty((0, 4)))
    (kept,) = session.commit(one)

    # Two objects, the second the one already committed: neither is written.
    other = session.preview(z, np.array(centres[1:]), np.array([True]), np.empty((0, 4)))
    before = session.labels.read()
    pair = Preview(z, other.prompts + one.prompts, other.predictions + one.predictions)
    pair.multimask = [None, None]
    with pytest.raises(ValueError, match="existing labels"):
        session.commit(pair)
    np.testing.assert_array_equal(session.labels.read(), before)
    assert [e["id"] for e in session.labels.log()] == [kept]
    assert session.commit(other) == [kept + 2]  # ids are never reused

    np.testing.assert_array_equal(
        replay(session.labels.log(), session.segmenter), session.labels.read()
    )
    session.close()


@pytest.mark.slow
def test_automatic_segmentation_follows_the_objects_labelled_by_hand(
    model: sg.SamModel, tmp_path: Path
) -> None:
    image, truth = nuclei_volume((8, 128, 128))
    session = Session.open(sg.open_volume(image), model, workspace=tmp_path / "ws")
    z = int(np.argmax([len(np.unique(s[s > 0])) for s in truth]))
    ids, counts = np.unique(truth[z][truth[z] > 0], return_counts=True)
    assert len(ids) >= 4  # three to label by hand, the rest to find
    hand = ids[np.argsort(counts)[::-1][:3]]
    params = sg.AutomaticParams(points_per_side=8)
    for label in hand[:2]:
        session.labels.commit(truth[z] == label, z=z)
    with pytest.raises(ValueError, match="at least 3"):
        session.segment_automatically(z, follow_labels=True, params=params)
    assert len(session.labels.log()) == 2  # nothing was segmented
    session.labels.commit(truth[z] == hand[2], z=z)
    before = session.labels.read()

    new = session.segment_automatically(z, follow_labels=True, params=params)
    after = session.labels.read()
    np.testing.assert_array_equal(after[before > 0], before[before > 0])  # kept
    assert new and set(np.unique(after[z])) >= set(new)
    records = [e["record"] for e in session.labels.log() if e["id"] in new]
    assert {r["params"]["mode"] for r in records} == {"seeded"}
    session.close()
