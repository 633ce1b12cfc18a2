"""The Jupyter quickstart (docs/notebooks/quickstart.ipynb) runs from top to bottom.

The notebook is executed by nbclient in a real kernel (ipykernel's ``python3``), with the
real default model, in a temporary folder: CI runs it so that it never rots. Its napari
cell runs where napari's canvas can (pytest-xvfb's display) and is skipped otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_segany.labels.store import LabelsStore
from napari_segany.sample_data import nuclei_volume

from .conftest import _display_problem

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")  # the kernel; its "python3" spec needs no registration

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "quickstart.ipynb"
CELL_TIMEOUT_S = 600


def _tagged(nb, tag: str):
    cells = [cell for cell in nb.cells if tag in cell.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _stdout(cell) -> str:
    return "".join(
        out.text
        for out in cell.outputs
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )


def _images(nb) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


def test_committed_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code"
    for cell in code:
        assert cell.outputs == [], "commit the notebook with its outputs cleared"
        assert cell.execution_count is None
    _tagged(nb, "summary")
    # The napari cell switches the kernel to Qt's event loop; a cell sent right after
    # that switch by nbclient can stall (ipykernel's edge-triggered socket race).
    assert nb.cells[-1] is _tagged(nb, "napari")


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    napari_here = _display_problem() is None
    # The kernel inherits this environment: its temporary working folder lands in
    # tmp_path, figures render inline, and napari opens only where a display can host it.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("NAPARI_SEGANY_NOTEBOOK_NAPARI", "1" if napari_here else "0")
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(cwd)}},
        # The kernel's one warning (its sockets are plain TCP on localhost) is noise here.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, on any error

    summary = json.loads(_stdout(_tagged(nb, "summary")))
    assert summary["volume"] == [16, 256, 256]
    assert summary["embedded_slices"] == 16
    assert summary["click"]["score"] > 0.9
    first, last = summary["nucleus_slices"]
    assert first < summary["click"]["z"] < last

    # Automatic segmentation finds about as many nuclei as the sample has on those slices.
    _, truth = nuclei_volume()
    z0, z1 = summary["automatic_slices"]
    expected = len(np.unique(truth[z0 : z1 + 1])) - 1
    printed = "\n".join(_stdout(cell) for cell in nb.cells if cell.cell_type == "code")
    assert f"objects found: {summary['objects_found']}" in printed
    assert 0.7 * expected <= summary["objects_found"] <= 1.3 * expected

    # Everything was written into the notebook's temporary folder, nothing elsewhere.
    labels_path = Path(summary["labels"])
    assert labels_path.parent.parent == tmp_path
    assert list(cwd.iterdir()) == []
    with LabelsStore.open(labels_path, read_only=True) as labels:
        log = labels.log()
        assert len(log) == 1 + summary["objects_found"]
        clicked = labels.read(summary["click"]["z"])
    y, x = summary["click"]["yx"]
    mine = clicked == clicked[y, x]
    theirs = truth[summary["click"]["z"]] == truth[summary["click"]["z"], y, x]
    assert clicked[y, x] == log[0]["id"]
    assert np.logical_and(mine, theirs).sum() / np.logical_or(mine, theirs).sum() > 0.8

    # The matplotlib figures are in the outputs; napari ran, and showed its screenshot,
    # exactly where a display could host it.
    napari_cell = _tagged(nb, "napari")
    assert nb.cells[-1] is napari_cell, "napari must stay last: see the notebook's note"
    screenshot = any("image/png" in out.get("data", {}) for out in napari_cell.outputs)
    assert screenshot is napari_here
    assert ("napari skipped" in _stdout(napari_cell)) is not napari_here
    assert _images(nb) == 4 + napari_here
