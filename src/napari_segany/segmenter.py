"""Prompts to masks on one slice: the click-to-mask path.

:class:`Segmenter` takes prompts in the user's frame (slice pixels, NumPy order),
picks the tile window that holds them, decodes with the slice's stored embedding kept
on the model's device, and upscales only the chosen mask, only where it can be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, overload

import numpy as np
import torch

from .model import same_encoder
from .prompts import mask_to_logits
from .refine import choose_candidates
from .upscale import upscale_mask

if TYPE_CHECKING:
    from .embeddings import EmbeddingStore
    from .model import ImageEmbedding, SamModel
    from .propagate import StopRule
    from .tiling import Window

__all__ = [
    "KEPT_EMBEDDINGS",
    "Prediction",
    "Prompt",
    "Segmenter",
    "real_array",
]

KEPT_EMBEDDINGS = 9
"""Windows whose embedding a Segmenter keeps in memory: those of a 2048 x 2048 slice."""


@dataclass(frozen=True)
class Prompt:
    """The prompts for one object on one slice, in slice pixels.

    Attributes
    ----------
    points
        ``(N, 2)`` ``(y, x)`` points, or None.
    labels
        ``(N,)``: 1 positive, 0 negative.
    box
        ``(y0, x0, y1, x1)`` or None.
    mask
        A previous result for refinement: boolean ``(Y, X)`` mask of the slice, or the
        ``(256, 256)`` low-resolution logits of an earlier prediction on the same window.
    """

    points: Sequence[Sequence[float]] | np.ndarray | None = None
    labels: Sequence[int] | np.ndarray | None = None
    box: Sequence[float] | np.ndarray | None = None
    mask: np.ndarray | torch.Tensor | None = None


@dataclass(frozen=True)
class _Checked:
    """A validated :class:`Prompt`: float64 ``(N, 2)`` points, int64 ``(N,)`` labels, a
    float64 ``(4,)`` box clipped to the slice, a boolean mask or logits."""

    points: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None
    mask: np.ndarray | torch.Tensor | None


@dataclass
class Prediction:
    """Candidate masks for one object on one slice; the best one chosen.

    Attributes
    ----------
    z
        The slice.
    scores
        ``(K,)`` predicted IoU of each candidate.
    low_res_logits
        ``(K, 256, 256)`` decoder logits of the candidates (feed one back as ``mask=``).
    index
        The chosen candidate: the highest score, or the refined choice
        (:mod:`napari_segany.refine`), unless cycled.
    window
        ``(y0, x0, y1, x1)`` of the tile window the prompt was decoded on.
    slice_shape
        ``(Y, X)`` of the slice.
    """

    z: int
    scores: np.ndarray
    low_res_logits: torch.Tensor
    index: int
    window: Window
    slice_shape: tuple[int, int]
    _frame: int
    _resized: tuple[int, int]
    _masks: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def _mask_of(self, k: int) -> np.ndarray:
        if k not in self._masks:
            y0, x0, y1, x1 = self.window
            local = upscale_mask(
                self.low_res_logits[k], self._frame, self._resized, (y1 - y0, x1 - x0)
            )
            if (y0, x0, y1, x1) == (0, 0, *self.slice_shape):
                self._masks[k] = local
            else:
                full = np.zeros(self.slice_shape, dtype=bool)
                full[y0:y1, x0:x1] = local
                self._masks[k] = full
        return self._masks[k]

    @property
    def mask(self) -> np.ndarray:
        """The chosen mask: boolean ``(Y, X)``."""
        return self._mask_of(self.index)

    @property
    def score(self) -> float:
        """The chosen mask's predicted IoU."""
        return float(self.scores[self.index])

    @property
    def logits(self) -> torch.Tensor:
        """The chosen mask's ``(256, 256)`` low-resolution logits."""
        return self.low_res_logits[self.index]

    @property
    def masks(self) -> np.ndarray:
        """All candidates: boolean ``(K, Y, X)`` (computed on first access)."""
        return np.stack([self._mask_of(k) for k in range(len(self.scores))])

    def cycle(self, step: int = 1) -> Prediction:
        """The same prediction with the next candidate chosen (wrapping around)."""
        return replace(self, index=(self.index + step) % len(self.scores))


def _numbers(values: object, what: str, form: str) -> np.ndarray:
    """``values`` as finite float64 numbers, or one line naming ``what`` is wrong."""
    array: np.ndarray | None
    try:
        array = np.asarray(values)
        if array.dtype.kind == "c" or (
            array.dtype == object and any(v is None for v in array.flat)
        ):
            array = None  # the imaginary part would be dropped, None would become NaN
        else:
            array = array.astype(np.float64)
    except (TypeError, ValueError, OverflowError):  # ragged, text, ints beyond float64
        array = None
    if array is None:
        raise ValueError(f"{what} must be numbers {form}, got {_shown(values)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} must be finite numbers {form}, got {_shown(array)}")
    return array


def _shown(values: object, width: int = 120) -> str:
    """``values`` for a one-line message: arrays as lists, whitespace collapsed, cut short."""
    text = " ".join(repr(values.tolist() if isinstance(values, np.ndarray) else values).split())
    return text if len(text) <= width else f"{text[: width - 4]} ..."


@overload
def _flag(value: bool | np.bool_, name: str) -> bool: ...
@overload
def _flag(value: object, name: str) -> bool | None: ...
def _flag(value: object, name: str) -> bool | None:
    """``value`` as True, False or None (NumPy booleans included), or a TypeError."""
    if value is None or isinstance(value, bool | np.bool_):
        return None if value is None else bool(value)
    raise TypeError(f"{name} must be True, False or None, got {_shown(value)}")


def _held(value: np.ndarray | None) -> np.ndarray:
    """A field that every prompt of a decoded group holds: the prompts are grouped by which
    fields they hold (points with their labels), so one that holds it means all do."""
    assert value is not None
    return value


def _mask_array(mask: object) -> np.ndarray | torch.Tensor | None:
    """A mask prompt as a boolean array (a mask drawn on the slice) or real logits."""
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor):
        if mask.dtype == torch.bool:
            return mask.cpu().numpy()
        if mask.is_complex():
            raise TypeError(f"mask logits must be real numbers, got a tensor of {mask.dtype}")
        return mask
    return real_array(mask, "the mask must be a boolean (Y, X) array or (256, 256) logits")


def real_array(values: object, requirement: str) -> np.ndarray:
    """``values`` as a NumPy array of booleans or real numbers, or a TypeError that says
    ``requirement`` and what was given (ragged lists, text, complex numbers)."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):  # ragged nested lists
        array = None
    if array is None or array.dtype.kind not in "biuf":
        kind = type(values).__name__ if array is None else f"dtype {array.dtype}"
        raise TypeError(f"{requirement}, got {kind}")
    return array


class Segmenter:
    """Interactive segmentation of a volume's slices from their stored embeddings.

    Parameters
    ----------
    model
        The model the store was computed with.
    store
        From :func:`napari_segany.embed`; missing slices are computed on demand when
        the store knows its volume.
    refine
        Of the three candidates of a multimask decode (a lone click, by default), take
        the smallest that is more than a speck (see :mod:`napari_segany.refine`), better
        than SAM's IoU head on microscopy; False keeps SAM's plain choice.
    """

    def __init__(self, model: SamModel, store: EmbeddingStore, *, refine: bool = True) -> None:
        stored = store.signature["model"]
        known = (stored.get("encoder_sha256") and model.encoder_sha256) or (
            stored.get("sha256") is not None and model.sha256 is not None
        )
        if known and not same_encoder(stored, model.identity):
            raise ValueError(
                f"the store was computed with model {stored['name']!r}, whose image "
                f"encoder {model.name!r} does not have: use the same model (or one "
                "tuned from it: a tuned decoder keeps its base's stores)"
            )
        self.model = model
        self.store = store
        self.refine = refine
        self._kept: dict[tuple[int, int], ImageEmbedding] = {}  # most recently used last

    @property
    def slice_shape(self) -> tuple[int, int]:
        """``(Y, X)`` of the volume's slices."""
        return self.store.grid.slice_shape

    def embedding(self, z: int, tile: int = 0) -> ImageEmbedding:
        """The embedding of a slice's window, kept on the device for the next clicks.

        The last :data:`KEPT_EMBEDDINGS` windows used are kept (4 MiB each in float32 for
        the 64 x 64 embeddings of SAM models), so that clicks moving between the windows
        of a large slice read each from the store once.
        """
        key = (z % len(self.store), tile)
        embedding = self._kept.pop(key, None)
        if embedding is None:
            embedding = self.store.get(key[0], tile)
            while len(self._kept) >= KEPT_EMBEDDINGS:
                del self._kept[next(iter(self._kept))]
        self._kept[key] = embedding
        return embedding

    def _check_z(self, z: int) -> None:
        depth = len(self.store)
        if isinstance(z, bool) or not isinstance(z, int | np.integer):
            raise TypeError(f"z must be an integer slice index, got {_shown(z)}")
        if not 0 <= z < depth:
            raise IndexError(f"slice {z} is outside the volume's {depth} slices (0..{depth - 1})")

    def _check(self, prompt: Prompt) -> tuple[_Checked, tuple[float, float, float, float]]:
        """Validate a prompt; return it with arrays normalised, and its extent (a box)."""
        h, w = self.slice_shape
        points = labels = box = None
        extent: list[np.ndarray] = []
        given = None if prompt.points is None else _numbers(prompt.points, "points", "(y, x) pairs")
        if given is not None and given.size:
            # (N, 2), or one (y, x) pair; a napari 3D layer's (N, 3) points are refused
            if given.ndim not in (1, 2) or given.shape[-1] != 2:
                raise ValueError(
                    f"points must be (y, x) pairs, got {given.size} number(s) of shape "
                    f"{given.shape}"
                )
            points = given.reshape(-1, 2)
            if prompt.labels is None:
                raise ValueError("points need labels: 1 for positive, 0 for negative")
            labels = _numbers(prompt.labels, "point labels", "(1 or 0 per point)").reshape(-1)
            if labels.shape[0] != points.shape[0]:
                raise ValueError(f"{points.shape[0]} points but {labels.shape[0]} labels")
            if not np.isin(labels, (0, 1)).all():
                wrong = ", ".join(f"{v:g}" for v in np.unique(labels[~np.isin(labels, (0, 1))]))
                raise ValueError(f"point labels must be 1 or 0, got {wrong}")
            labels = labels.astype(np.int64)
            outside = (points < 0).any(axis=1) | (points[:, 0] >= h) | (points[:, 1] >= w)
            if outside.any():
                raise ValueError(
                    f"point {points[outside][0].tolist()} (y, x) is outside the slice of "
                    f"{h} x {w} pixels"
                )
            extent.append(points[labels == 1])
        if prompt.box is not None:
            box = _numbers(prompt.box, "the box", "(y0, x0, y1, x1)")
            if box.size != 4:
                raise ValueError(f"a box is 4 numbers (y0, x0, y1, x1), got {box.size}")
            box = box.reshape(4)
            clipped = np.clip(box, 0, [h, w, h, w])
            if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
                raise ValueError(
                    f"the box {box.tolist()} (y0, x0, y1, x1) has no area inside the slice"
                )
            box = clipped
            extent.append(box.reshape(2, 2))
        mask = _mask_array(prompt.mask)
        has_positive = labels is not None and bool((labels == 1).any())
        if isinstance(mask, np.ndarray) and mask.dtype == bool:
            if mask.shape != (h, w):
                raise ValueError(f"the mask has shape {mask.shape}, the slice is {(h, w)}")
            ys, xs = np.nonzero(mask)
            if ys.size == 0:
                raise ValueError("the mask is empty")
            bbox = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], dtype=np.float64)
            extent.append(bbox.reshape(2, 2))
            if box is None and not has_positive:
                # SAM is trained to take a mask with other prompts; alone it is given
                # together with its bounding box
                box = bbox
        elif mask is not None:
            if tuple(mask.shape) not in ((256, 256), (1, 256, 256)):
                raise ValueError(
                    f"mask logits must be (256, 256), got {tuple(mask.shape)}; pass a boolean "
                    f"({h}, {w}) mask for a mask drawn on the slice"
                )
            finite = torch.isfinite(mask) if isinstance(mask, torch.Tensor) else np.isfinite(mask)
            if not finite.all():
                raise ValueError("mask logits must be finite numbers, got NaN or infinity")
            if box is None and not has_positive:
                raise ValueError(
                    "low-resolution logits refine a prompt: give points or a box with them"
                )
        if not (has_positive or box is not None):
            raise ValueError("no positive prompt: give a positive point, a box or a mask")
        corners = np.concatenate(extent) if extent else np.array([[0, 0], [h, w]])
        (y0, x0), (y1, x1) = corners.min(axis=0), corners.max(axis=0)
        return _Checked(points, labels, box, mask), (float(y0), float(x0), float(y1), float(x1))

    def predict(
        self,
        z: int = 0,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Sequence[float] | np.ndarray | None = None,
        mask: np.ndarray | torch.Tensor | None = None,
        multimask: bool | None = None,
        refine: bool | None = None,
    ) -> Prediction:
        """Segment one object on slice ``z``.

        Parameters
        ----------
        z
            The slice (0 for a 2D image).
        points, labels
            ``(N, 2)`` ``(y, x)`` points and their labels (1 positive, 0 negative).
        box
            ``(y0, x0, y1, x1)``.
        mask
            A previous mask (boolean, slice-sized) or its low-resolution logits.
        multimask
            Three candidates (True) or one (False); default: three for a lone point,
            where the prompt is ambiguous, one otherwise.
        refine
            The refined choice of candidate (True) or SAM's IoU head (False); default: the
            Segmenter's ``refine``.

        Raises
        ------
        IndexError
            ``z`` outside ``0..len(volume) - 1``.
        TypeError
            ``z`` that is not an integer, ``multimask`` or ``refine`` that is not a
            boolean, a mask that is not an array of booleans or real numbers.
        ValueError
            Points outside the slice, points, labels or a box that are not finite numbers
            or not of their form (``(N, 2)`` pairs, 1 or 0 per point, four numbers), a box
            with no area, no positive prompt, a mask of the wrong shape, logits that are
            not finite.
        """
        prompt = Prompt(points, labels, box, mask)
        return self.predict_many(z, [prompt], multimask=multimask, refine=refine)[0]

    def predict_many(
        self,
        z: int,
        prompts: Sequence[Prompt],
        *,
        multimask: bool | None = None,
        refine: bool | None = None,
    ) -> list[Prediction]:
        """Segment several objects on slice ``z``; prompts of the same kind on the same
        window are decoded in one batched call (see :meth:`predict`).

        ``prompts`` is a list (or tuple) of :class:`Prompt`; anything else is a TypeError.
        """
        self._check_z(z)
        multimask = _flag(multimask, "multimask")
        refine = self.refine if refine is None else _flag(refine, "refine")
        if isinstance(prompts, Prompt) or not isinstance(prompts, Sequence):
            raise TypeError(f"prompts must be a list of Prompt, got {type(prompts).__name__}")
        for i, p in enumerate(prompts):
            if not isinstance(p, Prompt):
                raise TypeError(
                    f"prompts must be Prompt objects; prompt {i} is a {type(p).__name__}"
                )
        checked = [self._check(p) for p in prompts]
        grid = self.store.grid
        windows = [grid.window_for_box(extent) for _, extent in checked]
        results: list[Prediction | None] = [None] * len(prompts)
        groups: dict[tuple[int, int, bool, bool], list[int]] = {}
        for i, ((c, _), tile) in enumerate(zip(checked, windows, strict=True)):
            n_points = 0 if c.points is None else len(c.points)
            key = (tile, n_points, c.box is not None, c.mask is not None)
            groups.setdefault(key, []).append(i)
        for (tile, n_points, has_box, _), members in groups.items():
            many = multimask
            if many is None:
                many = n_points == 1 and not has_box and checked[members[0]][0].mask is None
            for i, pred in zip(
                members,
                self._decode(z, tile, [checked[i][0] for i in members], many, refine),
                strict=True,
            ):
                results[i] = pred
        return [r for r in results if r is not None]

    def _decode(
        self, z: int, tile: int, prompts: list[_Checked], multimask: bool, refine: bool
    ) -> list[Prediction]:
        embedding = self.embedding(z, tile)
        y0, x0, _, _ = window = self.store.grid.windows[tile]
        offset = np.array([y0, x0], dtype=np.float64)
        first = prompts[0]
        points = labels = boxes = logits = None
        if first.points is not None:
            points = np.stack([_held(p.points) - offset for p in prompts])
            labels = np.stack([_held(p.labels) for p in prompts])
        if first.box is not None:
            boxes = np.stack([_held(p.box) - np.tile(offset, 2) for p in prompts])
        if first.mask is not None:
            masks = []
            for p in prompts:
                assert p.mask is not None  # grouped by the fields they hold: all or none
                masks.append(self._mask_logits(p.mask, window, embedding))
            logits = torch.stack(masks)
        decoded = self.model.decode(
            embedding,
            points=points,
            labels=labels,
            boxes=boxes,
            mask_logits=logits,
            multimask=multimask,
        )
        scores = decoded.iou.float().cpu().numpy()
        chosen = scores.argmax(axis=1)
        if refine and multimask:
            chosen = choose_candidates(
                decoded.low_res_logits,
                scores,
                resized=embedding.resized_size,
                original=embedding.original_size,
            )
        return [
            Prediction(
                z=z % len(self.store),
                scores=scores[i],
                low_res_logits=decoded.low_res_logits[i],
                index=int(chosen[i]),
                window=window,
                slice_shape=self.slice_shape,
                _frame=self.model.image_size,
                _resized=embedding.resized_size,
            )
            for i in range(len(prompts))
        ]

    def _mask_logits(
        self, mask: np.ndarray | torch.Tensor, window: Window, embedding: ImageEmbedding
    ) -> torch.Tensor:
        if isinstance(mask, np.ndarray) and mask.dtype == bool:
            y0, x0, y1, x1 = window
            local = mask_to_logits(
                mask[y0:y1, x0:x1], embedding.resized_size, self.model.image_size
            )
            return torch.from_numpy(local).to(self.model.device)
        if isinstance(mask, np.ndarray):  # copied: a read-only array cannot back a tensor
            return torch.tensor(mask, dtype=torch.float32, device=self.model.device).reshape(
                256, 256
            )
        return mask.to(self.model.device, torch.float32).reshape(256, 256)

    def propagate(
        self,
        z: int | None = None,
        mask: np.ndarray | None = None,
        *,
        annotations: dict[int, np.ndarray] | None = None,
        z_range: tuple[int, int] | None = None,
        direction: str = "both",
        projection: str = "mask",
        stop: StopRule | None = None,
    ) -> np.ndarray:
        """Carry one object through z from its mask on slice ``z`` (or several slices).

        Parameters
        ----------
        z, mask
            An annotated slice and the object's boolean mask on it.
        annotations
            Instead: ``{z: mask}`` for several annotated slices; the slices between two
            of them are filled from both ends.
        z_range, direction, projection, stop
            See :func:`napari_segany.propagate.propagate_objects`.

        Returns
        -------
        numpy.ndarray
            Boolean ``(Z, Y, X)``.
        """
        if annotations is not None and not isinstance(annotations, Mapping):
            raise TypeError(
                f"annotations must be a dict {{z: mask}}, got {type(annotations).__name__}"
            )
        marked = dict(annotations or {})
        if mask is not None:
            if z is not None and (isinstance(z, bool) or not isinstance(z, int | np.integer)):
                raise TypeError(f"z must be an integer slice index, got {_shown(z)}")
            marked[0 if z is None else z] = mask
        if not marked:
            raise ValueError("give the object's mask on a slice (z=..., mask=...) or annotations")
        # A deliberate loop: propagate builds on Segmenter; this method is a shortcut to it.
        from .propagate import propagate_objects

        return propagate_objects(
            self,
            [marked],
            z_range=z_range,
            direction=direction,
            projection=projection,
            stop=stop,
        )[0]
