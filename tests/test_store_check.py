"""Damaged stores: every damaged chunk is found and named, and ``check --repair`` restores
the embeddings and slices bitwise and the labels to their last intact state.

Damage is real: bytes flipped and files cut short on disk, at random places (seeded), in
real stores made by the real pipeline.
"""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import napari_segany as sg
from napari_segany import damage
from napari_segany.batch.slices import SliceStore
from napari_segany.cli import main
from napari_segany.embeddings import EmbeddingStore
from napari_segany.sample_data import nuclei_volume
from napari_segany.store_check import check_store

PARAMS = sg.AutomaticParams(points_per_side=4)


def spoil(file: Path, rng: np.random.Generator) -> str:
    """Flip one random byte of ``file`` or cut it short at a random length; say which."""
    data = bytearray(file.read_bytes())
    if rng.random() < 0.5:
        at = int(rng.integers(len(data)))
        data[at] ^= 1 << int(rng.integers(8))
        file.write_bytes(bytes(data))
        return "flipped"
    file.write_bytes(bytes(data[: int(rng.integers(len(data)))]))
    return "cut"


def arrays(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {n: np.asarray(group[n][:]) for n in names}


# -- the checksum itself ------------------------------------------------------------------


def test_a_damaged_chunk_is_named_by_store_array_and_chunk(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    array = group.create_array(
        "a", shape=(4, 8), chunks=(1, 8), dtype="uint16", compressors=damage.with_checksum()
    )
    array[:] = np.arange(32).reshape(4, 8)
    file = damage.chunk_file(array, (2, 0))
    data = bytearray(file.read_bytes())
    data[3] ^= 0x01  # one bit of the data, not of the checksum
    file.write_bytes(bytes(data))
    assert damage.read(array, 1, store="S").tolist() == list(range(8, 16))
    with pytest.raises(damage.DamagedChunkError) as caught:
        damage.read(array, slice(None), store="the store S", hint="do X")
    error = caught.value
    assert (error.store, error.array, error.chunk) == ("the store S", "a", (2, 0))
    assert str(error) == (
        "the store S: chunk 2/0 of the array 'a' is damaged (its checksum does not match its "
        "bytes); do X"
    )
    assert damage.damaged_chunks(array) == [((2, 0), "its checksum does not match its bytes")]


def test_a_chunk_cut_short_without_a_checksum_is_found_too(tmp_path: Path) -> None:
    """Arrays from before checksums: truncation is still found (a flipped raw byte is not)."""
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    array = group.create_array("a", shape=(2, 8), chunks=(1, 8), dtype="uint16", compressors=None)
    array[:] = 7
    file = damage.chunk_file(array, (1, 0))
    file.write_bytes(file.read_bytes()[:5])
    assert damage.damaged_chunks(array) == [((1, 0), "it is cut short or too long")]


# -- embedding stores ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> sg.SamModel:
    return sg.load_model("mobile_sam", device="cpu", progress=False)


@pytest.fixture(scope="module")
def clean_embeddings(tmp_path_factory: pytest.TempPathFactory, model: sg.SamModel) -> Path:
    folder = tmp_path_factory.mktemp("embeddings")
    image = nuclei_volume((8, 96, 96), seed=3)[0][:6]
    tifffile.imwrite(folder / "v.tif", image, photometric="minisblack")
    sg.embed(folder / "v.tif", model, folder / "v.zarr", progress=False)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_every_damaged_embedding_chunk_is_found_and_computed_again_bitwise(
    clean_embeddings: Path, tmp_path: Path, model: sg.SamModel, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    shutil.copy(clean_embeddings / "v.tif", tmp_path / "v.tif")
    shutil.copytree(clean_embeddings / "v.zarr", tmp_path / "v.zarr")
    store = tmp_path / "v.zarr"
    clean = arrays(store, ["features", "inputs", "done"])
    files = sorted(Path(p) for p in glob.glob(str(store / "*" / "c" / "**" / "*"), recursive=True))
    files = [f for f in files if f.is_file()]
    spoilt = rng.choice(len(files), size=4, replace=False)
    slices = set()
    for i in spoilt:
        spoil(files[i], rng)
        slices.add(int(files[i].relative_to(store).parts[2]))  # <array>/c/<z>/...

    report = check_store(store)
    assert {int(p.split(":")[0].split()[1]) for p in report.problems} == slices  # all found
    assert not report.ok and report.left == report.problems

    repaired = check_store(store, repair=True, model=model)
    assert repaired.ok, repaired.summary()
    assert len(repaired.repaired) == len(slices)
    after = arrays(store, ["features", "inputs", "done"])
    for name, values in clean.items():
        assert np.array_equal(after[name], values), name
    assert check_store(store).problems == []


@pytest.mark.slow
def test_embed_recomputes_a_slice_cut_short_and_get_one_whose_bytes_flipped(
    clean_embeddings: Path, tmp_path: Path, model: sg.SamModel
) -> None:
    """Issue 17's first finding: a truncated chunk was served as done ("12 already done")."""
    shutil.copy(clean_embeddings / "v.tif", tmp_path / "v.tif")
    shutil.copytree(clean_embeddings / "v.zarr", tmp_path / "v.zarr")
    clean = arrays(tmp_path / "v.zarr", ["features"])["features"]
    cut = tmp_path / "v.zarr" / "features" / "c" / "4" / "0" / "0" / "0" / "0"
    cut.write_bytes(cut.read_bytes()[:500_000])
    store = sg.embed(tmp_path / "v.tif", model, tmp_path / "v.zarr", progress=False)
    assert np.array_equal(arrays(tmp_path / "v.zarr", ["features"])["features"], clean)

    flipped = tmp_path / "v.zarr" / "features" / "c" / "2" / "0" / "0" / "0" / "0"
    data = bytearray(flipped.read_bytes())
    data[12345] ^= 0x80
    flipped.write_bytes(bytes(data))
    reader = EmbeddingStore.open(tmp_path / "v.zarr")  # no volume or model: cannot mend
    with pytest.raises(sg.DamagedChunkError, match=r"chunk 2/0/0/0/0 of the array 'features'"):
        reader.get(2)
    embedding = store.get(2)  # the volume and model are at hand: computed again
    assert np.array_equal(embedding.features[0].numpy().astype(np.float16), clean[2, 0])


@pytest.mark.slow
def test_check_full_finds_an_edit_outside_the_fingerprint_and_repair_embeds_it_again(
    clean_embeddings: Path, tmp_path: Path, model: sg.SamModel
) -> None:
    """Issue 17's ninth finding: a slice zeroed where the fingerprint does not look."""
    image = tifffile.imread(clean_embeddings / "v.tif")
    tifffile.imwrite(tmp_path / "v.tif", image, photometric="minisblack")
    sg.embed(tmp_path / "v.tif", model, tmp_path / "v.zarr", progress=False)
    image[1] = 0  # slices 0, 3 and 5 are the fingerprint's sample
    tifffile.imwrite(tmp_path / "v.tif", image, photometric="minisblack")
    assert check_store(tmp_path / "v.zarr").ok  # every chunk intact: only --full sees it
    report = check_store(tmp_path / "v.zarr", full=True)
    assert report.problems == ["slice 1: tile 0 of the source changed since it was embedded"]
    assert check_store(tmp_path / "v.zarr", full=True, repair=True, model=model).ok
    assert check_store(tmp_path / "v.zarr", full=True).problems == []


# -- slice stores and the labels a batch run links from them --------------------------------


@pytest.fixture(scope="module")
def clean_batch(tmp_path_factory: pytest.TempPathFactory, model: sg.SamModel) -> Path:
    folder = tmp_path_factory.mktemp("batch")
    image = nuclei_volume((8, 64, 64), seed=5)[0][1:7]
    tifffile.imwrite(folder / "v.tif", image, photometric="minisblack")
    sg.segment_files([folder / "v.tif"], folder / "out", model=model, params=PARAMS, progress=False)
    return folder


def copy_batch(clean: Path, to: Path) -> Path:
    """The batch folder copied: the source where the stores say it is, the outputs new."""
    shutil.copytree(clean / "out", to / "out")
    return to / "out"


@pytest.mark.slow
def test_damaged_slices_are_found_and_segmented_again_bitwise(
    clean_batch: Path, tmp_path: Path, model: sg.SamModel
) -> None:
    out = copy_batch(clean_batch, tmp_path)
    clean = arrays(out / "v.slices.zarr", ["labels", "done"])
    labels = sg.LabelsStore.open(out / "v.labels.ome.zarr", read_only=True).read()
    rng = np.random.default_rng(7)
    spoil(out / "v.slices.zarr" / "labels" / "c" / "3" / "0" / "0", rng)
    spoil(out / "v.slices.zarr" / "done" / "c" / "1", rng)
    found = check_store(out / "v.slices.zarr")
    assert [p.split(":")[0] for p in found.problems] == ["slice 1", "slice 3"]
    with pytest.raises(sg.DamagedChunkError, match=r"slice store .*chunk 3/0/0 of the array"):
        SliceStore.open(out / "v.slices.zarr").read(3)

    repaired = check_store(out / "v.slices.zarr", repair=True, model=model)
    assert repaired.ok, repaired.summary()
    after = arrays(out / "v.slices.zarr", ["labels", "done"])
    assert all(np.array_equal(after[n], clean[n]) for n in clean)
    assert np.array_equal(
        sg.LabelsStore.open(out / "v.labels.ome.zarr", read_only=True).read(), labels
    )


@pytest.mark.slow
def test_damaged_batch_labels_are_linked_again_from_their_slices(
    clean_batch: Path, tmp_path: Path, model: sg.SamModel
) -> None:
    out = copy_batch(clean_batch, tmp_path)
    labels = sg.LabelsStore.open(out / "v.labels.ome.zarr", read_only=True).read()
    chunks = sorted(
        glob.glob(str(out / "v.labels.ome.zarr" / "labels" / "*" / "0" / "c" / "*" / "*" / "*"))
    )
    spoil(Path(chunks[len(chunks) // 2]), np.random.default_rng(1))
    assert len(check_store(out / "v.labels.ome.zarr").problems) == 1
    repaired = check_store(out / "v.labels.ome.zarr", repair=True, model=model)
    assert repaired.ok, repaired.summary()
    assert np.array_equal(
        sg.LabelsStore.open(out / "v.labels.ome.zarr", read_only=True).read(), labels
    )


# -- annotated labels: rebuilt from the journal ----------------------------------------------


def annotate(path: Path, *, history: int = 100, image: Path | None = None) -> np.ndarray:
    """Commits on four slices, one undone, one overwriting: the labels they leave."""
    shape = (4, 64, 64)
    store = sg.LabelsStore.create(path, shape, chunks=(1, 32, 32), image=image, history=history)
    rng = np.random.default_rng(0)
    for i in range(7):
        mask = np.zeros(shape[1:], bool)
        y, x = rng.integers(0, 44, size=2)
        mask[y : y + 20, x : x + 20] = True
        store.commit(mask, z=i % 4, overlap="overwrite" if i == 5 else "keep")
    store.undo()
    labels = store.read()
    store.close()
    return labels


def write_image(path: Path) -> Path:
    """An OME-Zarr 0.5 image with two levels (labels beside it get two levels too)."""
    root = zarr.open_group(path, mode="w")
    root.create_array("0", shape=(4, 64, 64), chunks=(1, 32, 32), dtype="uint16")
    root.create_array("1", shape=(4, 32, 32), chunks=(1, 32, 32), dtype="uint16")
    axes = [{"name": a, "type": "space"} for a in "zyx"]
    datasets = [
        {"path": str(n), "coordinateTransformations": [{"type": "scale", "scale": [1, 2**n, 2**n]}]}
        for n in range(2)
    ]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    return path


@pytest.mark.parametrize("seed", range(4))
def test_every_damaged_labels_chunk_is_found_and_rebuilt_from_the_journal(
    tmp_path: Path, seed: int
) -> None:
    image = write_image(tmp_path / "image.ome.zarr")
    labels = annotate(image, image=image)
    root = image / "labels" / "segany"
    clean = {n: np.asarray(zarr.open_array(root / n, mode="r")[:]) for n in ("0", "1")}
    rng = np.random.default_rng(seed)
    files = sorted(Path(p) for p in glob.glob(str(root / "[01]" / "c" / "*" / "*" / "*")))
    spoilt = {files[i] for i in rng.choice(len(files), size=3, replace=False)}
    for file in spoilt:
        spoil(file, rng)
    report = check_store(image)
    named = {p.split(": ")[1] for p in report.problems}
    assert named == {
        f"chunk {'/'.join(f.relative_to(root).parts[2:])} of level {f.relative_to(root).parts[0]}"
        for f in spoilt
    }
    with pytest.raises(sg.DamagedChunkError, match="rebuilds it from the store's journal"):
        sg.LabelsStore.open(image, read_only=True).read()

    repaired = check_store(image, repair=True)
    assert repaired.ok, repaired.summary()
    for n, values in clean.items():
        assert np.array_equal(zarr.open_array(root / n, mode="r")[:], values), n
    with sg.LabelsStore.open(image) as store:  # and the history still works
        assert np.array_equal(store.read(), labels)
        assert store.redo() is not None and store.undo() is not None


def test_labels_older_than_the_undo_history_are_counted_as_lost(tmp_path: Path) -> None:
    annotate(tmp_path / "l.ome.zarr", history=2)  # commit 0, on slice 0, is beyond undo
    rng = np.random.default_rng(3)
    for chunk in (tmp_path / "l.ome.zarr" / "labels" / "segany" / "0" / "c" / "0").rglob("*"):
        if chunk.is_file():
            spoil(chunk, rng)
    report = check_store(tmp_path / "l.ome.zarr", repair=True)
    assert not report.ok
    assert report.left[-1].startswith("segany: ") and "could not be rebuilt" in report.left[-1]
    assert check_store(tmp_path / "l.ome.zarr").problems == []  # readable again, though


def test_an_unreadable_saved_box_is_found_and_removed(tmp_path: Path) -> None:
    annotate(tmp_path / "l.ome.zarr")
    undo = tmp_path / "l.ome.zarr" / "labels" / "segany" / "napari-segany" / "undo"
    box = sorted(undo.glob("*.npz"))[-2]
    box.write_bytes(box.read_bytes()[:100])
    report = check_store(tmp_path / "l.ome.zarr")
    assert report.problems == [f"segany: the saved box of change {int(box.stem)} cannot be read"]
    assert check_store(tmp_path / "l.ome.zarr", repair=True).ok
    assert not box.exists()


# -- the command ------------------------------------------------------------------------


def test_the_check_command_names_damage_and_exits_1_until_repaired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    annotate(tmp_path / "l.ome.zarr")
    assert main(["check", str(tmp_path / "l.ome.zarr")]) == 0
    assert "intact" in capsys.readouterr().out
    chunk = tmp_path / "l.ome.zarr" / "labels" / "segany" / "0" / "c" / "1" / "0" / "0"
    spoil(chunk, np.random.default_rng(0))
    assert main(["check", str(tmp_path / "l.ome.zarr")]) == 1
    out = capsys.readouterr().out
    assert "damaged: segany: chunk 1/0/0 of level 0" in out
    assert main(["check", "--repair", str(tmp_path / "l.ome.zarr")]) == 0
    assert "rebuilt from the journal" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "nothing.zarr")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"napari-segany: error: no such store: {str(tmp_path / 'nothing.zarr')!r}"
    )


# -- leftovers of killed runs ---------------------------------------------------------------


def test_staging_folders_of_killed_runs_are_removed_by_the_next_run(
    tmp_path: Path, model: sg.SamModel
) -> None:
    """Issue 17: a killed run's `.vol.embeddings-mobile_sam.zarr.creating-<pid>-<hex>` stayed."""
    from napari_segany.staging import _writer

    host = _writer().split("-")[0]
    dead = tmp_path / f".v.zarr.{host}-99999999-0123456789ab.partial"  # no such process
    live = tmp_path / f".v.zarr.{_writer()}-ba9876543210.partial"  # this process
    for folder in (dead, live):
        folder.mkdir()
        (folder / "zarr.json").write_text("{}")
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((2, 32, 32), np.uint16))
    sg.embed(tmp_path / "v.tif", model, tmp_path / "v.zarr", compute=False, progress=False)
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "v.tif", "v.zarr"])


def test_a_command_that_meets_a_damaged_chunk_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    annotate(tmp_path / "l.ome.zarr")
    chunk = tmp_path / "l.ome.zarr" / "labels" / "segany" / "0" / "c" / "1" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-1])
    assert main(["finetune", str(tmp_path / "l.ome.zarr"), "--out", str(tmp_path / "t.pt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "--debug" not in err
    assert "chunk 1/0/0 of the array 'labels/segany/0' is damaged" in err
    assert f"napari-segany check --repair {tmp_path / 'l.ome.zarr'}" in err
