"""``napari-segany finetune``: tune a model's decoder on the labels drawn with it.

Each LABELS_STORE is a labels store (OME-Zarr), e.g. the ``labels.ome.zarr`` of an
annotation session's workspace. Its embeddings are looked for beside it, as the workspace
(``embeddings-<model>.zarr``), ``segment`` (``<name>.embeddings-<model>.zarr``) and
``embed`` (``<name>.embeddings.zarr``) leave them: a store of the model's image encoder, of
the labels' shape, of the same image when the image is known. The image is known when the
labels name it (OME-Zarr ``image-label.source``), when the workspace sits beside it
(``<image>.segany/``), or when an embedding store beside the labels was made from a file.
Without such a store the image is embedded in memory; slices with labels that a store lacks
are added to it from the image, or left out when there is no image.

Only argparse is imported with this module; torch and the engine load when the command
runs, so ``napari-segany --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import numpy as np

    from ..embeddings import EmbeddingStore
    from ..model import SamModel

__all__ = ["add_finetune", "finetune_command"]


def add_finetune(commands: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` subcommand to the ``napari-segany`` parser."""
    from .options import (
        add_device_option,
        add_model_option,
        add_progress_option,
        count_arg,
        positive_arg,
    )

    parser = commands.add_parser(
        "finetune",
        help="tune a model's prompt encoder and mask decoder on your own labels",
        description=(
            "Learn from labels you drew: tune the prompt encoder and mask decoder of --model "
            "on the objects of each LABELS_STORE (e.g. a session workspace's "
            "labels.ome.zarr), with the embeddings found beside it (the image encoder stays "
            "as it is). A share of the objects is held back; the tuned model is kept only "
            "when it beats the base model on them with one click, a box and eight "
            "corrective clicks, and is written to --out as an ordinary SAM checkpoint "
            "(replaced at each gain, so Ctrl-C keeps the best so far). Nothing is written "
            "when no gain is found. Use the checkpoint wherever a model is asked for "
            "(--model CHECKPOINT, napari_segany.load_model)."
        ),
    )
    parser.add_argument(
        "labels",
        metavar="LABELS_STORE",
        nargs="+",
        help="OME-Zarr labels (a workspace's labels.ome.zarr, or the workspace folder)",
    )
    add_model_option(
        parser, help="the model to tune: a name or checkpoint path (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        metavar="CHECKPOINT",
        required=True,
        help="the tuned checkpoint's file (replaced if it exists, only when a gain is found)",
    )
    parser.add_argument(
        "--budget",
        metavar="SECONDS",
        type=_seconds,
        help="seconds of training, validation included (default: 240 on a CPU, 120 on a GPU)",
    )
    parser.add_argument(
        "--epochs",
        metavar="N",
        type=positive_arg,
        help="stop after N passes over the training objects (default: the budget only)",
    )
    parser.add_argument(
        "--seed",
        metavar="N",
        type=count_arg,
        default=0,
        help="seeds the split, the prompts and the order (default: %(default)s)",
    )
    parser.add_argument(
        "--validation",
        metavar="SHARE",
        type=_share,
        default=0.25,
        help="share of the objects held back to score the model (default: %(default)s)",
    )
    add_device_option(parser)
    parser.add_argument(
        "--decoder-only",
        action="store_true",
        help="also write <CHECKPOINT stem>.decoder.pt, the tuned parameters alone "
        "(default: only for the ViT models)",
    )
    parser.add_argument(
        "--json", metavar="REPORT.json", help="also write the report (scores, steps) as JSON"
    )
    add_progress_option(parser)
    parser.set_defaults(handler=finetune_command)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected positive seconds, got {text}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share such as 0.25, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text}")
    return value


@dataclass
class _Input:
    """One labels store, read, and where its embeddings may come from."""

    given: str
    root: Path
    labels: np.ndarray
    stores: list[Path]
    """Embedding stores beside the labels with the labels' shape, the likeliest first."""
    source: Path | None
    """The image, when it is known and opens to the labels' shape."""
    fingerprint: str | None = None
    notes: list[str] = field(default_factory=list)


def finetune_command(args: argparse.Namespace) -> int:
    """Run ``napari-segany finetune``; the exit status: 0 done (with or without a gain),
    1 an error, 130 interrupted."""
    import numpy as np

    from ..device import choose_device
    from ..finetuning.data import split_ids
    from ..finetuning.run import FinetuneCancelled, finetune
    from ..model import CheckpointError, load_model
    from ..weights import UnknownModelError, WeightsError
    from .errors import fail
    from .options import stop_on_ctrl_c

    out = Path(args.out).expanduser()
    try:
        choose_device(args.device)  # a typo in --device fails before any work
        _check_out(out)
        inputs = [_read(path) for path in args.labels]
        # Too few objects or a bad share fail here, before a model is loaded.
        split_ids([i.labels for i in inputs], args.validation, np.random.default_rng(args.seed))
        for item in inputs:
            if not item.stores and item.source is None:
                raise ValueError(_no_embeddings(item, Path(args.model).name))
        model = load_model(args.model, device=args.device, progress=not args.no_progress)
        if model.checkpoint is not None and _same_file(out, Path(model.checkpoint)):
            raise ValueError(f"--out {out} is the base model's checkpoint: choose another file")
        pairs, how = [], []
        for item in inputs:
            pair, where = _pair(item, model, progress=not args.no_progress)
            pairs.append(pair)
            how.append(where)
    except (WeightsError, UnknownModelError, CheckpointError, OSError, ValueError) as exc:
        return fail(exc)

    for item, where in zip(inputs, how, strict=True):
        planes = int(sum(bool(plane.any()) for plane in item.labels))
        objects = int(np.unique(item.labels[item.labels > 0]).size)
        print(f"labels  {item.root}: {objects} object(s) on {planes} slice(s); {where}")
        for note in item.notes:
            print(f"napari-segany: note: {note}", file=sys.stderr)
    budget = args.budget if args.budget is not None else _default_budget(model)
    print(f"tuning  {model.name} on {model.device}, {budget:g} s at most; checkpoint {out}")

    before = _stamp(out)
    stop = threading.Event()
    with stop_on_ctrl_c(stop):
        try:
            _tuned, report = finetune(
                pairs,
                model,
                time_budget=args.budget,
                epochs=args.epochs,
                seed=args.seed,
                validation=args.validation,
                out=out,
                decoder_only=True if args.decoder_only else None,
                progress=not args.no_progress,
                cancel=stop.is_set,
            )
        except (FinetuneCancelled, KeyboardInterrupt):
            return _interrupted(out, before)
        except OSError as exc:  # a read-only or full file system
            return fail(exc, path=out, doing="cannot write the checkpoint")
        except (CheckpointError, ValueError) as exc:
            return fail(exc)

    print(report.summary())
    if report.checkpoint is not None:
        print(f"wrote   {report.checkpoint}")
        if report.decoder_file is not None:
            print(f"wrote   {report.decoder_file} (the tuned parameters alone)")
        print(f"use it with --model {report.checkpoint} (or napari_segany.load_model)")
    else:
        kept = f"; {out} is as it was" if before is not None else ""
        print(f"no gain over {model.name} on the held-back objects: nothing was written{kept}")
    if args.json:
        payload = {
            **report.to_json(),
            "model": model.name,
            "base_checkpoint": None if model.checkpoint is None else str(model.checkpoint),
            "device": str(model.device),
            "inputs": [
                {"labels": str(item.root), "embeddings": where}
                for item, where in zip(inputs, how, strict=True)
            ],
            "settings": {
                "budget": args.budget,
                "epochs": args.epochs,
                "seed": args.seed,
                "validation": args.validation,
            },
        }
        path = Path(args.json).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(payload, indent=1) + "\n")
        except OSError as exc:
            return fail(exc, path=path, doing="cannot write the report")
        print(f"wrote   {path}")
    return 0


# -- the checkpoint ---------------------------------------------------------------------


def _check_out(out: Path) -> None:
    """ValueError when the checkpoint cannot go to ``out`` (as far as can be told)."""
    from .errors import is_read_only

    if out.is_dir():
        raise ValueError(
            f"--out {out} is a folder: give the checkpoint's file, e.g. {out / 'tuned.pt'}"
        )
    parent = out.parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write the checkpoint {out}: {parent} is a file, not a folder")
    if is_read_only(parent):
        raise ValueError(
            f"cannot write the checkpoint {out}: {parent} is on a read-only file system"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the checkpoint {out}: permission denied on {parent}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _stamp(path: Path) -> tuple[int, int] | None:
    """Identifies the file at ``path`` as it is now (None when there is none)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _interrupted(out: Path, before: tuple[int, int] | None) -> int:
    now = _stamp(out)
    if now is not None and now != before:
        what = f"{out} holds the best model found before the interruption (kept)"
    elif before is not None:
        what = f"no gain was found before it: {out} is as it was"
    else:
        what = "no gain was found before it: nothing was written"
    print(f"napari-segany: interrupted: {what}", file=sys.stderr)
    return 130


def _default_budget(model: SamModel) -> float:
    from ..finetuning.run import CPU_BUDGET, GPU_BUDGET

    return GPU_BUDGET if model.device.type == "cuda" else CPU_BUDGET


# -- the labels and their embeddings ----------------------------------------------------


def _read(given: str) -> _Input:
    """Read a labels store and find, without a model, what its embeddings could be."""
    from ..labels.store import LabelsStore
    from ..workspace import LABELS

    path = Path(given).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no labels store at {given}")
    if path.is_dir() and not (path / "zarr.json").exists() and (path / LABELS).is_dir():
        path = path / LABELS  # a workspace folder given for its labels
    with LabelsStore.open(path, read_only=True) as store:  # no lock: napari may be writing
        labels = store.read()
        root, name = store.path, store.name
    shape = tuple(int(n) for n in labels.shape)
    stores, descriptions = _stores_beside(root, shape)
    source = _source(root, name, shape, descriptions)
    item = _Input(given=given, root=root, labels=labels, stores=stores, source=source)
    if source is not None:
        item.fingerprint = _fingerprint(source)
    return item


def _stores_beside(root: Path, shape: tuple[int, ...]) -> tuple[list[Path], list[str]]:
    """The embedding stores in ``root``'s folder of the labels' ``shape`` (those named like
    the labels first), and the source descriptions of every embedding store there."""
    from ..embeddings import EmbeddingStore

    stem = root.name.removesuffix(".zarr").removesuffix(".ome").removesuffix("labels")
    stem = stem.rstrip(".-_")
    named: list[Path] = []
    others: list[Path] = []
    descriptions: list[str] = []
    for path in sorted(root.parent.glob("*embeddings*.zarr")):
        if path == root or not path.is_dir():
            continue
        try:
            store = EmbeddingStore.open(path)
        except (OSError, ValueError, KeyError):
            continue  # not an embedding store
        description = store.signature.get("source", {}).get("description")
        if isinstance(description, str):
            descriptions.append(description)
        if (len(store), *store.grid.slice_shape) != shape:
            continue
        (named if path.name.startswith(stem) else others).append(path)
    return named + others, descriptions


def _source(root: Path, name: str, shape: tuple[int, ...], descriptions: list[str]) -> Path | None:
    """The image of the labels, if one is known and opens to their shape."""
    from ..volume.volume import open_volume
    from ..workspace import SUFFIX

    candidates = []
    named = _named_image(root, name)
    if named is not None:
        candidates.append(named)
    folder = root.parent
    if folder.name.endswith(SUFFIX) and len(folder.name) > len(SUFFIX):
        candidates.append(folder.with_name(folder.name[: -len(SUFFIX)]))  # <image>.segany/
    candidates += [Path(d) for d in descriptions if os.path.isabs(d)]
    for path in candidates:
        if not path.exists():
            continue
        try:
            with open_volume(path) as volume:
                if (len(volume), *volume.slice_shape) == shape:
                    return path
        except (OSError, ValueError, TypeError):
            continue
    return None


def _named_image(root: Path, name: str) -> Path | None:
    """The image an OME-Zarr label image names as its source (``image-label.source``)."""
    import zarr

    from ..ome import ome_attributes

    group_dir = root / "labels" / name
    try:
        group = zarr.open_group(zarr.storage.LocalStore(root, read_only=True), mode="r")
        attrs = group[f"labels/{name}"].attrs.asdict()
    except Exception:  # not readable as zarr: no source named
        return None
    label = ome_attributes(attrs).get("image-label")
    source = label.get("source") if isinstance(label, dict) else None
    image = source.get("image") if isinstance(source, dict) else None
    if not isinstance(image, str) or not image:
        return None
    return Path(os.path.normpath(group_dir / image))


def _fingerprint(source: Path) -> str | None:
    from ..volume.volume import open_volume

    try:
        with open_volume(source) as volume:
            return volume.fingerprint()
    except (OSError, ValueError, TypeError):
        return None


def _no_embeddings(item: _Input, model: str, others: list[str] | None = None) -> str:
    from ..workspace import embeddings_name

    folder = item.root.parent
    found = f" (only of other image encoders: {', '.join(others)})" if others else ""
    return (
        f"{item.given}: no embeddings of {model} were found beside it{found} and it names no "
        f"image to embed: open the image in napari with the Segment Anything widget (its "
        f"workspace keeps them beside the labels), or run `napari-segany embed IMAGE --model "
        f"{model} --out {folder / embeddings_name(model)}`"
    )


def _pair(item: _Input, model: SamModel, *, progress: bool) -> tuple[tuple[Any, Any], str]:
    """The ``(embeddings, labels)`` pair of one labels store, and a line saying whence."""
    from ..embeddings import EmbeddingStore
    from ..model import same_encoder

    labels = item.labels
    others = []
    for path in item.stores:
        store = EmbeddingStore.open(path)
        if not same_encoder(store.signature.get("model", {}), model.identity):
            others.append(path.name)
            continue
        if item.fingerprint is not None:
            if store.signature.get("source", {}).get("fingerprint") != item.fingerprint:
                continue  # embeddings of another image of the same shape
        done = store.done()
        missing = [z for z in range(len(labels)) if labels[z].any() and not done[z]]
        if not missing:
            return (store, labels), f"embeddings {path}"
        if item.source is not None:
            filled = _fill(store, item.source, model, missing, progress)
            if filled is not None:
                return (filled, labels), (
                    f"embeddings {path} ({len(missing)} slice(s) added from {item.source})"
                )
            return (str(item.source), labels), (
                f"embedding {item.source} in memory ({path} cannot take its missing slices)"
            )
        kept = labels.copy()
        kept[missing] = 0
        item.notes.append(
            f"{len(missing)} labelled slice(s) of {item.root} are not embedded in {path} and "
            "are left out: embed them (open the image in napari, or `napari-segany embed`) "
            "to learn from them"
        )
        return (store, kept), f"embeddings {path}"
    if item.source is not None:
        return (str(item.source), labels), (
            f"embedding {item.source} in memory (no embeddings of {model.name} beside it)"
        )
    raise ValueError(_no_embeddings(item, model.name, others))


class _Tiling(TypedDict, total=False):
    """The tiling that :func:`~napari_segany.embeddings.embed` is given, if any."""

    tile_size: int
    halo: int


def _fill(
    store: EmbeddingStore, source: Path, model: SamModel, missing: list[int], progress: bool
) -> EmbeddingStore | None:
    """``store`` reopened over its image with ``missing`` computed, or None when the
    image's embeddings cannot go into it (made with other settings; not writable)."""
    from ..embeddings import StoreMismatchError, embed
    from ..volume.volume import open_volume

    assert store.path is not None
    sig = store.signature
    try:
        low, high = (float(v) for v in sig["preprocessing"]["limits"])
        volume = open_volume(source, limits=(low, high))
    except (KeyError, TypeError, ValueError, OSError):
        return None
    grid = store.grid  # an untiled slice's grid says tile_size 0: the defaults made it
    tiling: _Tiling = {"tile_size": grid.tile_size, "halo": grid.halo} if grid.tile_size else {}
    try:
        target = embed(volume, model, store.path, compute=False, progress=False, **tiling)
        target.fill(missing, progress=progress)
    except (StoreMismatchError, OSError, ValueError):
        volume.close()
        return None
    return target
