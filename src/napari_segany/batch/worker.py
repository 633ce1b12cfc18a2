"""Segmenting one slice of a batch, in this process or on a dask worker.

A :class:`SliceJob` says everything a process needs to segment a volume's slices: how to
open the volume (with its intensity limits already decided), where its embedding and
slice stores are, and the parameters. It is small and picklable: dask sends it with every
task. Each process keeps its model and, per volume, the opened volume, stores and
segmenter (:class:`SliceRunner`), so a worker loads the model once (through
:class:`ModelPlugin`) and opens each volume once, however many slices it gets.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distributed import WorkerPlugin, get_worker

from ..automatic.params import AutomaticParams
from ..automatic.segment import segment_slice
from .slices import SliceStore

if TYPE_CHECKING:
    from distributed import Worker

    from ..model import SamModel
    from ..segmenter import Segmenter
    from ..volume.options import VolumeOptions

__all__ = [
    "PLUGIN_NAME",
    "ModelPlugin",
    "ModelSpec",
    "SliceJob",
    "SliceOutcome",
    "SliceRunner",
    "WorkerModelError",
]

PLUGIN_NAME = "napari-segany-model"


class WorkerModelError(RuntimeError):
    """The dask workers could not load the model."""


OPEN_VOLUMES = 4
"""Volumes a process keeps open at once (the oldest is closed first)."""


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model: what :func:`~napari_segany.load_model` takes.

    Attributes
    ----------
    source
        A registry name or a checkpoint path (readable on the workers).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    sha256
        The checkpoint's sha256 the run expects; a worker whose file differs refuses.
    """

    source: str
    device: str = "auto"
    sha256: str | None = None

    def load(self) -> SamModel:
        """Load the model, checking it is the one the run was planned with."""
        from ..model import load_model

        model = load_model(self.source, device=self.device, progress=False)
        if self.sha256 is not None and model.sha256 != self.sha256:
            raise ValueError(
                f"the model {self.source!r} on this worker has sha256 "
                f"{str(model.sha256)[:12]}, the run expects {self.sha256[:12]}: "
                "give every worker the same checkpoint"
            )
        return model


@dataclass(frozen=True)
class SliceJob:
    """One volume's segmentation, as sent to the processes that segment its slices.

    Attributes
    ----------
    source
        The image's path, and ``options`` for :func:`~napari_segany.open_volume`.
    limits
        The intensity limits decided for the whole volume.
    embeddings, slices
        The paths of its embedding store and slice store (both already made).
    params
        The segmentation parameters.
    """

    source: str
    options: VolumeOptions
    limits: tuple[float, float]
    embeddings: str
    slices: str
    params: AutomaticParams


@dataclass(frozen=True)
class SliceOutcome:
    """What segmenting one slice did (small: it travels back from the workers)."""

    slices: str
    z: int
    objects: int
    computed: bool
    seconds: float


class SliceRunner:
    """A process's model, and the volumes it has opened, for segmenting slices of jobs.

    Slices are segmented one at a time per process (the model keeps state between
    decoder calls): give a worker one thread and its cores to torch.
    """

    def __init__(self, model: SamModel) -> None:
        self.model = model
        self._open: OrderedDict[str, tuple[Segmenter, SliceStore]] = OrderedDict()
        self._lock = threading.Lock()

    def segment(
        self, job: SliceJob, z: int, cancel: Callable[[], bool] | None = None
    ) -> SliceOutcome:
        """Segment slice ``z`` of the job's volume into its slice store (computing the
        embedding if it is missing); a slice already done is left as it is."""
        start = time.perf_counter()
        with self._lock:
            segmenter, slices = self._opened(job)
            if slices.is_done(z):
                return SliceOutcome(job.slices, z, 0, False, time.perf_counter() - start)
            labels = segment_slice(segmenter, z, job.params, cancel=cancel)
            slices.write(z, labels)
        return SliceOutcome(
            job.slices, z, int(labels.max(initial=0)), True, time.perf_counter() - start
        )

    def _opened(self, job: SliceJob) -> tuple[Segmenter, SliceStore]:
        if job.slices in self._open:
            self._open.move_to_end(job.slices)
            return self._open[job.slices]
        from ..embeddings import embed
        from ..segmenter import Segmenter
        from ..volume.volume import open_volume

        for path in (job.slices, job.source):
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"{path!r} is not visible on {socket.gethostname()}: sources and the "
                    "output folder must be on a file system every worker shares"
                )
        volume = open_volume(job.source, **job.options.keywords(), limits=job.limits)
        try:
            store = embed(volume, self.model, job.embeddings, compute=False, progress=False)
            opened = (Segmenter(self.model, store), SliceStore.open(job.slices))
        except BaseException:
            volume.close()
            raise
        self._open[job.slices] = opened
        while len(self._open) > OPEN_VOLUMES:
            _, (old, _) = self._open.popitem(last=False)
            if old.store.volume is not None:
                old.store.volume.close()
        return opened

    def close(self) -> None:
        """Close every volume opened here."""
        while self._open:
            _, (segmenter, _) = self._open.popitem()
            if segmenter.store.volume is not None:
                segmenter.store.volume.close()


class ModelPlugin(WorkerPlugin):
    """Loads the model once on each dask worker (also on workers that join or restart).

    Parameters
    ----------
    model
        What to load.
    torch_threads
        Threads for torch on each worker; None: the cores this worker may use divided
        by its dask threads.
    """

    name = PLUGIN_NAME

    def __init__(self, model: ModelSpec, torch_threads: int | None = None) -> None:
        self.model = model
        self.torch_threads = torch_threads
        self.runner: SliceRunner | None = None

    def setup(self, worker: Worker) -> None:
        import torch

        threads = self.torch_threads or max(1, _usable_cores() // max(1, worker.state.nthreads))
        torch.set_num_threads(threads)
        self.runner = SliceRunner(self.model.load())

    def teardown(self, worker: Worker) -> None:
        if self.runner is not None:
            self.runner.close()


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # the cores a batch system gave this job
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def segment_on_worker(job: SliceJob, z: int) -> SliceOutcome:
    """The dask task: segment slice ``z`` of ``job`` with this worker's model."""
    plugin = get_worker().plugins.get(PLUGIN_NAME)
    runner = getattr(plugin, "runner", None)
    if runner is None:
        raise RuntimeError(
            "this dask worker has no napari-segany model: segment_files registers a worker "
            "plugin that loads it; was the plugin removed?"
        )
    return runner.segment(job, z)
