"""Fine-tuning the prompt encoder and mask decoder: the training decoder's exactness, a real
gain on an object class the base model gets wrong, the files written, the stores kept,
interruptions, bad input, and a session switching to the tuned model.

The data is generated here: discs whose annotation includes a halo a few pixels wide around
the visible disc (an annotator's convention SAM does not know: it follows the visible edge,
so one click, a box and even eight corrective clicks all fall short).
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import napari_segany as sg
from napari_segany.embeddings import StoreMismatchError
from napari_segany.finetuning.checkpoint import save_tuned
from napari_segany.finetuning.run import FinetuneCancelled, FinetuneReport, finetune
from napari_segany.models import build_sam
from napari_segany.models.decoder_training import decode_windows
from napari_segany.segmenter import Segmenter
from napari_segany.session import Session

SIZE = 256
OBJECTS = 24
HALO = 3
EPOCHS = 3
"""Passes over the 18 training objects (two steps each): enough for a clear gain."""


def _halo_discs(seed: int, n: int = OBJECTS) -> tuple[np.ndarray, np.ndarray]:
    """A noisy ``(SIZE, SIZE)`` image of ``n`` bright discs, and labels ``HALO`` pixels wider
    than each disc (one id per disc, separated by background)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((SIZE, SIZE), dtype=np.uint16)
    image = np.full((SIZE, SIZE), 40.0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    found = 0
    for _ in range(5000):
        if found == n:
            break
        cy, cx = rng.integers(20, SIZE - 20, 2)
        r = rng.uniform(9, 13)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        label = d2 <= (r + HALO) ** 2
        if labels[ndimage.binary_dilation(label, iterations=3)].any():
            continue
        found += 1
        labels[label] = found
        image[d2 <= r * r] = 170.0
    assert found == n
    image += rng.normal(0, 10, image.shape)
    return image, labels


def _centres(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    return np.array([np.argwhere(labels == i).mean(axis=0) for i in ids])


def _decoded(
    model: sg.SamModel, embedding: sg.ImageEmbedding, labels: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder outputs of a few objects: one click each, then each box with those logits."""
    ids = [1, 5, 9, 13]
    points = _centres(labels, ids)[:, None]
    clicks = model.decode(embedding, points=points, labels=np.ones((len(ids), 1)))
    where = [np.argwhere(labels == i) for i in ids]
    boxes = np.array([[*w.min(0), *(w.max(0) + 1)] for w in where])
    boxed = model.decode(
        embedding, boxes=boxes, mask_logits=clicks.low_res_logits[:, 0], multimask=False
    )
    logits = [clicks.low_res_logits.flatten(1), boxed.low_res_logits.flatten(1)]
    return torch.cat(logits, 1), torch.cat([clicks.iou, boxed.iou], 1)


def _assert_same_decoder(a: sg.SamModel, b: sg.SamModel, embedding, labels) -> None:
    logits_a, iou_a = _decoded(a, embedding, labels)
    logits_b, iou_b = _decoded(b, embedding, labels)
    torch.testing.assert_close(logits_a, logits_b, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(iou_a, iou_b, rtol=1e-5, atol=1e-5)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> sg.SamModel:
    return sg.load_model("mobile_sam", device="cpu", progress=False)


@pytest.fixture(scope="module")
def scene(base: sg.SamModel) -> tuple[np.ndarray, np.ndarray, sg.EmbeddingStore]:
    image, labels = _halo_discs(1)
    return image, labels, sg.embed(image, base, progress=False)


@pytest.fixture(scope="module")
def tuned_run(base, scene, tmp_path_factory) -> tuple[sg.SamModel, FinetuneReport, Path]:
    """One real fine-tuning run, shared: the tuned model, its report and its checkpoint."""
    import napari_segany.finetuning.run as finetune_module

    _, labels, store = scene
    out = tmp_path_factory.mktemp("tuned") / "halo.pt"
    with pytest.MonkeyPatch.context() as patch:
        # Only the final validation, however slow a busy machine makes the steps (a speed-up
        # alone: a renamed setting costs time, not the test).
        patch.setattr(finetune_module, "VALIDATE_EVERY", math.inf, raising=False)
        tuned, report = finetune(
            [(store, labels)],
            base,
            epochs=EPOCHS,
            time_budget=1200,  # the epochs decide, however busy the machine is
            seed=0,
            out=out,
            decoder_only=True,
            progress=False,
        )
    return tuned, report, out


@pytest.fixture(scope="module")
def reloaded(tuned_run) -> sg.SamModel:
    return sg.load_model(tuned_run[2], device="cpu", progress=False)


# --- the training decoder -------------------------------------------------------------------


CASES = [
    # window side in tokens, previous logits given, one embedding for all, the prompt
    (64, False, True, "points"),
    (64, True, False, "points+box"),
    (16, False, False, "box"),
    (16, True, True, "points"),
]


def _prompts(rng: np.random.Generator, n: int, with_mask: bool, prompt: str) -> dict:
    points = boxes = mask_logits = None
    if "points" in prompt:
        xy = torch.as_tensor(rng.uniform(0, 1024, (n, 2, 2)), dtype=torch.float32)
        points = (xy, torch.tensor([[1, 0]] * n))
    if "box" in prompt:
        corner = torch.as_tensor(rng.uniform(0, 600, (n, 2)), dtype=torch.float32)
        boxes = torch.cat([corner, corner + torch.tensor([250.0, 180.0])], 1)
    if with_mask:
        mask_logits = torch.as_tensor(rng.normal(0, 4, (n, 1, 256, 256)), dtype=torch.float32)
    return {"points": points, "boxes": boxes, "mask_logits": mask_logits}


def _plain(prompt_encoder, decoder, features, prompts, windows, size):
    """The reference: :meth:`MaskDecoder.predict_masks` on the whole grid, then cropped."""
    sparse, dense = prompt_encoder(prompts["points"], prompts["boxes"], prompts["mask_logits"])
    full, iou = decoder.predict_masks(features, prompt_encoder.get_dense_pe(), sparse, dense)
    masks = torch.stack(
        [
            full[b, :, 4 * r : 4 * (r + size), 4 * c : 4 * (c + size)]
            for b, (r, c) in enumerate(windows.tolist())
        ]
    )
    return masks, iou


@pytest.mark.parametrize(("size", "with_mask", "shared", "prompt"), CASES)
def test_decode_windows_equals_the_decoder_on_every_token(
    base: sg.SamModel, scene, size: int, with_mask: bool, shared: bool, prompt: str
) -> None:
    _, _, store = scene
    rng = np.random.default_rng(size + 2 * with_mask + 4 * shared)
    n = 2
    features = store.get(0).features
    if not shared:
        features = torch.cat([features, 0.8 * features.roll(7, dims=-1)])
    prompts = _prompts(rng, n, with_mask, prompt)
    windows = torch.as_tensor(rng.integers(0, 64 - size + 1, (n, 2)))
    if size < 64:
        assert windows.unique(dim=0).shape[0] == n  # each prompt its own window
    pe, md = base.net.prompt_encoder, base.net.mask_decoder
    with torch.no_grad():
        masks, iou = decode_windows(pe, md, features, windows=windows, size=size, **prompts)
        want_masks, want_iou = _plain(pe, md, features, prompts, windows, size)
    assert masks.shape == (n, 4, 4 * size, 4 * size) and iou.shape == (n, 4)
    assert want_masks.abs().max() > 1  # real logits, not a degenerate comparison
    torch.testing.assert_close(masks, want_masks, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(iou, want_iou, rtol=1e-3, atol=1e-3)


def test_decode_windows_passes_the_decoders_gradients(base: sg.SamModel, scene) -> None:
    _, _, store = scene
    rng = np.random.default_rng(5)
    n, size = 2, 16
    features = store.get(0).features
    features = torch.cat([features, 0.8 * features.roll(7, dims=-1)])
    prompts = _prompts(rng, n, True, "points")
    windows = torch.tensor([[3, 40], [30, 11]])
    weights = torch.as_tensor(rng.normal(size=(n, 4, 4 * size, 4 * size)), dtype=torch.float32)

    def gradients(windowed: bool) -> dict[str, torch.Tensor | None]:
        prompt_encoder = copy.deepcopy(base.net.prompt_encoder).requires_grad_(True)
        decoder = copy.deepcopy(base.net.mask_decoder).requires_grad_(True)
        if windowed:
            masks, iou = decode_windows(
                prompt_encoder, decoder, features, windows=windows, size=size, **prompts
            )
        else:
            masks, iou = _plain(prompt_encoder, decoder, features, prompts, windows, size)
        loss = (weights * masks).mean() + (iou * torch.arange(1.0, 5.0)).sum()
        loss.backward()
        grads = {f"prompt_encoder.{k}": p.grad for k, p in prompt_encoder.named_parameters()}
        grads.update({f"mask_decoder.{k}": p.grad for k, p in decoder.named_parameters()})
        return grads

    grads, want = gradients(windowed=True), gradients(windowed=False)
    # Every decoder parameter learns (all four tokens and the IoU head are used) but the key
    # biases of token-to-image attention: softmax over the keys cancels them exactly.
    for name, grad in grads.items():
        if name.startswith("mask_decoder.") and not name.endswith("k_proj.bias"):
            assert grad is not None and grad.abs().sum() > 0, name
    used = ["point_embeddings.0.weight", "point_embeddings.1.weight"]  # negative, positive
    used += ["not_a_point_embed.weight", "mask_downscaling.0.weight"]
    for name in used:
        grad = grads[f"prompt_encoder.{name}"]
        assert grad is not None and grad.abs().sum() > 0, name
    # ... and the same gradients as through the plain decoder
    for name, grad in grads.items():
        reference = want[name]
        if reference is None:
            assert grad is None or not grad.any(), name
            continue
        mine = torch.zeros_like(reference) if grad is None else grad
        assert float((mine - reference).norm()) <= 1e-3 * float(reference.norm()) + 1e-5, name


# --- a real gain ----------------------------------------------------------------------------


@pytest.mark.slow
def test_tuning_learns_the_halo_the_base_model_misses(base, scene, tuned_run) -> None:
    tuned, report, out = tuned_run
    before, after = report.before, report.after
    assert set(before) == set(after) == {"click", "box", "clicks8"}
    assert before["clicks8"] < 0.85  # the base model does fall short, even with 8 clicks
    assert report.kept == "tuned"
    assert all(after[k] >= before[k] for k in before)
    assert sum(after.values()) > sum(before.values()) + 0.05
    assert after["clicks8"] > before["clicks8"] + 0.03
    assert report.validation_objects == 6 and report.training_objects == 18
    assert report.stopped == "epochs" and report.steps >= EPOCHS
    assert report.history[-1][0] == report.steps and report.history[-1][2] == after
    assert report.checkpoint == out and report.decoder_file == out.with_name("halo.decoder.pt")
    assert "tuned model kept" in report.summary()
    assert json.loads(json.dumps(report.to_json()))["kept"] == "tuned"
    assert tuned is not base and tuned.encoder_sha256 == base.encoder_sha256
    assert tuned.net.image_encoder is base.net.image_encoder  # only the decoder was tuned

    # objects never seen in training, on another image, gain too (one click, one box)
    image, labels = _halo_discs(2)
    store = sg.embed(image, base, progress=False)
    for start in ("point", "box"):
        ious = [
            sg.evaluate_interactive(
                Segmenter(model, store), None, labels, start=start, iterations=0, progress=False
            )
            .ious[:, 0]
            .mean()
            for model in (base, tuned)
        ]
        assert ious[1] > ious[0] + 0.005, (start, ious)


# --- the files written ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_checkpoint_is_a_plain_sam_checkpoint_with_the_base_encoder(
    base, scene, tuned_run, reloaded
) -> None:
    _, labels, store = scene
    tuned, _, out = tuned_run
    state = torch.load(out, map_location="cpu", weights_only=True)
    build_sam("mobile_sam").load_state_dict(state, strict=True)
    original = torch.load(base.checkpoint, map_location="cpu", weights_only=True)
    assert set(state) == set(original)
    for key, value in original.items():
        if key.startswith("image_encoder."):
            assert value.dtype == state[key].dtype and torch.equal(value, state[key]), key
    changed = [k for k in state if not torch.equal(state[k], original[k])]
    assert changed and all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in changed)

    assert reloaded.architecture == "mobile_sam"
    assert reloaded.encoder_sha256 == base.encoder_sha256
    embedding = store.get(0)
    _assert_same_decoder(reloaded, tuned, embedding, labels)
    with pytest.raises(AssertionError):  # the decoder did change
        _assert_same_decoder(reloaded, base, embedding, labels)


@pytest.mark.slow
def test_the_decoder_only_file_rebuilds_the_same_model(base, scene, tuned_run, reloaded) -> None:
    _, labels, store = scene
    _, report, out = tuned_run
    small = out.with_name("halo.decoder.pt")
    assert report.decoder_file == small and small.is_file()
    assert small.stat().st_size < out.stat().st_size / 2
    rebuilt = sg.load_model(small, device="cpu", progress=False)
    assert rebuilt.architecture == "mobile_sam"
    assert rebuilt.encoder_sha256 == base.encoder_sha256
    for key, value in reloaded.net.state_dict().items():
        assert torch.equal(value, rebuilt.net.state_dict()[key]), key
    _assert_same_decoder(rebuilt, reloaded, store.get(0), labels)


# --- stores stay valid for a tuned decoder, never for another encoder -------------------------


@pytest.fixture(scope="module")
def other_encoder(base, tmp_path_factory) -> sg.SamModel:
    """The base checkpoint with one image-encoder tensor nudged."""
    state = torch.load(base.checkpoint, map_location="cpu", weights_only=True)
    key = next(k for k in sorted(state) if k.startswith("image_encoder.") and k.endswith("weight"))
    state[key] = state[key] + 1e-3
    path = tmp_path_factory.mktemp("other") / "nudged.pt"
    torch.save(state, path)
    return sg.load_model(path, device="cpu", progress=False)


@pytest.mark.slow
def test_a_tuned_decoder_keeps_the_stores_of_its_base(
    base, scene, tuned_run, reloaded, other_encoder, tmp_path: Path
) -> None:
    image, labels, _ = scene
    tuned = tuned_run[0]
    volume = sg.open_volume(image)
    path = tmp_path / "base.embeddings.zarr"
    sg.embed(volume, base, path, progress=False)
    reopened = sg.embed(volume, reloaded, path, compute=False, progress=False)
    assert reopened.is_done(0)
    assert reopened.signature["model"]["name"] == "mobile_sam"  # nothing recomputed
    centre = _centres(labels, [3])[0]
    mine = Segmenter(reloaded, reopened).predict(0, points=[centre], labels=[1])
    want = Segmenter(tuned, reopened).predict(0, points=[centre], labels=[1])
    np.testing.assert_array_equal(mine.mask, want.mask)
    assert mine.mask[labels == 3].mean() > 0.5
    assert mine.mask[labels != 3].sum() < 0.1 * (labels == 3).sum()

    assert other_encoder.encoder_sha256 != base.encoder_sha256
    with pytest.raises(StoreMismatchError, match=r"nudged\.pt"):
        sg.embed(volume, other_encoder, path, compute=False, progress=False)
    assert sg.EmbeddingStore.open(path).is_done(0)  # left as it was
    with pytest.raises(ValueError, match="image encoder"):
        Segmenter(other_encoder, reopened)


def test_finetune_refuses_the_store_of_another_encoder(scene, other_encoder) -> None:
    _, labels, store = scene
    with pytest.raises(ValueError, match=r"nudged\.pt") as caught:
        finetune([(store, labels)], other_encoder, epochs=1, progress=False)
    assert "mobile_sam" in str(caught.value) and "pair 1" in str(caught.value)


def test_a_tuned_model_of_another_encoder_is_refused_too(scene, other_encoder) -> None:
    _, _, store = scene
    # as finetune returns a model: no checkpoint file nor its sha256, the encoder's own sha256
    tuned_elsewhere = sg.SamModel(
        other_encoder.net,
        name="nudged.pt-tuned",
        architecture=other_encoder.architecture,
        device=other_encoder.device,
        fast=other_encoder.fast,
        encoder_sha256=other_encoder.encoder_sha256,
    )
    with pytest.raises(ValueError, match="image encoder"):
        Segmenter(tuned_elsewhere, store)


# --- interruptions --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cancelled_run_keeps_a_whole_checkpoint(
    base, scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier run's files at ``out`` are kept, or replaced whole by a gain of this run
    (validating after every step here, so that one may be saved before the cancel)."""
    import napari_segany.finetuning.run as finetune_module

    monkeypatch.setattr(finetune_module, "VALIDATE_EVERY", 0.0, raising=False)
    _, labels, store = scene
    out, small = tmp_path / "halo.pt", tmp_path / "halo.decoder.pt"
    save_tuned(base, base, out, decoder_only=True)  # an earlier run's files
    old = {p.name: p.read_bytes() for p in (out, small)}
    inode = out.stat().st_ino
    steps: list[int] = []
    with pytest.raises(FinetuneCancelled):
        finetune(
            [(store, labels)],
            base,
            epochs=50,
            time_budget=1200,
            validation=0.1,  # two held-back objects: a quick check
            out=out,
            decoder_only=True,
            progress=False,
            callback=lambda step, total: steps.append(step),
            cancel=lambda: len(steps) >= 2 or out.stat().st_ino != inode,  # after a save
        )
    assert steps in ([1], [1, 2])
    assert sorted(os.listdir(tmp_path)) == sorted(old)  # no temporary file left behind
    if out.stat().st_ino == inode:
        assert out.read_bytes() == old[out.name] and small.read_bytes() == old[small.name]
    else:  # a gain was saved before the cancel: both files are whole, and new
        state = torch.load(out, map_location="cpu", weights_only=True)
        build_sam("mobile_sam").load_state_dict(state, strict=True)
        assert out.read_bytes() != old[out.name]
        rebuilt = sg.load_model(small, device="cpu", progress=False)
        assert rebuilt.encoder_sha256 == base.encoder_sha256
        for key, value in rebuilt.net.prompt_encoder.state_dict().items():
            assert torch.equal(value, state[f"prompt_encoder.{key}"]), key


@pytest.mark.parametrize("dies_at", [1, 2], ids=["checkpoint", "decoder-file"])
def test_a_write_killed_halfway_leaves_the_previous_files(
    base, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dies_at: int
) -> None:
    out, small = tmp_path / "halo.pt", tmp_path / "halo.decoder.pt"
    assert save_tuned(base, base, out, decoder_only=True) == (out, small)
    old = {p: p.read_bytes() for p in (out, small)}
    inode = out.stat().st_ino
    save = torch.save
    calls: list[Path] = []

    class Killed(Exception):
        pass

    def dies_halfway(obj, f, *args, **kwargs) -> None:
        calls.append(Path(f))
        if len(calls) == dies_at:
            Path(f).write_bytes(old[out][: len(old[out]) // 2])
            raise Killed
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(Killed):
        save_tuned(base, base, out, decoder_only=True)
    assert len(calls) == dies_at and all(p.parent == tmp_path for p in calls)
    assert sorted(os.listdir(tmp_path)) == ["halo.decoder.pt", "halo.pt"]  # no temporary
    assert small.read_bytes() == old[small]
    if dies_at == 1:
        assert out.read_bytes() == old[out] and out.stat().st_ino == inode
    else:  # the checkpoint was written whole before the decoder file's write died
        assert out.stat().st_ino != inode
        build_sam("mobile_sam").load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_the_public_finetune_is_the_function_whatever_was_imported_first() -> None:
    code = (
        "import napari_segany as sg\n"
        "from napari_segany import FinetuneCancelled, FinetuneReport, finetune\n"
        "assert callable(finetune) and callable(sg.finetune), (finetune, sg.finetune)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# --- bad input ------------------------------------------------------------------------------


def test_too_few_objects_say_how_many_are_needed(base, scene) -> None:
    _, labels, store = scene
    few = np.where(labels <= 6, labels, 0)
    with pytest.raises(ValueError, match=r"at least 10 .*found 6: label 4 more"):
        finetune([(store, few)], base, progress=False)
    # counted over all pairs: 6 + 3
    fewer = np.where(labels <= 3, labels, 0)
    with pytest.raises(ValueError, match="found 9"):
        finetune([(store, few), (store, fewer)], base, progress=False)


def test_labels_that_do_not_fit_their_image_name_the_pair(base, scene) -> None:
    image, labels, store = scene
    with pytest.raises(ValueError, match=r"pair 2: .*\(200, 256\)"):
        finetune([(store, labels), (store, labels[:200])], base, progress=False)
    with pytest.raises(ValueError, match="pair 1"):  # an image to embed: refused before that
        finetune([(image[:, :128], labels)], base, progress=False)
    with pytest.raises(ValueError, match="pair 1"):
        finetune([(store,)], base, progress=False)
    with pytest.raises(ValueError, match="at least one"):
        finetune([], base, progress=False)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epochs": 0}, "epochs must be 1 or more"),
        ({"epochs": -2}, "epochs must be 1 or more"),
        ({"time_budget": 0}, "time budget must be positive"),
        ({"time_budget": -5.0}, "time budget must be positive"),
        ({"time_budget": math.nan}, "time budget must be positive"),
        ({"validation": 1.0}, "validation share"),
        ({"validation": 0.0}, "validation share"),
    ],
)
def test_bad_settings_are_refused(base, scene, settings: dict, message: str) -> None:
    _, labels, store = scene
    with pytest.raises(ValueError, match=message):
        finetune([(store, labels)], base, progress=False, **settings)


# --- a session switches models --------------------------------------------------------------


@pytest.mark.slow
def test_a_session_uses_the_tuned_model_with_its_store_and_settings(
    base, scene, tuned_run, other_encoder, tmp_path: Path
) -> None:
    image, labels, _ = scene
    tuned = tuned_run[0]
    session = Session.open(sg.open_volume(image), base, workspace=tmp_path / "ws")
    try:
        session.embed_slice(0)
        session.segmenter.refine = False
        store = session.store
        session.use_model(tuned)
        assert session.model is tuned and session.segmenter.model is tuned
        assert session.store is store and session.segmenter.store is store
        assert session.segmenter.refine is False
        centre = _centres(labels, [7])[0]
        mine = session.segmenter.predict(0, points=[centre], labels=[1])
        want = Segmenter(tuned, store, refine=False).predict(0, points=[centre], labels=[1])
        np.testing.assert_array_equal(mine.mask, want.mask)
        with pytest.raises(ValueError, match="image encoder"):
            session.use_model(other_encoder)
        assert session.model is tuned and session.segmenter.model is tuned
    finally:
        session.close()


def test_a_session_reopened_with_the_tuned_checkpoint_reads_its_bases_embeddings(
    base, scene, reloaded, tmp_path: Path
) -> None:
    """The workspace's store of the base model serves the tuned model: nothing is embedded
    again (the slice is still done, the store is the base's folder)."""
    image, _, _ = scene
    volume = sg.open_volume(image)
    first = Session.open(volume, base, workspace=tmp_path / "ws")
    try:
        first.embed_slice(0)
        made = first.store.path
    finally:
        first.close()
    again = Session.open(volume, reloaded, workspace=tmp_path / "ws")
    try:
        assert again.store.path == made and again.is_embedded(0)
        assert sorted(p.name for p in (tmp_path / "ws").glob("embeddings-*")) == [made.name]
    finally:
        again.close()
