"""Batch segmentation: many volumes into OME-Zarr labels, in this process or on dask workers.

The parts (finding sources, naming outputs, the slice store, linking into labels) are
tested on hand-made data; whole runs use the real MobileSAM weights on small synthetic
nuclei stacks (3 slices of 128 x 128, a 4 x 4 grid of points) and share one reference
run. Copies of its embeddings spare later runs the encoder where the encoder is not
what they test.
"""

from __future__ import annotations

import gc
import os
import platform
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from ome_zarr_models.v05 import ImageLabel

import napari_segany as sg
from napari_segany.automatic.params import AutomaticParams
from napari_segany.automatic.segment import link_slices
from napari_segany.batch.cluster import SchedulerUnreachableError, local_cluster_size
from napari_segany.batch.files import expand_sources, plan_outputs
from napari_segany.batch.labels import LinkedSlices, write_labels
from napari_segany.batch.segment import BatchResult, segment_files
from napari_segany.batch.slices import SliceStore, slice_signature
from napari_segany.cli import main
from napari_segany.embeddings import StoreMismatchError
from napari_segany.labels.store import LabelsStore
from napari_segany.naming import source_name
from napari_segany.sample_data import nuclei_volume

PARAMS = AutomaticParams(points_per_side=4)


def write_stack(path: Path, *, seed: int = 0, depth: int = 3, shape: tuple = (128, 128)) -> Path:
    """``depth`` slices of a synthetic nuclei volume as a multi-page TIFF."""
    image = nuclei_volume((8, *shape), seed=seed)[0][2 : 2 + depth]
    tifffile.imwrite(path, image, photometric="minisblack")  # not one planar RGB image
    return path


def read_labels(path: Path) -> np.ndarray:
    with LabelsStore.open(path, read_only=True) as store:
        return store.read()


# -- the parts ----------------------------------------------------------------------------


def test_sources_expand_like_a_shell_and_missing_ones_are_all_named(tmp_path: Path) -> None:
    for name in ("b.tif", "a.tif"):
        write_stack(tmp_path / name, depth=1, shape=(48, 48))
    found = expand_sources([str(tmp_path / "*.tif"), tmp_path / "a.tif"])
    assert found == [tmp_path / "a.tif", tmp_path / "b.tif"]  # sorted, once each
    with pytest.raises(FileNotFoundError) as info:
        expand_sources([str(tmp_path / "*.nd2"), tmp_path / "gone.tif", tmp_path / "a.tif"])
    assert "*.nd2' (matches nothing)" in str(info.value) and "gone.tif" in str(info.value)
    assert [source_name(Path(p)) for p in ("x.ome.tif", "y.ome.zarr", "z.zarr", "w")] == list(
        "xyzw"
    )


def test_missing_sources_fail_before_any_work(tmp_path: Path) -> None:
    source = write_stack(tmp_path / "stack.tif", depth=1, shape=(48, 48))
    with pytest.raises(FileNotFoundError, match=r"2 sources: .*nope1\.tif.*nope2\.tif"):
        segment_files([source, tmp_path / "nope1.tif", tmp_path / "nope2.tif"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sources_with_the_same_name_are_refused(tmp_path: Path) -> None:
    sources = [tmp_path / "a" / "stack.tif", tmp_path / "b" / "stack.ome.tif"]
    with pytest.raises(ValueError, match="would write the same outputs"):
        plan_outputs(sources, tmp_path / "out", "mobile_sam")
    (plan,) = plan_outputs(sources[:1], tmp_path / "out", "my_sam.pth")
    assert plan.embeddings.name == "stack.embeddings-my_sam.zarr"
    assert plan.labels.name == "stack.labels.ome.zarr"


# distributed leaves a socket to the garbage collector when a connection times out
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_unreachable_scheduler_is_named_quickly(tmp_path: Path) -> None:
    source = write_stack(tmp_path / "stack.tif", depth=1, shape=(48, 48))
    start = time.perf_counter()
    with pytest.raises(SchedulerUnreachableError, match=r"'tcp://127\.0\.0\.1:1' within 1 s"):
        segment_files([source], tmp_path / "out", client="tcp://127.0.0.1:1", timeout=1)
    assert time.perf_counter() - start < 15
    with pytest.raises(ValueError, match="client='local'"):
        segment_files([source], tmp_path / "out", n_workers=2)
    gc.collect()  # the leaked socket is closed here, under this test's filter


def _signature(points: int = 4, depth: int = 3, side: int = 16) -> dict:
    embeddings = {
        "model": {"name": "m", "architecture": "vit_b", "sha256": "00"},
        "preprocessing": {"limits": [0.0, 1.0]},
        "tiles": {"windows": [[0, 0, side, side]]},
        "source": {
            "shape": [depth, side, side],
            "dtype": "uint8",
            "rgb": False,
            "fingerprint": "f",
        },
    }
    return slice_signature(embeddings, AutomaticParams(points_per_side=points))


def test_the_slice_store_resumes_and_refuses_slices_made_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "s.slices.zarr"
    store = SliceStore.open_or_create(path, _signature())
    assert store.shape == (3, 16, 16) and store.missing() == [0, 1, 2]
    store.write(1, np.full((16, 16), 2, dtype=np.uint16))
    again = SliceStore.open_or_create(path, _signature())
    assert again.missing() == [0, 2] and (again.read(1) == 2).all()
    assert "link_iou" not in again.signature["params"]  # it only relinks, never resegments
    with pytest.raises(StoreMismatchError, match=r"points_per_side 4 \(now 8\).*recompute"):
        SliceStore.open_or_create(path, _signature(points=8))
    assert SliceStore.open(path).missing() == [0, 2]  # nothing was changed
    fresh = SliceStore.open_or_create(path, _signature(points=8), recompute=True)
    assert fresh.missing() == [0, 1, 2]


def test_slices_are_linked_lazily_into_ome_zarr_labels(tmp_path: Path) -> None:
    store = SliceStore.open_or_create(tmp_path / "s.slices.zarr", _signature())
    local = np.zeros((3, 16, 16), dtype=np.uint32)
    local[0, 2:6, 2:6] = 1
    local[1, 2:6, 3:7], local[1, 10:14, 10:14] = 2, 1  # 2 continues 1; a new object
    local[2, 10:14, 10:14] = 1
    for z in range(3):
        store.write(z, local[z])
    expected = np.stack(list(link_slices(local)))
    linked = LinkedSlices(store)
    assert (linked[2:3, 10:14] == expected[2:3, 10:14]).all()
    assert (linked[0] == expected[0]).all()  # going back starts over
    assert (linked[:] == expected).all() and linked.objects == 2
    objects = write_labels(store, tmp_path / "l.ome.zarr", link=False, tiff=tmp_path / "l.tif")
    assert objects == 4
    out = read_labels(tmp_path / "l.ome.zarr")
    assert (out == np.stack(list(link_slices(local, link=False)))).all()
    assert (tifffile.imread(tmp_path / "l.tif") == out).all()
    ImageLabel.from_zarr(zarr.open_group(tmp_path / "l.ome.zarr" / "labels" / "segany", mode="r"))


def test_linked_slices_leave_out_each_objects_faded_ends(tmp_path: Path) -> None:
    """The slice store says an object runs over slices 0-6; its signal says 2-4."""
    store = SliceStore.open_or_create(tmp_path / "s.slices.zarr", _signature(depth=7, side=32))
    local = np.zeros((7, 32, 32), dtype=np.uint32)
    local[:, 8:20, 8:20] = 1  # on every slice, as SAM outlines the glow
    local[2:5, 24:30, 24:30] = 2  # another object, on 2-4 only, equally bright
    for z in range(7):
        store.write(z, local[z])
    brightness = np.array([5.0, 20.0, 100.0, 100.0, 100.0, 20.0, 5.0])
    image = np.full((7, 32, 32), 10.0)
    image[:, 8:20, 8:20] += brightness[:, None, None]
    image[2:5, 24:30, 24:30] += 100.0
    image += np.random.default_rng(0).normal(0, 1, image.shape)
    write_labels(store, tmp_path / "t.ome.zarr", image_at=image.__getitem__)
    trimmed = read_labels(tmp_path / "t.ome.zarr")
    assert np.flatnonzero(trimmed.any(axis=(1, 2))).tolist() == [2, 3, 4]
    kept = trimmed[2:5, 24:30, 24:30]
    assert (kept > 0).all() and (trimmed[2:5, 8:20, 8:20] > 0).all()
    write_labels(store, tmp_path / "u.ome.zarr", image_at=image.__getitem__, min_signal_ratio=0)
    assert read_labels(tmp_path / "u.ome.zarr")[:, 8:20, 8:20].all()  # 0: nothing trimmed


def test_the_command_line_refuses_bad_sources_and_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["segment", str(tmp_path / "gone.tif"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-segany: error: no such source") and "gone.tif" in err
    source = write_stack(tmp_path / "stack.tif", depth=1, shape=(48, 48))
    args = ["segment", str(source), "--out", str(tmp_path / "o"), "--workers", "2"]
    assert main([*args, "--scheduler", "tcp://127.0.0.1:1"]) == 1
    assert "--workers sizes a local cluster" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- whole runs with the real model --------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> sg.SamModel:
    return sg.load_model("mobile_sam", device="cpu", progress=False)


@dataclass(frozen=True)
class Reference:
    source: Path
    out: Path
    result: BatchResult
    labels: np.ndarray


def one_process_run(source: Path, out: Path, model: sg.SamModel) -> BatchResult:
    """A run in this process with as many torch threads as each worker of a 2-worker
    LocalCluster gets: the same arithmetic, so a cluster run gives the very same labels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(local_cluster_size(2)[1])
    try:
        (result,) = segment_files([source], out, model=model, params=PARAMS, progress=False)
    finally:
        torch.set_num_threads(threads)
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, model: sg.SamModel) -> Reference:
    """The one-process run the other runs are compared with."""
    folder = tmp_path_factory.mktemp("reference")
    source = write_stack(folder / "stack.tif")
    result = one_process_run(source, folder / "out", model)
    return Reference(source, folder / "out", result, read_labels(result.labels))


def _copy_embeddings(reference_out: Path, out: Path) -> Path:
    name = "stack.embeddings-mobile_sam.zarr"
    shutil.copytree(reference_out / name, out / name)
    return out / name


@pytest.mark.slow
def test_one_process_writes_valid_labels_with_unique_ids(reference: Reference) -> None:
    result, labels = reference.result, reference.labels
    assert result.ok and result.status == "done" and result.error is None
    assert (result.slices, result.segmented, result.reused) == (3, 3, 0)
    assert result.labels == reference.out / "stack.labels.ome.zarr" and result.tiff is None
    ImageLabel.from_zarr(zarr.open_group(result.labels / "labels" / "segany", mode="r"))
    assert labels.shape == (3, 128, 128) and labels.dtype == np.uint32
    ids = np.unique(labels[labels > 0])
    assert ids.tolist() == list(range(1, result.objects + 1)) and result.objects >= 3
    assert any(len({z for z in range(3) if (labels[z] == i).any()}) > 1 for i in ids)  # 3D
    embeddings = reference.out / "stack.embeddings-mobile_sam.zarr"
    assert sg.EmbeddingStore.open(embeddings).done().all()


@pytest.mark.slow
def test_a_rerun_skips_finished_work_and_relinks_only_what_changed(
    reference: Reference, model: sg.SamModel, tmp_path: Path
) -> None:
    source, out = reference.source, tmp_path / "out"
    shutil.copytree(reference.out, out)
    (again,) = segment_files([source], out, model=model, params=PARAMS, progress=False)
    assert again.status == "skipped" and (again.segmented, again.reused) == (0, 3)
    assert (read_labels(again.labels) == reference.labels).all()
    (flat,) = segment_files(
        [source], out, model=model, params=PARAMS, link=False, tiff=True, progress=False
    )
    assert flat.status == "done" and (flat.segmented, flat.reused) == (0, 3)
    per_slice = read_labels(flat.labels)
    ids = [set(np.unique(s[s > 0]).tolist()) for s in per_slice]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])  # nothing linked through z
    assert ((per_slice > 0) == (reference.labels > 0)).all()  # the same slices, apart
    assert (tifffile.imread(flat.tiff) == per_slice).all()
    (bad,) = segment_files([source], out, model=model, points_per_side=5, progress=False)
    assert bad.status == "failed" and "points_per_side 4 (now 5)" in bad.error
    assert (read_labels(flat.labels) == per_slice).all()  # nothing was changed


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_it_stopped(
    reference: Reference, model: sg.SamModel, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _copy_embeddings(reference.out, out)
    seen: list[int] = []
    (stopped,) = segment_files(
        [reference.source],
        out,
        model=model,
        params=PARAMS,
        progress=False,
        callback=lambda done, total: seen.append(done),
        cancel=lambda: len(seen) >= 1,
    )
    assert stopped.status == "cancelled" and stopped.segmented == 1 and stopped.labels is None
    assert not (out / "stack.labels.ome.zarr").exists()
    resumed = one_process_run(reference.source, out, model)
    assert resumed.status == "done" and (resumed.segmented, resumed.reused) == (2, 1)
    assert (read_labels(resumed.labels) == reference.labels).all()


@pytest.mark.slow
def test_a_local_cluster_gives_the_one_process_result_though_a_worker_dies(
    reference: Reference, tmp_path: Path
) -> None:
    from distributed import default_client

    out = tmp_path / "out"
    embeddings = _copy_embeddings(reference.out, out)
    zarr.open_array(embeddings / "done", mode="r+")[1] = 0  # a worker embeds slice 1
    killed: list[int] = []

    def kill_a_busy_worker(done: int, total: int) -> None:
        client = default_client()
        busy = [w for w, keys in client.processing().items() if keys]
        if not killed and busy:
            pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    (run,) = segment_files(
        [reference.source],
        out,
        params=PARAMS,
        client="local",
        n_workers=2,
        progress=False,
        callback=kill_a_busy_worker,
    )
    assert killed, "no worker was busy after the first slice: nothing was tested"
    assert run.status == "done", run.error
    assert run.segmented + run.reused == 3 and run.objects == reference.result.objects
    assert (read_labels(run.labels) == reference.labels).all()


@pytest.mark.slow
def test_the_command_line_segments_a_glob_of_mixed_shapes_and_reports_a_broken_file(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    shutil.copy(reference.source, data / "stack.tif")
    for name in ("stack.embeddings-mobile_sam.zarr", "stack.slices.zarr"):
        shutil.copytree(reference.out / name, out / name)  # only the linking is left
    write_stack(data / "small.tif", depth=1, shape=(64, 96))
    (data / "broken.tif").write_bytes(b"not a TIFF at all")
    options = ["--out", str(out), "--points-per-side", "4", "--no-progress"]
    assert main(["segment", str(data / "*.tif"), *options, "--tiff"]) == 1
    captured = capsys.readouterr()
    assert "volumes 2 done, 0 already done, 1 failed" in captured.out
    assert "broken.tif" in captured.err and "stack.tif" not in captured.err
    assert "1 of 3 volume(s) failed" in captured.err and "Traceback" not in captured.err
    assert (read_labels(out / "stack.labels.ome.zarr") == reference.labels).all()
    assert (tifffile.imread(out / "stack.labels.tif") == reference.labels).all()
    assert read_labels(out / "small.labels.ome.zarr").shape == (1, 64, 96)
    again = ["segment", str(data / "*.tif"), str(data / "small.tif"), *options]
    assert main(again) == 1  # small.tif named twice is segmented once; broken stays broken
    assert "0 done, 2 already done, 1 failed" in capsys.readouterr().out


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc"
)
def test_a_local_cluster_shares_one_heap_and_leaves_this_process_environment_as_it_was() -> None:
    from napari_segany.batch.cluster import connect
    from napari_segany.device import keep_large_allocations

    def new_mappings_for_a_large_block() -> int:  # nested: dask pickles it by value
        import ctypes

        import numpy as np

        names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        before = libc.mallinfo2().hblks
        block = np.ones(100 * 2**20, dtype=np.uint8)
        mapped = libc.mallinfo2().hblks - before
        del block
        return int(mapped)

    before = dict(os.environ)
    with connect("local", n_workers=1) as where:
        assert where.client is not None
        # The workers run tasks in threads: a 100 MiB block made in one after the model's
        # allocator tuning comes from the shared heap (no new mapping), which needs
        # MALLOC_ARENA_MAX=1 from the worker process's start.
        client = where.client
        client.submit(keep_large_allocations, pure=False).result()
        assert client.submit(new_mappings_for_a_large_block, pure=False).result() == 0
    assert dict(os.environ) == before  # dask's nannies set OMP_NUM_THREADS=1 here
