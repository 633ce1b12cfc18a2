"""The embedding store: equal to direct encoding, signed, resumable, concurrent, tiled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_segany.embeddings import (
    EmbeddingStore,
    NotEmbeddedError,
    StoreMismatchError,
    embed,
)
from napari_segany.model import SamModel, load_model
from napari_segany.sample_data import nuclei_volume
from napari_segany.volume.volume import open_volume

pytestmark = pytest.mark.slow

# A small stack: 4 slices of 96 x 128 pixels cut from the sample volume.
STACK_CODE = "nuclei_volume()[0][6:10, 40:136, 60:188]"


def small_stack() -> np.ndarray:
    return nuclei_volume()[0][6:10, 40:136, 60:188]


@pytest.fixture(scope="module")
def model() -> SamModel:
    return load_model("mobile_sam", device="cpu", progress=False)


@pytest.fixture(scope="module")
def reference(model: SamModel) -> np.ndarray:
    """Features of every slice of the small stack, computed by an uninterrupted run."""
    store = embed(open_volume(small_stack()), model, progress=False)
    return np.stack([store.get(z).features[0].numpy() for z in range(len(store))])


def test_store_holds_what_direct_encoding_gives(model: SamModel, reference: np.ndarray) -> None:
    volume = open_volume(small_stack())
    direct = model.embed_image(volume.model_slice(2)).features[0].numpy()
    assert reference.shape == (4, 256, 64, 64)
    # float16 storage: about three significant digits
    np.testing.assert_allclose(reference[2], direct, atol=2e-3, rtol=1e-2)


def test_embed_takes_an_array_or_a_path_as_open_volume_does(
    tmp_path: Path, model: SamModel, reference: np.ndarray
) -> None:
    from_array = embed(small_stack(), model, compute=False)
    assert len(from_array) == 4
    np.testing.assert_array_equal(from_array.get(2).features[0].numpy(), reference[2])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, small_stack(), photometric="minisblack")
    from_path = embed(str(path), model, slices=[1], progress=False)
    assert from_path.missing() == [0, 2, 3]
    np.testing.assert_array_equal(from_path.get(1).features[0].numpy(), reference[1])


def test_store_on_disk_reopens_without_recomputing(
    tmp_path: Path, model: SamModel, reference: np.ndarray
) -> None:
    path = tmp_path / "stack.embeddings.zarr"
    volume = open_volume(small_stack())
    first = embed(volume, model, path, slices=[1, 3], progress=False)
    assert first.missing() == [0, 2]
    calls: list[tuple[int, int]] = []
    again = embed(volume, model, path, progress=False, callback=lambda d, t: calls.append((d, t)))
    assert again.missing() == []
    assert calls[-1] == (2, 2)  # only the two missing slices were computed
    reopened = EmbeddingStore.open(path)
    for z in range(4):
        np.testing.assert_array_equal(reopened.get(z).features[0].numpy(), reference[z])
    assert reopened.signature["model"]["sha256"] == model.sha256


def test_requested_slice_first_and_on_demand(model: SamModel) -> None:
    volume = open_volume(small_stack())
    store = embed(volume, model, compute=False)
    assert store.missing() == list(range(4))
    store.get(3)  # computed on demand, alone
    assert store.missing() == [0, 1, 2]
    report = store.fill(first=2, progress=False, callback=None)
    assert report.computed == [2, 0, 1]
    assert report.skipped == 1


def test_cancel_between_batches_keeps_finished_slices(tmp_path: Path, model: SamModel) -> None:
    volume = open_volume(small_stack())
    store = embed(volume, model, tmp_path / "s.zarr", progress=False, cancel=lambda: True)
    assert store.done().sum() == 1
    resumed = embed(volume, model, tmp_path / "s.zarr", progress=False)
    assert resumed.done().all()


def test_mismatched_signature_is_refused_and_nothing_is_lost(
    tmp_path: Path, model: SamModel
) -> None:
    path = tmp_path / "s.zarr"
    stack = small_stack()
    embed(open_volume(stack), model, path, slices=[0], progress=False)
    files_before = sorted(p.name for p in path.rglob("*"))

    with pytest.raises(StoreMismatchError, match="preprocessing"):
        embed(open_volume(stack, limits=(0.0, 1000.0)), model, path, compute=False)
    changed = stack.copy()
    changed[0] += 1  # every pixel of a sampled slice changes
    with pytest.raises(StoreMismatchError, match="fingerprint"):
        embed(open_volume(changed), model, path, compute=False)
    # The same weights in another file compute the same embeddings: accepted. Another
    # image encoder (one tensor nudged) is another model.
    state = torch.load(model.checkpoint, weights_only=True)
    same_file = tmp_path / "same_mobile_sam.pt"
    torch.save(state, same_file)
    embed(open_volume(stack), load_model(same_file, device="cpu"), path, compute=False)
    key = next(k for k in sorted(state) if k.startswith("image_encoder.") and "weight" in k)
    state[key] = state[key] + 1e-3
    other_file = tmp_path / "other_mobile_sam.pt"
    torch.save(state, other_file)
    other = load_model(other_file, device="cpu")
    with pytest.raises(StoreMismatchError, match="model"):
        embed(open_volume(stack), other, path, compute=False)

    assert sorted(p.name for p in path.rglob("*")) == files_before
    assert EmbeddingStore.open(path).done().tolist() == [True, False, False, False]
    replaced = embed(open_volume(changed), model, path, compute=False, recompute=True)
    assert replaced.done().sum() == 0


def test_read_only_store_reads_but_does_not_compute(tmp_path: Path, model: SamModel) -> None:
    path = tmp_path / "s.zarr"
    embed(open_volume(small_stack()), model, path, slices=[0], progress=False)
    store = EmbeddingStore.open(path)
    assert store.read_only
    assert store.get(0).features.shape == (1, 256, 64, 64)
    with pytest.raises(NotEmbeddedError, match="slice 1 is not embedded"):
        store.get(1)
    with pytest.raises(FileNotFoundError, match="no embedding store"):
        EmbeddingStore.open(tmp_path / "nowhere.zarr")


def test_path_holding_other_data_is_refused(tmp_path: Path, model: SamModel) -> None:
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an embedding store"):
        embed(open_volume(small_stack()), model, tmp_path / "occupied", compute=False)
    assert (tmp_path / "occupied" / "notes.txt").read_text() == "keep me"


CHILD = textwrap.dedent(
    f"""
    import sys
    import torch
    from napari_segany.embeddings import embed
    from napari_segany.model import load_model
    from napari_segany.sample_data import nuclei_volume
    from napari_segany.volume.volume import open_volume

    order = sys.argv[2]
    torch.set_num_threads(int(sys.argv[3]))
    volume = open_volume({STACK_CODE})
    slices = range(4) if order == "forward" else range(3, -1, -1)
    model = load_model("mobile_sam", device="cpu", progress=False)
    print("ready", flush=True)
    embed(volume, model, sys.argv[1], slices=slices, progress=False,
          callback=lambda done, total: print("done", done, flush=True))
    print("finished", flush=True)
    """
)


def _child(path: Path, order: str = "forward") -> subprocess.Popen[str]:
    # Same thread count as this process: the encoder's sums then round the same way. It is
    # passed on, not inherited: e.g. dask's nannies leave OMP_NUM_THREADS=1 in os.environ.
    threads = str(torch.get_num_threads())
    command = [sys.executable, "-c", CHILD, str(path), order, threads]
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def test_killed_run_resumes_with_only_the_missing_slices(
    tmp_path: Path, model: SamModel, reference: np.ndarray
) -> None:
    path = tmp_path / "killed.zarr"
    child = _child(path)
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("done 2"):
            child.send_signal(signal.SIGKILL)  # no clean-up of any kind
            break
    child.wait(timeout=60)
    child.stdout.close()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    done_before = EmbeddingStore.open(path).done()
    finished = int(done_before.sum())
    assert 2 <= finished < 4
    assert done_before.tolist() == [True] * finished + [False] * (4 - finished)
    counts: list[int] = []
    resumed = embed(
        open_volume(small_stack()),
        model,
        path,
        progress=False,
        callback=lambda d, t: counts.append(t),
    )
    assert counts[-1] == 4 - finished  # only the missing slices were computed
    assert resumed.done().all()
    for z in range(4):
        np.testing.assert_array_equal(resumed.get(z).features[0].numpy(), reference[z])


def test_two_processes_fill_one_store(tmp_path: Path, reference: np.ndarray) -> None:
    path = tmp_path / "shared.zarr"
    children = [_child(path, "forward"), _child(path, "backward")]
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0 and "finished" in out, err
    store = EmbeddingStore.open(path)
    assert store.done().all()
    for z in range(4):
        np.testing.assert_array_equal(store.get(z).features[0].numpy(), reference[z])


def test_object_across_a_tile_border_is_segmented_whole(model: SamModel) -> None:
    """A large slice is tiled; the click is decoded on the tile that holds the whole object."""
    shape, centre, radius = (800, 800), (480, 380), 70
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    truth = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    image = np.where(truth, 200.0, 30.0)
    store = embed(open_volume(image), model, tile_size=512, halo=96, progress=False)
    grid = store.grid
    assert grid.tiled
    # some window's edge cuts the object: decoded there, it would come out cut
    edges = {w[0] for w in grid.windows if w[0] > 0} | {w[2] for w in grid.windows if w[2] < 800}
    assert any(centre[0] - radius < edge < centre[0] + radius for edge in edges)
    embedding, (y0, x0, y1, x1) = store.at_point(0, *centre)
    assert y0 <= centre[0] - radius and centre[0] + radius <= y1  # the chosen one holds it whole
    assert x0 <= centre[1] - radius and centre[1] + radius <= x1
    local = np.array([[centre[0] - y0, centre[1] - x0]])
    decoded = model.decode(embedding, points=local, labels=np.array([1]))
    best = int(decoded.iou[0].argmax())
    tile_mask = (model.upscale(decoded.low_res_logits[0, best], embedding) > 0).numpy()
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = tile_mask
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9
