"""The ``napari-segany`` command line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from napari_segany import __version__, weights
from napari_segany.cli import main


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(path))
    return path


def test_models_lists_every_model_and_marks_the_default(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache.mkdir()
    (cache / "mobile_sam.pt").write_bytes(b"placeholder")  # cached, whatever its state

    assert main(["models"]) == 0

    out = capsys.readouterr().out
    lines = {
        line.split()[1] if line.startswith("*") else line.split()[0]: line
        for line in out.splitlines()
        if line.strip()
    }
    for name in weights.list_models():
        assert name in lines
    assert lines["mobile_sam"].startswith("*")
    assert lines["mobile_sam"].endswith(f"yes  {cache / 'mobile_sam.pt'}")
    assert lines["vit_h"].endswith("no")
    assert "2.56 GB" in lines["vit_h"]
    assert str(cache) in out


def test_fetch_of_an_unknown_model_fails_with_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["fetch", "vit_x", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown model 'vit_x'" in captured.err
    assert "mobile_sam" in captured.err
    assert "Traceback" not in captured.err


def test_doctor_reports_the_setup_and_the_cache(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache.mkdir()
    (cache / "mobile_sam.pt").write_bytes(b"not the real weights")
    (cache / "my_finetuned.pth").write_bytes(b"")

    assert main(["doctor"]) == 0

    out = capsys.readouterr().out
    for key in ("python", "torch", "device (auto)", "display", "qt", "napari"):
        assert f"\n{key} " in out
    assert f"cache          {cache} (from {weights.CACHE_ENV})" in out
    assert "mobile_sam: bad" in out
    assert "vit_b: not downloaded" in out
    assert f"(not in the registry) {cache / 'my_finetuned.pth'}" in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "usage: napari-segany" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"napari-segany {__version__}"


def test_demo_with_a_bad_device_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--device", "tpu9", "--out", "unused"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-segany: error:")
    assert "Traceback" not in err


def test_the_installed_console_script_answers_help() -> None:
    script = Path(sys.executable).with_name("napari-segany")
    found = str(script) if script.exists() else shutil.which("napari-segany")
    assert found, "the napari-segany script is not installed: pip install -e ."
    result = subprocess.run(
        [found, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for command in ("models", "fetch", "doctor", "demo"):
        assert command in result.stdout


@pytest.mark.slow
def test_fetch_of_the_default_model_prints_its_path(capsys: pytest.CaptureFixture[str]) -> None:
    # The real cache: the 40 MB file is shared with the other slow tests.
    assert main(["fetch", "mobile_sam", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(weights.cache_dir() / "mobile_sam.pt")
