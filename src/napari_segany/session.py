"""One image being annotated: the engine behind the napari widget, free of Qt.

A :class:`Session` ties together the image (a :class:`~napari_segany.Volume` made from a
napari layer's data), the model, the embedding store and the labels store of the image's
workspace (:mod:`napari_segany.workspace`). It turns the prompts the user placed on a
slice into a preview of objects (:meth:`Session.preview`), commits the preview as new
objects with a replayable log entry each, undoes and redoes commits, and carries an object
through z. The widget runs these calls in worker threads; the calls that write take a
lock, so a commit from the GUI and a propagation in a worker never interleave.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .embeddings import EmbeddingStore, StoreMismatchError, embed
from .labels.lock import StoreLockedError
from .labels.store import LabelsStore
from .model import SamModel
from .propagate import StopRule
from .replay import annotation_record
from .segmenter import Prediction, Prompt, Segmenter
from .volume.volume import Volume, open_volume
from .workspace import LABELS, embeddings_name, workspace_for

if TYPE_CHECKING:
    from .automatic.params import AutomaticParams
    from .finetuning.run import FinetuneReport

__all__ = [
    "Preview",
    "Session",
    "group_prompts",
    "volume_from_layer",
]


def volume_from_layer(data: Any, *, rgb: bool = False, multiscale: bool = False) -> Volume:
    """A volume over a napari image layer's data (lazy for dask, zarr and pyramids).

    Parameters
    ----------
    data
        The layer's ``data``: ``(Y, X)``, ``(Z, Y, X)``, RGB ``(Y, X, 3)`` or
        ``(Z, Y, X, 3)``; a list of such arrays for a multiscale layer (the full
        resolution is segmented).
    rgb, multiscale
        The layer's flags.

    Raises
    ------
    ValueError
        Data with more dimensions than a volume (time series or channels not split).
    """
    levels = list(data) if multiscale else [data]
    ndim = len(levels[0].shape) - (1 if rgb else 0)
    if ndim not in (2, 3):
        kind = "RGB " if rgb else ""
        raise ValueError(
            f"the {kind}image has {ndim} spatial/time dimensions; Segment Anything works on "
            "2D images and 3D (Z, Y, X) volumes: split channels or pick one time point first"
        )
    axes = ("ZYX" if ndim == 3 else "YX") + ("C" if rgb else "")
    return open_volume(levels if multiscale else data, axes=axes)


@dataclass
class Preview:
    """The objects the current prompts give on one slice.

    Attributes
    ----------
    z
        The slice.
    prompts
        One per object.
    predictions
        One per object, the chosen candidate first in line.
    multimask, refine
        How they were decoded (logged with each committed object, for replays).
    """

    z: int
    prompts: list[Prompt]
    predictions: list[Prediction]
    multimask: list[bool | None] = field(default_factory=list)
    refine: bool = False
    _labels: np.ndarray | None = field(default=None, repr=False, compare=False)

    def labels(self) -> np.ndarray:
        """``(Y, X)`` uint8: object ``i`` as ``i + 1`` (earlier objects win overlaps).

        Made on the first call (the masks are upscaled then) and kept: a worker thread
        can make it so that the GUI thread only shows it. Do not modify the result.
        """
        if self._labels is None:
            shape = self.predictions[0].slice_shape if self.predictions else (0, 0)
            out = np.zeros(shape, dtype=np.uint8)
            for i, pred in enumerate(self.predictions):
                out[pred.mask & (out == 0)] = min(i + 1, 255)
            self._labels = out
        return self._labels

    def cycle(self) -> Preview:
        """The same objects with every object's next candidate mask."""
        cycled = [p.cycle() for p in self.predictions]
        return Preview(self.z, self.prompts, cycled, self.multimask, self.refine)


def group_prompts(points: np.ndarray, signs: np.ndarray, boxes: np.ndarray) -> list[Prompt]:
    """Prompts per object from the points and boxes placed on one slice.

    Without boxes, all points describe one object. With boxes, each box is an object and
    takes the points inside it (the smallest box holding a point gets it); points outside
    every box form one more object when one of them is positive.

    Parameters
    ----------
    points
        ``(N, 2)`` ``(y, x)``.
    signs
        ``(N,)`` booleans: True positive, False negative.
    boxes
        ``(M, 4)`` ``(y0, x0, y1, x1)``.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    signs = np.asarray(signs, dtype=bool).reshape(-1)
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    owner = np.full(len(points), -1)
    if len(boxes):
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for i, (y, x) in enumerate(points):
            inside = (
                (boxes[:, 0] <= y) & (y <= boxes[:, 2]) & (boxes[:, 1] <= x) & (x <= boxes[:, 3])
            )
            if inside.any():
                owner[i] = int(np.flatnonzero(inside)[np.argmin(areas[inside])])
    prompts = []
    for j, box in enumerate(boxes):
        mine = owner == j
        if mine.any():
            prompts.append(Prompt(points[mine], signs[mine].astype(np.int64), box))
        else:
            prompts.append(Prompt(box=box))
    loose = owner == -1
    if loose.any() and signs[loose].any():
        prompts.append(Prompt(points[loose], signs[loose].astype(np.int64)))
    return prompts


def _store_of_encoder(folder: Path, model: SamModel) -> Path | None:
    """An embedding store in the workspace made by ``model``'s image encoder, e.g. its base
    model's for a tuned model, when the model has no store of its own name there."""
    from .model import same_encoder

    if (folder / embeddings_name(model.name) / "zarr.json").exists():
        return None
    for path in sorted(folder.glob("embeddings-*.zarr")):
        try:
            stored = EmbeddingStore.open(path).signature.get("model", {})
        except (OSError, ValueError, KeyError):
            continue
        if stored.get("encoder_sha256") and same_encoder(stored, model.identity):
            return path
    return None


class Session:
    """An image, its model, embeddings and labels; see the module docstring.

    Make one with :meth:`open`.

    Attributes
    ----------
    volume, model
        The image and the model.
    workspace
        The folder holding ``embeddings-<model>.zarr`` and ``labels.ome.zarr``.
    store
        The embedding store (filled on demand).
    labels
        The labels store; its level-0 array backs the widget's Labels layer.
    segmenter
        Prompts to masks on this image.
    """

    def __init__(
        self,
        volume: Volume,
        model: SamModel,
        workspace: Path,
        store: EmbeddingStore,
        labels: LabelsStore,
    ) -> None:
        self.volume, self.model, self.workspace = volume, model, workspace
        self.store, self.labels = store, labels
        self.segmenter = Segmenter(model, store)
        self._write_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        volume: Volume,
        model: SamModel,
        *,
        source: str | Path | None = None,
        workspace: str | Path | None = None,
    ) -> Session:
        """Open (or start) the session of an image.

        Parameters
        ----------
        volume, model
            The image and the model.
        source
            The image's file, if it has one: the workspace goes beside it.
        workspace
            A workspace folder of your choosing instead.

        Raises
        ------
        ValueError
            Labels in the workspace whose shape does not match the image (they are left
            as they are).

        When another process is writing the workspace's labels, they are opened read-only
        (:attr:`read_only`): they can be looked at, and commits are refused with a message.
        """
        folder = Path(workspace) if workspace else workspace_for(source, volume.fingerprint())
        folder.mkdir(parents=True, exist_ok=True)
        path = _store_of_encoder(folder, model) or folder / embeddings_name(model.name)
        try:
            store = embed(volume, model, path, compute=False, progress=False)
        except StoreMismatchError:  # the image changed since: its embeddings are stale
            store = embed(volume, model, path, compute=False, recompute=True, progress=False)
        labels_path = folder / LABELS
        if (labels_path / "zarr.json").exists():
            try:
                labels = LabelsStore.open(labels_path)
            except StoreLockedError:  # another process writes them: look, do not touch
                labels = LabelsStore.open(labels_path, read_only=True)
            if labels.shape != volume.shape[:3]:
                shape = labels.shape
                labels.close()
                raise ValueError(
                    f"the labels in {labels_path} are {shape} but the image is "
                    f"{volume.shape[:3]}: move them away to start afresh (they were kept)"
                )
        else:
            labels = LabelsStore.create(labels_path, volume.shape[:3])
        return cls(volume, model, folder, store, labels)

    @property
    def read_only(self) -> bool:
        """Whether the labels can only be looked at (another process writes them)."""
        return self.labels.read_only

    def close(self) -> None:
        """Release the labels store (and its writer lock)."""
        self.labels.close()

    def use_model(self, model: SamModel) -> None:
        """Decode with ``model`` from now on, e.g. one tuned by :func:`napari_segany.finetune`.

        The embeddings are kept: a tuned decoder shares its base's image encoder.

        Raises
        ------
        ValueError
            ``model`` has another image encoder than the one the store was computed with.
        """
        refine = self.segmenter.refine
        self.segmenter = Segmenter(model, self.store, refine=refine)
        self.model = model

    # -- embeddings ------------------------------------------------------------------------

    def is_embedded(self, z: int) -> bool:
        """Whether slice ``z`` can be decoded without running the encoder."""
        return self.store.is_done(z)

    def embed_slice(self, z: int) -> None:
        """Compute slice ``z``'s embedding if it is missing (runs the encoder)."""
        self.store.fill([z], progress=False)

    # -- interactive segmentation ----------------------------------------------------------

    def preview(
        self,
        z: int,
        points: np.ndarray,
        signs: np.ndarray,
        boxes: np.ndarray,
        multimask: bool | None = None,
    ) -> Preview | None:
        """The objects the prompts on slice ``z`` give, or None when there are none.

        Raises
        ------
        napari_segany.NotEmbeddedError
            The slice is not embedded yet (this call never runs the encoder).
        ValueError
            Prompts outside the slice or boxes without area.
        """
        prompts = group_prompts(points, signs, boxes)
        if not prompts:
            return None
        if not self.store.is_done(z):
            from .embeddings import NotEmbeddedError

            raise NotEmbeddedError(f"slice {z} is not embedded yet")
        refine = self.segmenter.refine  # once: the setting may change while this runs
        predictions = self.segmenter.predict_many(z, prompts, multimask=multimask, refine=refine)
        return Preview(z, prompts, predictions, [multimask] * len(prompts), refine)

    def commit(self, preview: Preview, *, overlap: str = "keep") -> list[int]:
        """Add the preview's objects to the labels; their ids, in order.

        Each object's log entry holds its prompts and chosen candidate, so
        :func:`napari_segany.replay.replay` reproduces it. All objects or none: when one
        cannot be committed (e.g. it lies wholly under earlier labels), those committed
        before it are undone and the error is raised.
        """
        ids: list[int] = []
        with self._write_lock:
            try:
                for prompt, pred, many in zip(
                    preview.prompts, preview.predictions, preview.multimask, strict=True
                ):
                    record = annotation_record(
                        self.model,
                        preview.z,
                        prompt,
                        multimask=many,
                        candidate=pred.index,
                        refine=preview.refine,
                    )
                    ids.append(
                        self.labels.commit(pred.mask, z=preview.z, overlap=overlap, record=record)
                    )
            except Exception:
                for _ in ids:  # all of the preview or nothing
                    self.labels.undo()
                raise
        return ids

    def undo(self) -> int | None:
        """Undo the last commit; the id it removed, or None when there is nothing to undo."""
        with self._write_lock:
            return self.labels.undo()

    def redo(self) -> int | None:
        """Redo the last undone commit; its id, or None."""
        with self._write_lock:
            return self.labels.redo()

    def propagate(
        self,
        preview: Preview,
        *,
        stop: StopRule | None = None,
        projection: str = "mask",
        overlap: str = "keep",
        callback: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> list[int]:
        """Carry the preview's objects through z and commit each as one 3D object.

        Slices that are not embedded yet are computed on the way (this runs the encoder:
        call it from a worker). ``callback(steps_done, steps_at_most)`` is called after
        each slice step and ``cancel()`` polled before it; a cancelled run raises
        :class:`~napari_segany.propagate.PropagationCancelled` and commits nothing.
        Returns the new ids.
        """
        from dataclasses import asdict

        from .propagate import propagate_objects

        stop = stop or StopRule()
        volumes = propagate_objects(
            self.segmenter,
            [{preview.z: pred.mask} for pred in preview.predictions],
            projection=projection,
            stop=stop,
            callback=callback,
            cancel=cancel,
        )
        options = {"projection": projection, "stop": asdict(stop)}
        ids = []
        with self._write_lock:
            for prompt, pred, many, mask in zip(
                preview.prompts, preview.predictions, preview.multimask, volumes, strict=True
            ):
                record = annotation_record(
                    self.model,
                    preview.z,
                    prompt,
                    multimask=many,
                    candidate=pred.index,
                    refine=preview.refine,
                    propagate=options,
                )
                ids.append(self.labels.commit(mask, overlap=overlap, record=record))
        return ids

    def segment_automatically(
        self,
        z: int | None = None,
        *,
        params: AutomaticParams | None = None,
        callback: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        follow_labels: bool = False,
    ) -> list[int]:
        """Segment every object of slice ``z`` (None: the whole volume) without prompts.

        Objects go into the labels (voxels already labelled are kept) and the annotation
        log; missing embeddings are computed on the way (call it from a worker). Returns
        the new ids. See :func:`napari_segany.segment_automatic`.

        ``follow_labels``: look for objects like the ones already in the labels ("segment
        the rest"): the parameters are learnt from them by
        :func:`napari_segany.automatic.learn.learn_params`, starting from ``params``
        (seeded mode, at their scale and brightness). It raises ValueError, with a
        one-line message, when fewer than 3 objects are labelled.
        """
        from .automatic.segment import segment_automatic

        with self._write_lock:
            if follow_labels:
                from .automatic.learn import learn_params

                params = learn_params(self.volume, self.labels.read(), params)
            known = {entry["id"] for entry in self.labels.log()}
            segment_automatic(
                self.segmenter,
                z=z,
                params=params,
                out=self.labels,
                progress=False,
                callback=callback,
                cancel=cancel,
            )
            return [e["id"] for e in self.labels.log() if e["id"] not in known]

    def learn_from_labels(
        self,
        budget: float | None = None,
        *,
        callback: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> tuple[SamModel, FinetuneReport]:
        """Tune the model on the committed labels (call it from a worker).

        The tuned model is saved in the workspace as ``tuned-<model>.pt`` (tuned again, the
        same file is replaced); the session keeps its model until :meth:`use_model`. See
        :func:`napari_segany.finetune`, whose ``time_budget`` is ``budget`` seconds (None:
        its default).
        """
        from .finetuning.run import finetune

        name = self.model.name
        out = name if name.startswith("tuned-") else f"tuned-{Path(name).stem}.pt"
        return finetune(
            [(self.store, self.labels.read())],
            self.model,
            time_budget=budget,
            out=self.workspace / out,
            progress=False,
            callback=callback,
            cancel=cancel,
        )
