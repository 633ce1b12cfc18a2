"""Prompt-driven batch: objects given by points and boxes in a file, segmented through a stack.

:func:`read_prompts` reads the prompts of each object from a CSV file (format below) or
from the annotation log of a napari-segany labels store (what the napari widget and
:func:`~napari_segany.replay.annotate` write). :func:`segment_with_prompts` segments each
object on its slice, carries it through z, and commits it with
:func:`~napari_segany.replay.annotate` into new OME-Zarr labels, so the result's log
replays (:func:`~napari_segany.replay.replay`) and can itself be read back as prompts.

CSV format: a header, then one row per point or box (blank lines and lines starting
with ``#`` are skipped)::

    object,z,y,x,label,y1,x1
    cell-1,3,120,88,1,,
    cell-1,3,131,95,0,,
    cell-2,2,40,40,,70,75

``object`` (any text) names the object, ``z`` is its slice, ``y, x`` a point in slice
pixels. ``label`` is 1 (positive, the default when empty) or 0 (negative). A row with
``y1, x1`` filled is a box from ``(y, x)`` to ``(y1, x1)`` instead of a point (at most
one box per object). Columns ``label``, ``y1`` and ``x1`` may be left out of the header.
The rows of one object form its prompt; they must all be on one slice.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from .segmenter import Prompt

if TYPE_CHECKING:
    from .model import SamModel
    from .propagate import StopRule

__all__ = ["ObjectPrompt", "PromptBatchResult", "read_prompts", "segment_with_prompts"]

REQUIRED = ("object", "z", "y", "x")
OPTIONAL = ("label", "y1", "x1")


@dataclass(frozen=True)
class ObjectPrompt:
    """The prompt of one object on one slice.

    Attributes
    ----------
    object
        The object's name in the prompts file (the id, as text, for a labels store).
    z
        The slice the prompt is on.
    prompt
        Its points, labels, box (and mask, from a labels store).
    multimask, candidate
        As recorded by :func:`~napari_segany.replay.annotate` (None: the defaults).
    where
        Where it was read, for messages: ``"file, line N"``.
    """

    object: str
    z: int
    prompt: Prompt
    multimask: bool | None = None
    candidate: int | None = None
    where: str = ""


@dataclass
class PromptBatchResult:
    """What :func:`segment_with_prompts` made.

    Attributes
    ----------
    labels
        The OME-Zarr labels store.
    embeddings
        The embedding store (None when kept in memory).
    ids
        Each object's name to its label id.
    voxels
        Each object's name to its voxel count.
    """

    labels: Path
    embeddings: Path | None
    ids: dict[str, int] = field(default_factory=dict)
    voxels: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: where, how many objects."""
        return f"{self.labels}: {len(self.ids)} object(s) segmented from prompts"


# -- reading ---------------------------------------------------------------------------


def read_prompts(path: str | os.PathLike[str], *, name: str = "segany") -> list[ObjectPrompt]:
    """The objects' prompts in a CSV file or a labels store's annotation log.

    Parameters
    ----------
    path
        A CSV file (see the module's description for its format), or a napari-segany
        labels store (OME-Zarr folder) whose log entries were made by
        :func:`~napari_segany.replay.annotate` (e.g. by the napari widget).
    name
        The label image in a labels store.

    Returns
    -------
    list of ObjectPrompt
        In file (or commit) order.

    Raises
    ------
    FileNotFoundError
        No such file or labels.
    ValueError
        A bad row or log entry (the message names the file and line, or the object),
        or no prompts at all.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no prompts file {str(path)!r}")
    objects = _read_store(path, name) if path.is_dir() else _read_csv(path)
    if not objects:
        raise ValueError(f"{path}: no prompts in it")
    return objects


def _read_store(path: Path, name: str) -> list[ObjectPrompt]:
    from .labels.store import LabelsStore
    from .replay import KIND, prompt_from_record

    with LabelsStore.open(path, name=name, read_only=True) as store:
        entries = store.log()
    objects = []
    for entry in entries:
        record = entry.get("record") or {}
        if record.get("kind") != KIND:
            raise ValueError(
                f"{path}: object {entry.get('id')} was not segmented from prompts (its log "
                f"entry is not of kind {KIND!r}), so its prompts cannot be read"
            )
        objects.append(
            ObjectPrompt(
                object=str(entry["id"]),
                z=int(record["z"]),
                prompt=prompt_from_record(record["prompt"]),
                multimask=record.get("multimask"),
                candidate=record.get("candidate"),
                where=f"{path}, object {entry['id']}",
            )
        )
    return objects


def _read_csv(path: Path) -> list[ObjectPrompt]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text (CSV) file: {exc}") from None
    rows = [
        (n, line)
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not rows:
        return []
    header_line, header_text = rows[0]
    header = [h.strip().lower() for h in next(csv.reader([header_text]))]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if missing or unknown or len(set(header)) != len(header):
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown column(s) {', '.join(unknown)}")
        if len(set(header)) != len(header):
            problems.append("repeated columns")
        raise ValueError(
            f"{path}, line {header_line}: bad header ({'; '.join(problems)}); expected "
            f"{','.join(REQUIRED + OPTIONAL)} (label, y1, x1 optional)"
        )
    groups: dict[str, dict[str, Any]] = {}
    for n, line in rows[1:]:
        values = next(csv.reader([line]))
        where = f"{path}, line {n}"
        if len(values) != len(header):
            raise ValueError(f"{where}: {len(values)} values for {len(header)} columns")
        row = {c: v.strip() for c, v in zip(header, values, strict=True)}
        obj = row["object"]
        if not obj:
            raise ValueError(f"{where}: the object is empty")
        z = _integer(row["z"], "z", where)
        y, x = _number(row["y"], "y", where), _number(row["x"], "x", where)
        label_text = row.get("label", "")
        y1_text, x1_text = row.get("y1", ""), row.get("x1", "")
        group = groups.setdefault(
            obj, {"z": z, "where": where, "points": [], "labels": [], "box": None}
        )
        if group["z"] != z:
            raise ValueError(
                f"{where}: object {obj!r} is on slice {z} here but on slice {group['z']} at "
                f"{group['where'].rsplit(', ', 1)[-1]}; give each object's prompts on one slice"
            )
        if y1_text or x1_text:
            if not (y1_text and x1_text):
                raise ValueError(f"{where}: a box needs both y1 and x1")
            if label_text not in ("", "1"):
                raise ValueError(f"{where}: a box is a positive prompt; its label must be 1")
            y1, x1 = _number(y1_text, "y1", where), _number(x1_text, "x1", where)
            if not (y1 > y and x1 > x):
                raise ValueError(
                    f"{where}: the box ({y:g}, {x:g}) to ({y1:g}, {x1:g}) needs y1 > y and x1 > x"
                )
            if group["box"] is not None:
                raise ValueError(f"{where}: object {obj!r} has a second box; give one at most")
            group["box"] = [y, x, y1, x1]
        else:
            label = 1 if label_text == "" else _integer(label_text, "label", where)
            if label not in (0, 1):
                raise ValueError(f"{where}: label must be 1 (positive) or 0 (negative)")
            group["points"].append([y, x])
            group["labels"].append(label)
    return [
        ObjectPrompt(
            object=obj,
            z=g["z"],
            prompt=Prompt(
                points=np.array(g["points"], dtype=float) if g["points"] else None,
                labels=np.array(g["labels"], dtype=np.int64) if g["labels"] else None,
                box=None if g["box"] is None else np.array(g["box"], dtype=float),
            ),
            where=g["where"],
        )
        for obj, g in groups.items()
    ]


def _number(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        shown = repr(text) if text else "nothing"
        raise ValueError(f"{where}: {column} must be a number, got {shown}")
    return value


def _integer(text: str, column: str, where: str) -> int:
    value = _number(text, column, where)
    if value != int(value):
        raise ValueError(f"{where}: {column} must be a whole number, got {text!r}")
    return int(value)


# -- segmenting ------------------------------------------------------------------------


def segment_with_prompts(
    source: Any,
    prompts: str | os.PathLike[str] | list[ObjectPrompt],
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | SamModel = "mobile_sam",
    propagate: bool = True,
    stop: StopRule | None = None,
    projection: str = "mask",
    embeddings: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    recompute: bool = False,
    device: str = "auto",
    axes: str | None = None,
    level: int = 0,
    channel: int | None = None,
    time: int | None = None,
    progress: bool = True,
) -> PromptBatchResult:
    """Segment the objects given by prompts into new OME-Zarr labels, carried through z.

    Parameters
    ----------
    source
        The volume: a path (TIFF, zarr, OME-Zarr), an array or a
        :class:`~napari_segany.Volume`.
    prompts
        A prompts file or labels store (see :func:`read_prompts`), or its objects.
    out
        The labels store to create (e.g. ``stack.labels.ome.zarr``).
    model
        A model name, a checkpoint path or a loaded :class:`~napari_segany.SamModel`.
    propagate
        Carry each object through z from its slice (both ways); False: only its slice.
    stop, projection
        How propagation goes on and ends (see :meth:`~napari_segany.Segmenter.propagate`).
    embeddings
        The embedding store; default beside ``out``: ``<name>.embeddings-<model>.zarr``.
        Reused when it exists (resumable); only the slices needed are computed.
    overwrite
        Replace labels already at ``out`` (only a labels store is ever replaced).
    recompute
        Replace an embedding store made with another model or source.
    device, axes, level, channel, time
        As for :func:`~napari_segany.load_model` and :func:`~napari_segany.open_volume`.
    progress
        Show progress bars.

    Returns
    -------
    PromptBatchResult
        The labels' path and each object's id. The objects are committed in order with
        :func:`~napari_segany.replay.annotate` (``overlap="keep"``): the store's log
        replays to the same labels and reads back as prompts.

    Raises
    ------
    ValueError
        A bad prompts file, or an object off the volume or without a positive prompt
        (named; nothing is written).
    FileExistsError
        ``out`` exists (and ``overwrite`` is False, or it is not a labels store).
    """
    from tqdm.auto import tqdm

    from .embeddings import embed
    from .labels.store import LabelsStore
    from .model import as_model
    from .naming import embeddings_name, output_name
    from .replay import annotate
    from .segmenter import Segmenter
    from .volume.volume import Volume, open_volume

    objects = read_prompts(prompts) if isinstance(prompts, str | os.PathLike) else list(prompts)
    if not objects:
        raise ValueError("no prompts given")
    volume = source if isinstance(source, Volume) else None
    if volume is None:
        volume = open_volume(source, axes=axes, level=level, channel=channel, time=time)
    depth, height, width = volume.shape
    shape = (int(depth), int(height), int(width))
    for obj in objects:
        _check_object(obj, shape)
    out = Path(out).expanduser().absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{str(out)!r} exists: remove it or choose another output (labels are only "
            "replaced when asked)"
        )
    loaded = as_model(model, device=device, progress=progress)
    if embeddings is None:
        embeddings = out.parent / embeddings_name(output_name(out), loaded.name)
    embeddings = Path(embeddings).expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    store = embed(volume, loaded, embeddings, compute=False, recompute=recompute, progress=False)
    segmenter = Segmenter(loaded, store)
    options: dict[str, object] | None = None
    if propagate:
        options = {"direction": "both", "projection": projection}
        if stop is not None:
            options["stop"] = stop
    result = PromptBatchResult(labels=out, embeddings=embeddings)
    with LabelsStore.create(out, shape, overwrite=overwrite) as labels:
        bar = tqdm(objects, desc="objects from prompts", unit="object", disable=not progress)
        for obj in bar:
            try:
                label_id = annotate(
                    labels,
                    segmenter,
                    obj.z,
                    obj.prompt,
                    multimask=obj.multimask,
                    candidate=obj.candidate,
                    propagate=options,
                )
            except ValueError as exc:
                raise ValueError(f"object {obj.object!r} ({obj.where}): {exc}") from exc
            result.ids[obj.object] = label_id
            result.voxels[obj.object] = int(labels.log()[-1]["voxels"])
    return result


def _check_object(obj: ObjectPrompt, shape: tuple[int, int, int]) -> None:
    """Refuse an object off the volume or without a positive prompt, naming it."""
    depth, h, w = shape
    where = f" ({obj.where})" if obj.where else ""

    def fail(problem: str) -> NoReturn:
        raise ValueError(f"object {obj.object!r}{where}: {problem}")

    if not 0 <= obj.z < depth:
        fail(f"slice {obj.z} is outside the volume's {depth} slices (0 to {depth - 1})")
    p = obj.prompt
    positive = False
    if p.points is not None and len(p.points):
        points = np.asarray(p.points, dtype=float).reshape(-1, 2)
        labels = np.asarray(p.labels).reshape(-1) if p.labels is not None else None
        if labels is None or len(labels) != len(points):
            fail("each point needs a label")
        outside = (points < 0).any(axis=1) | (points[:, 0] >= h) | (points[:, 1] >= w)
        if outside.any():
            y, x = points[outside][0]
            fail(f"the point ({y:g}, {x:g}) (y, x) is outside the slice of {h} x {w} pixels")
        positive = bool((labels == 1).any())
    if p.box is not None:
        y0, x0, y1, x1 = np.asarray(p.box, dtype=float).reshape(4)
        if min(y1, h) - max(y0, 0) < 1 or min(x1, w) - max(x0, 0) < 1:
            fail(f"the box ({y0:g}, {x0:g}) to ({y1:g}, {x1:g}) is outside the slice of {h} x {w}")
        positive = True
    if isinstance(p.mask, np.ndarray) and p.mask.dtype == bool:
        if p.mask.shape != (h, w):
            fail(f"its mask has shape {p.mask.shape}, the slice is {(h, w)}")
        positive = positive or bool(p.mask.any())
    if not positive:
        fail("no positive prompt: give a point with label 1 or a box")
