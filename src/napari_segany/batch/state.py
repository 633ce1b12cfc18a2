"""The state of one batch run, per volume: what to do, what was done, what went wrong.

:class:`BatchState` opens each source and its stores before the run (a finished volume
needs nothing more), receives the run's events (:class:`~.run.Events`), links each
volume once its last slice is in, and makes one :class:`BatchResult` per source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ..automatic.params import AutomaticParams
from .files import Outputs
from .labels import export_tiff, write_labels
from .run import Work
from .slices import SliceStore, slice_signature
from .worker import SliceJob, SliceOutcome

if TYPE_CHECKING:
    from ..model import SamModel
    from ..volume.options import VolumeOptions

__all__ = ["BatchResult", "BatchState"]

DONE, SKIPPED, FAILED, CANCELLED = "done", "skipped", "failed", "cancelled"


@dataclass(frozen=True)
class BatchResult:
    """What :func:`segment_files` did with one source.

    Attributes
    ----------
    source
        The image file or folder.
    status
        ``"done"``; ``"skipped"`` (finished by an earlier run, nothing to do);
        ``"failed"`` (see ``error``; finished slices are kept); ``"cancelled"``.
    labels, tiff
        The OME-Zarr labels and the TIFF written (None when there are none).
    slices
        Slices in the volume (0 when it could not be opened).
    segmented
        Slices segmented by this run.
    reused
        Slices found segmented by an earlier run.
    objects
        Objects (ids) in the labels.
    seconds
        Time spent on this source, linking included.
    error
        What went wrong, for a failed source.
    exception
        The exception behind ``error``, for front ends that word it themselves (the
        command line names its options and the user's paths).
    """

    source: Path
    status: str
    labels: Path | None = None
    tiff: Path | None = None
    slices: int = 0
    segmented: int = 0
    reused: int = 0
    objects: int = 0
    seconds: float = 0.0
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the labels are complete (done now or earlier)."""
        return self.status in (DONE, SKIPPED)

    def summary(self) -> str:
        """One line for a report."""
        if self.status == FAILED:
            return f"{self.status:9}  {self.source}: {self.error}"
        counts = f"{self.segmented} slice(s) segmented, {self.reused} reused of {self.slices}"
        if self.status == CANCELLED:
            return f"{self.status:9}  {self.source}: {counts}; rerun to resume"
        return f"{self.status:9}  {self.source}: {self.objects} objects, {counts} -> {self.labels}"


class BatchState:
    """The state of one :func:`segment_files` run, per source; receives the run's events."""

    def __init__(
        self,
        plans: list[Outputs],
        params: AutomaticParams,
        *,
        link: bool,
        tiff: bool,
        callback: Callable[[int, int], None] | None,
        cancel: Callable[[], bool] | None,
    ) -> None:
        self.plans, self.params = plans, params
        self.link, self.tiff = link, tiff
        self._callback, self._cancel = callback, cancel
        self._results: dict[int, BatchResult] = {}
        self._stores: dict[int, SliceStore] = {}
        self._start: dict[int, float] = {}
        self._depth: dict[int, int] = {}
        self._opening: dict[int, tuple[VolumeOptions, tuple[float, float]]] = {}
        self._reused: dict[int, int] = {}
        self._segmented: dict[int, int] = {}
        self._index: list[int] = []  # position in the run -> position in plans
        self._done = self._total = 0
        self._bar: tqdm | None = None

    # -- before the run -----------------------------------------------------------------

    def prepare(self, model: SamModel, options: VolumeOptions, recompute: bool) -> list[Work]:
        """Open every source and its stores; the work left (finished sources are done)."""
        works = []
        for i, plan in enumerate(self.plans):
            self._start[i] = perf_counter()
            try:
                work = self._prepare(i, plan, model, options, recompute)
            except Exception as exc:  # an unreadable file, a stale store: this source only
                self._fail(i, exc)
                continue
            if work is not None:
                self._index.append(i)
                works.append(work)
                self._total += len(work.todo)
        return works

    def _prepare(
        self, i: int, plan: Outputs, model: SamModel, options: VolumeOptions, recompute: bool
    ) -> Work | None:
        from ..embeddings import embed
        from ..volume.volume import open_volume

        with open_volume(str(plan.source), **options.keywords()) as volume:
            limits = volume.limits
            self._opening[i] = (options, limits)
            store = embed(
                volume, model, plan.embeddings, compute=False, recompute=recompute, progress=False
            )
            signature = slice_signature(store.signature, self.params)
        slices = SliceStore.open_or_create(plan.slices, signature, recompute=recompute)
        self._stores[i], self._depth[i] = slices, len(slices)
        todo = slices.missing()
        if todo or not self._up_to_date(slices, plan):
            todo = slices.missing(verify=True)  # linking reads them all: damaged ones again
        self._reused[i], self._segmented[i] = len(slices) - len(todo), 0
        if not todo and self._up_to_date(slices, plan):
            if self.tiff and not plan.tiff.exists():
                export_tiff(plan.labels, plan.tiff)
            record = slices.linked or {}
            self._results[i] = self._result(i, SKIPPED, objects=int(record.get("objects", 0)))
            return None
        job = SliceJob(
            source=str(plan.source),
            options=options,
            limits=(float(limits[0]), float(limits[1])),
            embeddings=str(plan.embeddings),
            slices=str(plan.slices),
            params=self.params,
        )
        return Work(job, todo)

    def _linking(self) -> dict[str, Any]:
        return {
            "link": self.link,
            "link_iou": self.params.link_iou,
            "min_signal_ratio": self.params.min_signal_ratio,
        }

    def _up_to_date(self, slices: SliceStore, plan: Outputs) -> bool:
        record = slices.linked
        if record is None or not (plan.labels / "zarr.json").is_file():
            return False
        return all(record.get(k) == v for k, v in self._linking().items())

    # -- events of the run (see batch_run.Events) -----------------------------------------

    def slice_done(self, index: int, outcome: SliceOutcome) -> None:
        i = self._index[index]
        if outcome.computed:
            self._segmented[i] += 1
        else:  # done meanwhile, e.g. by a task dask ran twice
            self._reused[i] += 1
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)
        if self._callback is not None:
            self._callback(self._done, self._total)

    def segmented(self, index: int) -> None:
        i = self._index[index]
        plan, slices = self.plans[i], self._stores[i]
        from ..volume.volume import open_volume

        try:
            slices.mark_linked(None)  # until the new labels are complete
            options, limits = self._opening[i]
            with open_volume(str(plan.source), **options.keywords(), limits=limits) as volume:
                objects = write_labels(
                    slices,
                    plan.labels,
                    link=self.link,
                    iou_threshold=self.params.link_iou,
                    tiff=plan.tiff if self.tiff or plan.tiff.exists() else None,  # never stale
                    image_at=volume.model_slice,
                    min_signal_ratio=self.params.min_signal_ratio,
                )
            now = datetime.now(UTC).isoformat(timespec="seconds")
            slices.mark_linked({**self._linking(), "objects": objects, "time": now})
        except Exception as exc:  # e.g. the labels are open for writing in napari
            self._fail(i, exc)
            return
        self._results[i] = self._result(i, DONE, objects=objects)

    def failed(self, index: int, error: BaseException) -> None:
        self._fail(self._index[index], error)

    def cancel(self) -> bool:
        return self._cancel is not None and bool(self._cancel())

    # -- results --------------------------------------------------------------------------

    def _fail(self, i: int, error: BaseException) -> None:
        known = (OSError, ValueError, TypeError, LookupError)
        message = str(error) if isinstance(error, known) else f"{type(error).__name__}: {error}"
        self._results[i] = self._result(
            i, FAILED, error=message or type(error).__name__, exception=error
        )

    def _result(self, i: int, status: str, **fields: Any) -> BatchResult:
        plan = self.plans[i]
        ok = status in (DONE, SKIPPED)
        return BatchResult(
            source=plan.source,
            status=status,
            labels=plan.labels if ok else None,
            tiff=plan.tiff if ok and self.tiff else None,
            slices=self._depth.get(i, 0),
            segmented=self._segmented.get(i, 0),
            reused=self._reused.get(i, 0),
            seconds=perf_counter() - self._start.get(i, perf_counter()),
            **fields,
        )

    def results(self, *, cancelled: bool) -> list[BatchResult]:
        """Every source's result; those left unfinished by a cancelled run say so."""
        for i in range(len(self.plans)):
            if i not in self._results:
                status, error = (CANCELLED, None) if cancelled else (FAILED, "not segmented")
                self._results[i] = self._result(i, status, error=error)
        return [self._results[i] for i in range(len(self.plans))]

    def open_bar(self, progress: bool) -> None:
        quiet = not progress or not self._total  # no bar when there is nothing to segment
        self._bar = tqdm(total=self._total, desc="segmenting", unit="slice", disable=quiet)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
