"""napari-segany: Segment Anything for large microscopy volumes.

The public API is imported lazily so that ``import napari_segany`` (done by napari when it
reads the plugin manifest) stays cheap; torch loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "list_models": "weights",
    "fetch": "weights",
    "load_model": "model",
    "SamModel": "model",
    "ImageEmbedding": "model",
    "CheckpointError": "model",
    "UnknownModelError": "weights",
    "WeightsError": "weights",
    "choose_device": "device",
    "open_volume": "volume",
    "LabelsStore": "labels",
    "StoreLockedError": "labels",
    "Segmenter": "segmenter",
    "Prediction": "segmenter",
    "Prompt": "segmenter",
    "Volume": "volume",
    "VolumeOptions": "volume",
    "embed": "embeddings",
    "EmbeddingStore": "embeddings",
    "StoreMismatchError": "embeddings",
    "NotEmbeddedError": "embeddings",
    "segment_automatic": "automatic",
    "segment_slice": "automatic",
    "link_slices": "automatic",
    "SliceLinker": "automatic",
    "AutomaticParams": "automatic",
    "learn_params": "automatic",
    "segment_files": "batch",
    "BatchResult": "batch",
    "read_prompts": "prompt_batch",
    "segment_with_prompts": "prompt_batch",
    "evaluate_interactive": "evaluate",
    "evaluate_in_3d": "evaluate",
    "PropagationReport": "evaluate",
    "InteractiveReport": "evaluate",
    "StopRule": "propagate",
    "finetune": "finetuning",
    "FinetuneReport": "finetuning",
    "FinetuneCancelled": "finetuning",
    "PropagationCancelled": "propagate",
    "check_store": "store_check",
    "CheckReport": "store_check",
    "DamagedChunkError": "damage",
}

__all__ = [
    "AutomaticParams",
    "BatchResult",
    "CheckReport",
    "CheckpointError",
    "DamagedChunkError",
    "EmbeddingStore",
    "FinetuneCancelled",
    "FinetuneReport",
    "ImageEmbedding",
    "InteractiveReport",
    "LabelsStore",
    "NotEmbeddedError",
    "Prediction",
    "Prompt",
    "PropagationCancelled",
    "PropagationReport",
    "SamModel",
    "Segmenter",
    "SliceLinker",
    "StopRule",
    "StoreLockedError",
    "StoreMismatchError",
    "UnknownModelError",
    "Volume",
    "VolumeOptions",
    "WeightsError",
    "__version__",
    "check_store",
    "choose_device",
    "embed",
    "evaluate_in_3d",
    "evaluate_interactive",
    "fetch",
    "finetune",
    "learn_params",
    "link_slices",
    "list_models",
    "load_model",
    "open_volume",
    "read_prompts",
    "segment_automatic",
    "segment_files",
    "segment_slice",
    "segment_with_prompts",
]

if TYPE_CHECKING:
    from .automatic.learn import learn_params
    from .automatic.segment import (
        AutomaticParams,
        SliceLinker,
        link_slices,
        segment_automatic,
        segment_slice,
    )
    from .batch.segment import BatchResult, segment_files
    from .damage import DamagedChunkError
    from .device import choose_device
    from .embeddings import EmbeddingStore, NotEmbeddedError, StoreMismatchError, embed
    from .evaluate.runs import (
        InteractiveReport,
        PropagationReport,
        evaluate_in_3d,
        evaluate_interactive,
    )
    from .finetuning.run import FinetuneCancelled, FinetuneReport, finetune
    from .labels.store import LabelsStore, StoreLockedError
    from .model import CheckpointError, ImageEmbedding, SamModel, load_model
    from .prompt_batch import read_prompts, segment_with_prompts
    from .propagate import PropagationCancelled, StopRule
    from .segmenter import Prediction, Prompt, Segmenter
    from .store_check import CheckReport, check_store
    from .volume.options import VolumeOptions
    from .volume.volume import Volume, open_volume
    from .weights import UnknownModelError, WeightsError, fetch, list_models


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_segany' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
