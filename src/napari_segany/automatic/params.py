"""The parameters of automatic segmentation, checked when they are made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from ..object_ends import MIN_SIGNAL_RATIO

__all__ = ["MODES", "AutomaticParams", "with_overrides"]

#: The ways of choosing the points to decode (:attr:`AutomaticParams.mode`).
MODES = ("seeded", "sparse", "grid")


@dataclass(frozen=True)
class AutomaticParams:
    """Parameters of automatic segmentation (SAM's automatic mask generator's defaults
    where it has the parameter).

    Attributes
    ----------
    mode
        Which points are decoded (:mod:`napari_segany.automatic.plan`). ``"sparse"``:
        grids coarse to fine, each point left out when what was found already explains
        its pixel (an object found there, or background). ``"seeded"``: the centres of
        blobs found in the image first (at most ``(n/2)**2``, the strongest), then the
        same grids. ``"grid"``: every point of the ``n x n`` grid, as SAM does. Without
        the image (a store opened without its volume) neither seeds nor the image's
        background estimate are had, and only found objects are skipped.
    points_per_side
        The finest grid: ``n x n`` point prompts per slice (per window on tiled slices).
        With ``"grid"`` the cost grows with ``n**2``: one decoder pass per point.
    points_per_batch
        Points decoded together in one decoder call; None: as many as
        ``decoder_memory_mb`` allows.
    decoder_memory_mb
        Working memory of one decoder call, in MiB, when ``points_per_batch`` is None.
    seed_radius
        ``(smallest, largest)`` radius in pixels of the blobs looked for as seeds.
    seed_polarity
        ``"bright"``: seeds on blobs brighter than their surroundings (fluorescence);
        ``"dark"``: darker (stained nuclei in bright field).
        :func:`~napari_segany.automatic.learn.learn_params` sets both from the user's
        objects.
    pred_iou_threshold
        Least predicted IoU (the decoder's own quality estimate) of a kept mask.
    stability_threshold
        Least stability score: the IoU of the mask thresholded at ``+offset`` and at
        ``-offset`` on its logits.
    stability_offset
        That offset, in logits.
    nms_threshold
        Masks overlapping a better one with IoU at least this are duplicates.
    min_area
        Least area in pixels of an object, and of each island of it (smaller ones
        are dropped).
    max_hole_area
        Holes inside an object up to this area in pixels are filled (0: none).
    max_area_fraction
        Most area of an object as a fraction of the window (the "background" mask a
        point in the background gets is dropped by it).
    edge_margin
        Tiled slices: masks within this many pixels of a window edge inside the slice
        are dropped, in favour of the window that holds them whole.
    link_iou
        Least IoU with an object on the previous slice to continue it in 3D.
    min_signal_ratio
        Linked 3D objects end in z where their signal falls below this share of their
        strongest slice's (:mod:`napari_segany.object_ends`, the rule that ends
        propagation); the slices beyond are dropped. 0: keep every linked slice.
    multimask
        Three candidates per point (whole, part, sub-part) as SAM does; False: one.
    """

    mode: str = "sparse"
    points_per_side: int = 32
    points_per_batch: int | None = None
    decoder_memory_mb: int = 256
    seed_radius: tuple[float, float] = (3.0, 64.0)
    seed_polarity: str = "bright"
    pred_iou_threshold: float = 0.88
    stability_threshold: float = 0.95
    stability_offset: float = 1.0
    nms_threshold: float = 0.7
    min_area: int = 16
    max_hole_area: int = 16
    max_area_fraction: float = 0.5
    edge_margin: int = 16
    link_iou: float = 0.3
    min_signal_ratio: float = MIN_SIGNAL_RATIO
    multimask: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        _check_int("points_per_side", self.points_per_side, low=1)
        if self.points_per_batch is not None:
            _check_int("points_per_batch", self.points_per_batch, low=1)
        _check_int("decoder_memory_mb", self.decoder_memory_mb, low=1)
        if self.seed_polarity not in ("bright", "dark"):
            polarity = self.seed_polarity
            raise ValueError(f"seed_polarity must be 'bright' or 'dark', got {polarity!r}")
        radius = self.seed_radius
        if (
            not isinstance(radius, tuple | list)
            or len(radius) != 2
            or not all(_is_number(r) and 0 < r < float("inf") for r in radius)
            or radius[0] > radius[1]
        ):
            raise ValueError(f"seed_radius must be (smallest, largest) in pixels, got {radius!r}")
        for name in ("min_area", "max_hole_area", "edge_margin"):
            _check_int(name, getattr(self, name), low=0)
        for name in ("pred_iou_threshold", "stability_threshold"):
            _check_fraction(name, getattr(self, name), closed_low=True)
        for name in ("nms_threshold", "max_area_fraction", "link_iou"):
            _check_fraction(name, getattr(self, name), closed_low=False)
        value = self.min_signal_ratio
        if not _is_number(value) or not 0 <= value < 1:
            raise ValueError(f"min_signal_ratio must be in [0, 1), got {value!r}")
        value = self.stability_offset
        if not _is_number(value) or not 0 < value < float("inf"):
            raise ValueError(f"stability_offset must be a positive number of logits, got {value!r}")
        if not isinstance(self.multimask, bool):
            raise TypeError(f"multimask must be True or False, got {self.multimask!r}")

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a plain dict (for records and logs)."""
        return dataclasses.asdict(self)


def _is_number(value: object) -> TypeGuard[int | float | np.integer | np.floating]:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _check_int(name: str, value: object, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")


def _check_fraction(name: str, value: object, *, closed_low: bool) -> None:
    if not _is_number(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    ok = 0.0 <= value <= 1.0 if closed_low else 0.0 < value <= 1.0
    if not ok:
        interval = "[0, 1]" if closed_low else "(0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}")


def with_overrides(params: AutomaticParams | None, overrides: dict[str, Any]) -> AutomaticParams:
    """``params`` (default :class:`AutomaticParams`) with single fields replaced by name.

    Raises
    ------
    TypeError
        ``params`` of another type, or a name that is not a field.
    """
    params = AutomaticParams() if params is None else params
    if not isinstance(params, AutomaticParams):
        raise TypeError(f"params must be AutomaticParams, got {type(params).__name__}")
    known = {f.name for f in dataclasses.fields(AutomaticParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(
            f"unknown parameter(s) {', '.join(unknown)}; "
            f"AutomaticParams has {', '.join(sorted(known))}"
        )
    return dataclasses.replace(params, **overrides)
