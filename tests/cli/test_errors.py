"""Errors on the command line: one line in the command's words; ``--debug`` for the traceback.

Python callers read the same errors in Python words (``axes='TCZYX'``); the command line
names its own options (``--axes TCZYX``), the user's paths (not our staging folders) and
the file system's problem in words.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_segany.argument_errors import ArgumentError, Blank, Fix, Setting
from napari_segany.cli import main
from napari_segany.cli.errors import describe
from napari_segany.volume.volume import open_volume


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the command; check it failed with exactly one line on stderr, and return it."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-segany: error: "), err
    assert "Traceback" not in err
    return lines[0]


def plain_zarr(path: Path, shape: tuple[int, ...]) -> Path:
    """A zarr array without axes metadata."""
    zarr.open_array(path, mode="w", shape=shape, dtype="uint8")[:] = 7
    return path


def stack(path: Path, shape: tuple[int, ...] = (2, 32, 32), **options: object) -> Path:
    tifffile.imwrite(path, np.arange(np.prod(shape), dtype=np.uint16).reshape(shape), **options)
    return path


# -- errors about an argument: the command's options, Python's words in Python -----------


@pytest.mark.parametrize(
    ("shape", "axes"),
    [((2, 3, 4, 32, 32), ("TCZYX", "TZCYX")), ((2, 4, 32, 32), ("TZYX", "CZYX"))],
)
def test_ambiguous_axes_suggest_axes_of_the_arrays_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: tuple, axes: tuple
) -> None:
    source = plain_zarr(tmp_path / "vol.zarr", shape)
    line = one_line_error(capsys, ["embed", str(source), "--no-progress"])
    assert str(source) in line
    assert f"{len(shape)}D array of shape {shape}" in line
    assert f"use --axes {axes[0]} or --axes {axes[1]}" in line
    assert "axes=" not in line and "--debug" not in line

    with pytest.raises(ArgumentError) as raised:  # a ValueError, in Python's words
        open_volume(source)
    assert f"pass axes={axes[0]!r} or axes={axes[1]!r}" in str(raised.value)
    assert "--axes" not in str(raised.value)


def test_time_and_level_are_named_as_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = stack(tmp_path / "movie.tif", (3, 2, 32, 32), imagej=True, metadata={"axes": "TZYX"})
    line = one_line_error(capsys, ["embed", str(source), "--no-progress"])
    assert f"{source} has 3 time points" in line and line.endswith("pick one with --time 0..2")

    line = one_line_error(capsys, ["embed", str(source), "--time", "5", "--no-progress"])
    assert line.endswith(f"--time 5 is out of range: {source} has 3 along T (valid: 0..2)")

    line = one_line_error(capsys, ["embed", str(source), "--time", "0", "--level", "2"])
    assert line.endswith(f"--level 2 is out of range: {source} has 1 level (0)")

    with pytest.raises(ValueError, match=r"pick one with time=0\.\.2$"):
        open_volume(source)
    with pytest.raises(ValueError, match=r"^time=5 is out of range"):
        open_volume(source, time=5)


def test_the_given_axes_are_named_as_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = stack(tmp_path / "stack.tif", photometric="minisblack")
    line = one_line_error(capsys, ["embed", str(source), "--axes", "YX", "--no-progress"])
    assert line.endswith(
        f"--axes YX does not fit {source}: axes name 2 dimensions but the array has 3"
    )


def test_a_fix_without_an_option_is_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `evaluate` has no --axes: the problem alone, not a Python hint it cannot follow.
    image = plain_zarr(tmp_path / "vol.zarr", (2, 3, 4, 32, 32))
    labels = stack(tmp_path / "labels.tif", (4, 32, 32), photometric="minisblack")
    line = one_line_error(capsys, ["evaluate", str(image), str(labels), "--out", str(tmp_path)])
    assert line.endswith(f"{image}: cannot tell the axes of a 5D array of shape (2, 3, 4, 32, 32)")


@pytest.mark.slow  # the model is loaded before the limits are sampled
def test_a_volume_without_finite_values_gives_no_python_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "nan.zarr"
    zarr.open_array(source, mode="w", shape=(2, 16, 16), dtype="float32")[:] = np.nan
    line = one_line_error(capsys, ["embed", str(source), "--no-progress", "--device", "cpu"])
    assert line.endswith(
        f"cannot choose intensity limits for {source}: the 2 sampled slice(s) hold no finite value"
    )
    with pytest.raises(ValueError, match=r"pass limits=\(low, high\) to open_volume$"):
        _ = open_volume(source).limits


@pytest.mark.slow  # segment loads the model before it opens the sources
def test_a_failed_source_of_segment_is_said_in_the_commands_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = plain_zarr(tmp_path / "vol.zarr", (2, 3, 4, 32, 32))
    argv = ["segment", str(source), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, "--device", "cpu"]) == 1
    failed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("failed")]
    assert len(failed) == 1
    assert "cannot tell the axes of a 5D array" in failed[0]
    assert "; use --axes TCZYX or --axes TZCYX (one of T, C, Z, Y, X" in failed[0]
    assert "axes=" not in failed[0]


def test_argument_errors_survive_pickling() -> None:
    # Batch workers (dask) send errors back pickled.
    error = ArgumentError(
        Setting("time", 5),
        " is out of range",
        fix=Fix((Setting("limits", Blank("(low, high)", "LOW HIGH")),), to="open_volume"),
    )
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ArgumentError and again.fix == error.fix
    assert str(again) == "time=5 is out of range; pass limits=(low, high) to open_volume"
    options = {"time": "--time", "limits": "--limits"}
    assert again.said(options.get) == "--time 5 is out of range; use --limits LOW HIGH"


# -- files that are not what their names say ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        (
            "text.tif",
            lambda p: p.write_text("this is text"),
            "is not a TIFF file (it starts with b'this')",
        ),
        ("empty.tif", lambda p: p.write_bytes(b""), "is not a TIFF file: it is empty"),
        (
            "cut.tif",
            lambda p: p.write_bytes(b"II*\x00"),
            "is not a readable TIFF file: it ends within",
        ),
        ("folder.tif", lambda p: p.mkdir(), "is a directory but not a zarr store"),
        (
            "file.zarr",
            lambda p: p.write_text("zarr?"),
            "is a file, but a zarr store is a directory",
        ),
        (
            "broken.zarr",
            lambda p: (p.mkdir(), (p / "zarr.json").write_text("{not json")),
            "is not a readable zarr store: its metadata cannot be read (JSONDecodeError",
        ),
    ],
)
def test_a_source_that_is_not_what_it_is_named_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, make, message: str
) -> None:
    source = tmp_path / name
    make(source)
    line = one_line_error(capsys, ["embed", str(source), "--no-progress"])
    assert line.startswith(f"napari-segany: error: {str(source)!r} {message}")
    with pytest.raises(ValueError, match="^" + re.escape(f"{str(source)!r} {message}")):
        open_volume(source)


def test_a_folder_given_for_a_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = stack(tmp_path / "image.tif", photometric="minisblack")
    folder = tmp_path / "labels"
    folder.mkdir()
    line = one_line_error(capsys, ["evaluate", str(image), str(folder), "--out", str(tmp_path)])
    assert line == f"napari-segany: error: {folder}: it is a folder, not a file"


def test_labels_that_are_not_a_tiff_are_one_line_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = stack(tmp_path / "image.tif", photometric="minisblack")
    labels = tmp_path / "labels.tif"
    labels.write_text("this is text")
    line = one_line_error(capsys, ["evaluate", str(image), str(labels), "--out", str(tmp_path)])
    assert line.endswith(f"{str(labels)!r} is not a TIFF file (it starts with b'this')")


# -- file system errors: the user's path and the problem in words --------------------------


def test_outputs_that_are_files_are_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = stack(tmp_path / "stack.tif", photometric="minisblack")
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    line = one_line_error(capsys, ["segment", str(source), "--out", str(notes)])
    assert line == f"napari-segany: error: {notes} is a file, not an output folder"
    line = one_line_error(capsys, ["evaluate", str(source), str(source), "--out", str(notes)])
    assert line == f"napari-segany: error: {notes} is a file, not an output folder"
    store = notes / "stack.embeddings.zarr"
    line = one_line_error(capsys, ["embed", str(source), "--out", str(store)])
    assert line.endswith(
        f"cannot create the embedding store {store}: {notes} is a file, not a folder"
    )
    assert notes.read_text() == "keep me"


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EROFS, "read-only file system"),
        (errno.ENOSPC, "no space left on the device"),
        (errno.EACCES, "permission denied"),
        (errno.EEXIST, "it already exists"),
    ],
)
def test_an_os_error_names_the_users_path_not_our_staging_folder(
    tmp_path: Path, code: int, words: str
) -> None:
    store = tmp_path / "vol6.embeddings-mobile_sam.zarr"
    staging = tmp_path / ".vol6.embeddings-mobile_sam.zarr.creating-16295-f399a6b5"
    chunk = store / "features" / "c" / "0"
    doing = "cannot write the embedding store"
    for file in (staging, chunk, store, None):
        error = OSError(code, os.strerror(code), None if file is None else str(file))
        assert describe(error, path=store, doing=doing) == f"{doing} {store}: {words}"
    # a file of the user's elsewhere is named as it is
    elsewhere = tmp_path / "prompts.csv"
    error = OSError(code, os.strerror(code), str(elsewhere))
    assert describe(error, path=store, doing=doing) == f"{elsewhere}: {words}"


_READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1"'
"""Mounts folder $1 read-only on itself, in the namespace of the user that unshare made."""


def run_on_read_only(folder: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``ARGV`` in a process that sees ``folder`` mounted read-only."""
    script = f'{_READ_ONLY} && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(folder), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_read_only_file_system_is_said_in_words(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        pytest.skip("needs Linux's unshare to mount a folder read-only")
    if run_on_read_only(tmp_path, ["true"]).returncode != 0:
        pytest.skip("this user may not mount a folder read-only (no user namespaces)")
    source = stack(tmp_path / "stack.tif", photometric="minisblack")
    cli = [sys.executable, "-m", "napari_segany.cli"]

    done = run_on_read_only(tmp_path, [*cli, "embed", str(source), "--no-progress"])
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"napari-segany: error: cannot create the embedding store "
        f"{tmp_path / 'stack.embeddings.zarr'}: {tmp_path} is on a read-only file system\n"
    )
    out = tmp_path / "segmented"
    done = run_on_read_only(tmp_path, [*cli, "segment", str(source), "--out", str(out)])
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"napari-segany: error: cannot create the output folder {out}: "
        f"{tmp_path} is on a read-only file system\n"
    )


# -- unexpected errors, and --debug ----------------------------------------------------------


def test_an_unexpected_error_is_one_line_with_its_type_and_the_debug_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = stack(tmp_path / "stack.tif", photometric="minisblack")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tifffile broke\nover two lines")

    monkeypatch.setattr(tifffile, "TiffFile", broken)  # a library's bug, not the user's
    line = one_line_error(capsys, ["embed", str(source), "--no-progress"])
    assert line == (
        "napari-segany: error: RuntimeError: tifffile broke over two lines "
        "(run with --debug for the traceback)"
    )
    with pytest.raises(RuntimeError, match="tifffile broke"):
        main(["--debug", "embed", str(source), "--no-progress"])


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_lets_the_traceback_through(tmp_path: Path, where: str) -> None:
    source = tmp_path / "text.tif"
    source.write_text("this is text")
    argv = ["embed", str(source), "--no-progress"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    done = subprocess.run(
        [sys.executable, "-m", "napari_segany.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.rstrip().endswith(
        f"ValueError: {str(source)!r} is not a TIFF file (it starts with b'this')"
    )
