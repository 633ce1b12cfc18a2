"""Prompt-driven batch: prompts from a CSV file or a labels store's log, through a stack."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_segany.prompt_batch import ObjectPrompt, read_prompts, segment_with_prompts
from napari_segany.segmenter import Prompt

NUCLEI = (2, 9)  # ground-truth ids of the two prompted nuclei, both on all 6 slices
Z = 3  # the prompted slice


def _write(tmp_path: Path, text: str, name: str = "prompts.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- parsing ---------------------------------------------------------------------------


def test_csv_points_and_boxes_make_one_prompt_per_object(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "# a comment\n"
        "object, z, y, x, label, y1, x1\n"
        "a,3,120,88,1,,\n"
        "\n"
        "a,3,131.5,95,0,,\n"
        "b,2,40,40,,70,75\n"
        "b,2,50,50,,,\n",
    )
    a, b = read_prompts(path)
    assert (a.object, a.z, b.object, b.z) == ("a", 3, "b", 2)
    np.testing.assert_array_equal(a.prompt.points, [[120, 88], [131.5, 95]])
    np.testing.assert_array_equal(a.prompt.labels, [1, 0])
    assert a.prompt.box is None and a.where.endswith("line 3")
    np.testing.assert_array_equal(b.prompt.box, [40, 40, 70, 75])
    np.testing.assert_array_equal(b.prompt.labels, [1])  # an empty label is positive


def test_csv_optional_columns_may_be_left_out(tmp_path: Path) -> None:
    (obj,) = read_prompts(_write(tmp_path, "z,object,x,y\n0,7,5,6\n"))
    np.testing.assert_array_equal(obj.prompt.points, [[6, 5]])
    np.testing.assert_array_equal(obj.prompt.labels, [1])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("object,z,y\n", r"line 1: bad header \(missing column\(s\) x\)"),
        ("object,z,y,x,colour\n", r"line 1: bad header \(unknown column\(s\) colour\)"),
        ("object,z,y,x\na,1,2\n", r"line 2: 3 values for 4 columns"),
        ("object,z,y,x\na,1,2,3\na,one,2,3\n", r"line 3: z must be a number, got 'one'"),
        ("object,z,y,x\na,1.5,2,3\n", r"line 2: z must be a whole number"),
        ("object,z,y,x\n\na,1,,3\n", r"line 3: y must be a number, got nothing"),
        ("object,z,y,x,label\na,1,2,3,2\n", r"line 2: label must be 1 \(positive\) or 0"),
        ("object,z,y,x\n,1,2,3\n", r"line 2: the object is empty"),
        ("object,z,y,x\na,1,2,3\na,2,2,3\n", r"line 3: object 'a' is on slice 2 here but on"),
        ("object,z,y,x,y1,x1\na,1,2,3,9,\n", r"line 2: a box needs both y1 and x1"),
        ("object,z,y,x,y1,x1\na,1,20,3,9,9\n", r"line 2: the box .* needs y1 > y"),
        ("object,z,y,x,label,y1,x1\na,1,2,3,0,9,9\n", r"line 2: a box is a positive prompt"),
        ("object,z,y,x,y1,x1\na,1,2,3,9,9\na,1,1,1,5,5\n", r"line 3: .* second box"),
        ("# nothing\nobject,z,y,x\n", r"no prompts in it"),
    ],
)
def test_csv_bad_rows_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as info:
        read_prompts(path)
    assert str(path) in str(info.value)


def test_missing_prompts_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no prompts file"):
        read_prompts(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("prompt", "z", "message"),
    [
        (Prompt(points=np.array([[5.0, 5.0]]), labels=np.array([1])), 6, r"slice 6 is outside"),
        (Prompt(points=np.array([[5.0, 50.0]]), labels=np.array([1])), 0, r"point \(5, 50\)"),
        (Prompt(points=np.array([[5.0, 5.0]]), labels=np.array([0])), 0, r"no positive prompt"),
        (Prompt(box=np.array([50.0, 50.0, 60.0, 60.0])), 0, r"the box .* is outside"),
    ],
)
def test_bad_objects_are_refused_by_name_before_writing(
    tmp_path: Path, prompt: Prompt, z: int, message: str
) -> None:
    volume = np.zeros((6, 40, 48), dtype=np.uint8)
    good = ObjectPrompt("ok", 0, Prompt(points=np.array([[5.0, 5.0]]), labels=np.array([1])))
    bad = ObjectPrompt("cell-7", z, prompt)
    with pytest.raises(ValueError, match=f"object 'cell-7'.*{message}"):
        segment_with_prompts(volume, [good, bad], tmp_path / "out.labels.ome.zarr")
    assert not (tmp_path / "out.labels.ome.zarr").exists()


# -- segmenting with the model ---------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import tifffile

    import napari_segany as sg
    from napari_segany.sample_data import nuclei_volume

    tmp = tmp_path_factory.mktemp("prompts")
    image, truth = nuclei_volume()
    image, truth = image[5:11], truth[5:11]
    source = tmp / "stack.tif"
    tifffile.imwrite(source, image)
    lines = ["object,z,y,x,label"]
    for n in NUCLEI:
        inside = truth[Z] == n
        depth = ndimage.distance_transform_edt(inside)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        lines.append(f"nucleus-{n},{Z},{y},{x},1")
    prompts = _write(tmp, "\n".join(lines) + "\n")
    model = sg.load_model("mobile_sam", device="cpu", progress=False)
    out = tmp / "seg" / "stack.labels.ome.zarr"
    result = segment_with_prompts(source, prompts, out, model=model, progress=False)
    return {
        "tmp": tmp,
        "source": source,
        "prompts": prompts,
        "truth": truth,
        "model": model,
        "result": result,
    }


def _labels(path: Path) -> np.ndarray:
    from napari_segany.labels.store import LabelsStore

    with LabelsStore.open(path, read_only=True) as store:
        return store.read()


@pytest.mark.slow
def test_objects_are_segmented_through_the_stack(run: dict) -> None:
    result, truth = run["result"], run["truth"]
    assert result.labels.name == "stack.labels.ome.zarr"
    assert result.embeddings == result.labels.parent / "stack.embeddings-mobile_sam.zarr"
    assert result.embeddings.is_dir()
    labels = _labels(result.labels)
    for n in NUCLEI:
        found = labels == result.ids[f"nucleus-{n}"]
        expected = truth == n
        iou = (found & expected).sum() / (found | expected).sum()
        assert iou > 0.7, (n, iou)  # measured 0.87 and 0.77
        assert found.any(axis=(1, 2)).sum() >= 4  # carried through z


@pytest.mark.slow
def test_the_log_replays_to_the_same_labels(run: dict) -> None:
    from napari_segany.embeddings import embed
    from napari_segany.labels.store import LabelsStore
    from napari_segany.replay import replay
    from napari_segany.segmenter import Segmenter
    from napari_segany.volume.volume import open_volume

    result, model = run["result"], run["model"]
    store = embed(open_volume(run["source"]), model, result.embeddings, compute=False)
    assert all(store.is_done(z) for z in range(6))  # computed on the way, kept
    with LabelsStore.open(result.labels, read_only=True) as stored:
        log = stored.log()
    np.testing.assert_array_equal(replay(log, Segmenter(model, store)), _labels(result.labels))


@pytest.mark.slow
def test_the_command_line_with_prompts_read_back_from_the_log(
    run: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import napari_segany.model
    from napari_segany.cli import main

    tmp, result = run["tmp"], run["result"]
    objects = read_prompts(result.labels)
    assert [o.object for o in objects] == [str(i) for i in result.ids.values()]
    assert [o.z for o in objects] == [Z, Z]

    # the model is already loaded, and its embeddings computed: reuse both
    monkeypatch.setattr(napari_segany.model, "load_model", lambda *a, **k: run["model"])
    out = tmp / "cli"
    out.mkdir()
    shutil.copytree(result.embeddings, out / result.embeddings.name)
    args = ["segment", str(run["source"]), "--out", str(out), "--prompts", str(result.labels)]
    assert main([*args, "--no-progress", "--device", "cpu"]) == 0
    assert "2 object(s) segmented from prompts" in capsys.readouterr().out
    np.testing.assert_array_equal(_labels(out / "stack.labels.ome.zarr"), _labels(result.labels))

    assert main([*args, "--no-progress"]) == 1  # the labels exist now
    assert "exists: remove it or choose another output" in capsys.readouterr().err
    other = tmp / "other.tif"
    shutil.copy(run["source"], other)
    two = ["segment", str(run["source"]), str(other), "--out", str(out)]
    assert main([*two, "--prompts", str(run["prompts"])]) == 1
    assert "exactly one SOURCE" in capsys.readouterr().err
    assert main(["segment", str(run["source"]), "--out", str(out), "--no-propagate"]) == 1
    assert "--no-propagate goes with --prompts" in capsys.readouterr().err
