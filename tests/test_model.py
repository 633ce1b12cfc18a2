"""Loading models by name or path, clear errors, and the prompt conventions of SamModel."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_segany as sg
from napari_segany.model import CheckpointError, SamModel, load_model
from napari_segany.prompts import boxes_to_model, points_to_model

from .helpers import iou


@pytest.fixture(scope="module")
def mobile_sam() -> SamModel:
    return load_model("mobile_sam", device="cpu", progress=False)


@pytest.fixture(scope="module")
def mobile_sam_state(mobile_sam: SamModel) -> dict[str, torch.Tensor]:
    return torch.load(mobile_sam.checkpoint, map_location="cpu", weights_only=True)


def test_public_api_names() -> None:
    assert sg.list_models()[0] == "mobile_sam"
    assert {"mobile_sam", "vit_b", "vit_l", "vit_h"} <= set(sg.list_models())
    assert sg.load_model is load_model


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(sg.UnknownModelError, match="mobile_sam") as info:
        load_model("mobile_sammy", device="cpu")
    assert "vit_h" in str(info.value)


@pytest.mark.slow
def test_checkpoint_by_path_infers_architecture_and_signs_itself(
    tmp_path: Path, mobile_sam_state: dict
) -> None:
    path = tmp_path / "finetuned.pt"
    torch.save({"model_state": mobile_sam_state, "epoch": 3}, path)  # as trainers wrap it
    model = load_model(path, device="cpu")
    assert model.architecture == "mobile_sam"
    assert model.name == "finetuned.pt"
    assert model.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_that_is_not_a_sam_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"backbone.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        load_model(path, device="cpu")


def test_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"image_encoder.x": torch.zeros(1), "extra": Path("/")}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_model(path, device="cpu")


@pytest.mark.slow
def test_keys_that_do_not_fit_the_named_architecture(
    tmp_path: Path, mobile_sam_state: dict
) -> None:
    path = tmp_path / "mobile.pt"
    torch.save(mobile_sam_state, path)
    with pytest.raises(CheckpointError, match=r"does not fit the vit_b architecture: \d+ missing"):
        load_model(path, device="cpu", architecture="vit_b")


@pytest.mark.slow
def test_shape_mismatch_is_named(tmp_path: Path, mobile_sam_state: dict) -> None:
    state = dict(mobile_sam_state)
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    path = tmp_path / "bad_shape.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="iou_token"):
        load_model(path, device="cpu")


def test_points_and_boxes_swap_axes_once_and_scale() -> None:
    original, resized = (300, 600), (512, 1024)  # a wide image: x scales by 1024/600
    xy = points_to_model(np.array([[30.0, 60.0]]), original, resized)
    np.testing.assert_allclose(xy, [[60.0 * 1024 / 600, 30.0 * 512 / 300]])
    box = boxes_to_model(np.array([10.0, 20.0, 110.0, 220.0]), original, resized)
    np.testing.assert_allclose(
        box, [20 * 1024 / 600, 10 * 512 / 300, 220 * 1024 / 600, 110 * 512 / 300]
    )


def _disk(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def two_disks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A non-square image: a bright disk at the top left, a dimmer one at the bottom right."""
    shape = (240, 400)
    upper, lower = _disk(shape, (60, 90), 30), _disk(shape, (170, 310), 40)
    image = np.full(shape, 20.0)
    image[upper], image[lower] = 230.0, 160.0
    return image, upper, lower


@pytest.mark.slow
def test_a_point_at_row_y_column_x_selects_that_object(mobile_sam: SamModel, two_disks) -> None:
    image, upper, lower = two_disks
    embedding = mobile_sam.embed_image(image)
    for (y, x), expected in [((60, 90), upper), ((170, 310), lower)]:
        decoded = mobile_sam.decode(embedding, points=np.array([[y, x]]), labels=np.array([1]))
        best = int(decoded.iou[0].argmax())
        mask = (mobile_sam.upscale(decoded.low_res_logits[0, best], embedding) > 0).numpy()
        assert mask.shape == image.shape
        assert iou(mask, expected) > 0.9


@pytest.mark.slow
def test_several_objects_in_one_call_equal_single_calls(mobile_sam: SamModel, two_disks) -> None:
    image, upper, lower = two_disks
    embedding = mobile_sam.embed_image(image)
    boxes = np.array([[25, 55, 95, 125], [125, 265, 215, 355]], dtype=float)
    batched = mobile_sam.decode(embedding, boxes=boxes, multimask=False)
    assert batched.low_res_logits.shape == (2, 1, 256, 256)
    for i, expected in enumerate([upper, lower]):
        single = mobile_sam.decode(embedding, boxes=boxes[i], multimask=False)
        # batched matrix products round differently in the last bits; the masks are the same
        torch.testing.assert_close(
            single.low_res_logits[0], batched.low_res_logits[i], atol=1e-4, rtol=0
        )
        mask = (mobile_sam.upscale(single.low_res_logits[0, 0], embedding) > 0).numpy()
        batched_mask = (mobile_sam.upscale(batched.low_res_logits[i, 0], embedding) > 0).numpy()
        np.testing.assert_array_equal(mask, batched_mask)
        assert iou(mask, expected) > 0.9


def test_bad_prompts_and_images_are_named(mobile_sam: SamModel) -> None:
    with pytest.raises(ValueError, match="RGB image"):
        mobile_sam.prepare(np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match="empty"):
        mobile_sam.prepare(np.zeros((0, 5)))
    with pytest.raises(ValueError, match="NaN"):
        mobile_sam.prepare(np.full((4, 5), np.nan))
    embedding = sg.ImageEmbedding(torch.zeros(1, 256, 64, 64), (10, 10), (1024, 1024))
    with pytest.raises(ValueError, match="need labels"):
        mobile_sam.decode(embedding, points=np.array([[1, 1]]))
    with pytest.raises(ValueError, match="2 points but labels"):
        mobile_sam.decode(embedding, points=np.array([[1, 1], [2, 2]]), labels=np.array([1]))


def test_device_choice() -> None:
    assert sg.choose_device("cpu") == torch.device("cpu")
    assert sg.choose_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="unknown device"):
        sg.choose_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            sg.choose_device("cuda")


@pytest.mark.slow
def test_reduced_precision_encoder_stays_close_to_float32(mobile_sam: SamModel) -> None:
    """The GPU path's bf16 autocast, exercised on the CPU (where torch supports it too)."""
    bf16 = load_model("mobile_sam", device="cpu", precision="bfloat16", progress=False)
    assert bf16.autocast_dtype == torch.bfloat16 and mobile_sam.autocast_dtype is None
    image = np.random.default_rng(0).uniform(0, 255, (128, 160))
    prepared, _ = mobile_sam.prepare(image)
    full, reduced = mobile_sam.encode(prepared[None]), bf16.encode(prepared[None])
    assert reduced.dtype == torch.float32
    assert ((reduced - full).norm() / full.norm()).item() < 0.05


def test_unknown_precision_is_refused_before_any_download() -> None:
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        load_model("vit_h", device="cpu", precision="fp8")


def test_allocator_tuning_is_a_switch() -> None:
    code = "from napari_segany.device import keep_large_allocations as k; print(k())"
    tuned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    env = {"NAPARI_SEGANY_KEEP_MALLOC": "1", "PATH": ""}
    left = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert tuned.stdout.strip() == "True"
    assert left.stdout.strip() == "False"


_THREAD_BLOCK = """
import ctypes, threading
import numpy as np
from napari_segany.device import keep_large_allocations

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
tuned = keep_large_allocations()
mapped = []

def work():  # a 100 MiB block in a thread started afterwards, as a worker's would be
    before = libc.mallinfo2().hblks
    block = np.ones(100 * 2**20, dtype=np.uint8)
    mapped.append(libc.mallinfo2().hblks - before)
    del block

thread = threading.Thread(target=work)
thread.start()
thread.join()
print(tuned, mapped[0])
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_worker_threads_keep_large_blocks_in_the_shared_heap() -> None:
    # Another thread's own arena cannot hold a 100 MiB block: glibc maps it afresh (one more
    # mapped block) unless the tuning has capped the arenas so that the thread shares the
    # main heap, where the raised mmap threshold keeps it.
    run = [sys.executable, "-c", _THREAD_BLOCK]
    tuned = subprocess.run(run, capture_output=True, text=True, check=True)
    left = subprocess.run(
        run,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "NAPARI_SEGANY_KEEP_MALLOC": "1"},
    )
    assert tuned.stdout.split() == ["True", "0"]
    assert left.stdout.split() == ["False", "1"]


def test_rgb_images_prepare_without_sharing_read_only_buffers(mobile_sam: SamModel) -> None:
    """PIL and some readers hand out read-only arrays; torch would warn (an error here)."""
    frozen = np.zeros((512, 1024, 3), dtype=np.uint8)  # no resize needed: the array itself
    frozen.flags.writeable = False
    prepared, resized = mobile_sam.prepare(frozen)
    assert resized == (512, 1024) and prepared.shape == (3, 1024, 1024)
    _, resized = mobile_sam.prepare(np.zeros((300, 200, 3), dtype=np.uint8))  # PIL's buffer
    assert resized == (1024, 683)


def test_a_model_given_loaded_is_used_as_it_is_and_a_name_is_loaded(mobile_sam: SamModel) -> None:
    from napari_segany.model import as_model

    assert as_model(mobile_sam) is mobile_sam
    loaded = as_model("mobile_sam", device="cpu", progress=False)
    assert loaded is not mobile_sam and loaded.sha256 == mobile_sam.sha256
