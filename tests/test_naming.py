"""Every naming rule in one place: what the batch run, embed and the prompt batch call things."""

from __future__ import annotations

from pathlib import Path

from napari_segany.batch.files import Outputs
from napari_segany.cli.embed import default_store_path
from napari_segany.naming import embeddings_name, model_tag, output_name, source_name


def test_sources_lose_their_image_suffix_whoever_names_them(tmp_path: Path) -> None:
    for file, name in [
        ("stack.tif", "stack"),
        ("stack.OME.TIF", "stack"),
        ("cells.ome.zarr", "cells"),
        ("cells.zarr", "cells"),
        ("big.btf", "big"),
        ("notes.txt", "notes.txt"),
        (".tif", ".tif"),
    ]:
        assert source_name(tmp_path / file) == name, file
        # embed's default store and a batch run's outputs follow the same rule (.btf too)
        assert default_store_path(tmp_path / file) == tmp_path / f"{name}.embeddings.zarr"
        outputs = Outputs.of(tmp_path / file, tmp_path / "out", "mobile_sam")
        assert outputs.labels.name == f"{name}.labels.ome.zarr"
        assert outputs.embeddings.name == f"{name}.embeddings-mobile_sam.zarr"
    assert source_name(str(tmp_path / "cells.ome.zarr") + "/") == "cells"  # a folder with a /


def test_models_and_outputs_are_named_for_files() -> None:
    assert model_tag("mobile_sam") == "mobile_sam"
    assert model_tag("/models/my sam.pth") == "my_sam"
    assert embeddings_name("cells", "tuned.pt") == "cells.embeddings-tuned.zarr"
    assert output_name("run/cells.labels.ome.zarr") == "cells"
    assert output_name("cells.ome.zarr") == "cells"
    assert output_name("labels") == "labels"
