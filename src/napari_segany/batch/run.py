"""Running a batch's slices: a plain loop in this process, or dask tasks on a cluster.

Both run the same code per slice (:meth:`SliceRunner.segment`) and report to the same
:class:`Events`, so a volume segmented on a cluster is the one segmented here. Each slice
is one task; a task that raises is retried (``retries``), and one on a worker that dies
is rescheduled by dask on another worker; slices already done are never redone.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..automatic.segment import SegmentationCancelled
from .worker import (
    PLUGIN_NAME,
    ModelPlugin,
    SliceJob,
    SliceOutcome,
    WorkerModelError,
    segment_on_worker,
)

if TYPE_CHECKING:
    from distributed import Client, Future

    from .worker import SliceRunner

__all__ = ["Events", "Work", "run_here", "run_on_cluster"]

RETRIES = 2
"""Extra attempts of a slice whose task raised (a worker dying is dask's own count)."""
POLL_SECONDS = 0.5
"""How often the cancel callback is polled while waiting for the cluster."""


@dataclass(frozen=True)
class Work:
    """One volume's slices to segment."""

    job: SliceJob
    todo: Sequence[int]


class Events(Protocol):
    """What a run reports, per volume (by its index in the list of work)."""

    def slice_done(self, index: int, outcome: SliceOutcome) -> None:
        """A slice is segmented and stored."""

    def segmented(self, index: int) -> None:
        """Every slice of the volume is segmented: it can be linked."""

    def failed(self, index: int, error: BaseException) -> None:
        """The volume failed; its other slices are given up."""

    def cancel(self) -> bool:
        """Whether to stop now."""


def run_here(works: Sequence[Work], runner: SliceRunner, events: Events) -> bool:
    """Segment every slice in this process, volume after volume. Returns False when
    cancelled (what finished stays on disk)."""
    for index, work in enumerate(works):
        try:
            for z in work.todo:
                if events.cancel():
                    return False
                events.slice_done(index, runner.segment(work.job, z, cancel=events.cancel))
        except SegmentationCancelled:
            return False
        except Exception as exc:  # one bad volume does not stop the others
            events.failed(index, exc)
            continue
        events.segmented(index)
    return True


def run_on_cluster(
    works: Sequence[Work],
    client: Client,
    plugin: ModelPlugin,
    events: Events,
    *,
    retries: int = RETRIES,
) -> bool:
    """Segment every slice as dask tasks on ``client``'s workers, which load the model
    once through ``plugin``. Returns False when cancelled."""
    from distributed import wait

    try:
        client.register_plugin(plugin, name=PLUGIN_NAME)  # setup runs on every worker now
    except Exception as exc:
        raise WorkerModelError(
            f"the dask workers could not load the model {plugin.model.source!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    token = uuid.uuid4().hex[:8]
    owner: dict[Future, int] = {}
    left: dict[int, set[Future]] = {}
    for index, work in enumerate(works):
        if not work.todo:
            events.segmented(index)
            continue
        futures = [
            client.submit(
                segment_on_worker,
                work.job,
                z,
                key=f"napari-segany-slice-{token}-{index}-{z}",
                pure=False,
                retries=retries,
                priority=-index,  # earlier volumes first, so they can be linked early
            )
            for z in work.todo
        ]
        owner.update(dict.fromkeys(futures, index))
        left[index] = set(futures)
    pending = set(owner)
    try:
        while pending:
            if events.cancel():
                return False
            try:
                done, _ = wait(list(pending), timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            for future in done:
                pending.discard(future)
                index = owner[future]
                if index not in left:
                    continue  # its volume failed already
                if future.status != "finished":  # raised on every attempt, or was cancelled
                    given_up = left.pop(index)
                    client.cancel(list(given_up - {future}))
                    pending -= given_up
                    events.failed(index, _error_of(future))
                    continue
                events.slice_done(index, future.result())
                left[index].discard(future)
                if not left[index]:
                    del left[index]
                    events.segmented(index)
    finally:
        if pending:
            client.cancel(list(pending))
    return True


def _error_of(future: Future) -> BaseException:
    if future.status == "error":
        return future.exception()
    return RuntimeError(f"the task of slice {future.key} was {future.status}")
