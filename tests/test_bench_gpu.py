"""The GPU benchmark's dry run: the whole script on the CPU at toy sizes, so that a short GPU
session is never spent finding out that the script breaks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SECTIONS = {"machine", "settings", "weights", "flops", "encoder", "embed", "agreement"}


@pytest.mark.slow
def test_dry_run_fills_every_section_and_counts_encoder_flops(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    script = REPO / "benchmarks" / "bench_gpu.py"
    command = [sys.executable, str(script), "--dry", "--out", str(out), "--workdir", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    results = json.loads(out.read_text())
    assert SECTIONS | {"automatic", "errors"} <= set(results)
    assert results["errors"] == []
    flops = {name: results["flops"][name]["per_image"] for name in ("mobile_sam", "vit_b", "vit_h")}
    assert all(n > 0 for n in flops.values())
    assert flops["vit_h"] > flops["vit_b"] > flops["mobile_sam"]
    # SAM's ViT-B at 1024 x 1024 is about 487 GMACs: attention is counted, not left out.
    assert 0.9e12 < flops["vit_b"] < 1.1e12

    encoder = results["encoder"]
    assert {(r["model"], r["precision"], r["batch"]) for r in encoder} == {
        ("mobile_sam", "bf16", 1),
        ("mobile_sam", "fp32", 1),
    }
    assert all(r["status"] == "ok" and r["images_per_second"] > 0 for r in encoder)
    embed = results["embed"]["mobile_sam"]
    stages = embed["stages"]
    # the engine's path: uint8 pixels packed on the CPU, normalised on the device
    assert list(stages["seconds"]) == [
        *("read", "resize", "pack"),
        *("to_device", "normalise", "encode", "to_host", "write"),
    ]
    assert stages["prepare_seconds"] > 0 and stages["predicted_slices_per_second"] > 0
    assert [run["slices_per_second"] > 0 for run in embed["runs"]] == [True]
    assert 0.0 <= results["agreement"]["mobile_sam"]["iou_mean"] <= 1.0
    assert results["automatic"]["seconds_per_slice"]["with embedding"] > 0
