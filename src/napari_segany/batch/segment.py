"""Batch segmentation: every slice of many volumes, into OME-Zarr labels, here or on a cluster.

For each source, :func:`segment_files` makes (or reuses) its embedding store, segments
each slice not yet done (:func:`~napari_segany.segment_slice`, the embedding computed
on the way when missing) into a slice store on disk, then links the slices through z
into labels with volume-wide ids (:func:`~napari_segany.link_slices`) written as
OME-Zarr, and a TIFF when asked. The outputs and their names are in
:mod:`.files`.

Slices are segmented in this process or as dask tasks (:mod:`.run`): each worker
loads the model once and writes its slices straight into the shared slice store, and the
process that called :func:`segment_files` links each volume as soon as its last slice
is in. Everything is resumable: a rerun skips finished volumes and finished slices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..automatic.segment import AutomaticParams, with_overrides
from ..volume.options import VolumeOptions
from .cluster import SchedulerUnreachableError, connect
from .files import find_sources, plan_outputs
from .run import Work, run_here, run_on_cluster
from .state import BatchResult, BatchState
from .worker import ModelPlugin, ModelSpec, SliceRunner, WorkerModelError

if TYPE_CHECKING:
    from distributed import Client

    from ..model import SamModel

__all__ = ["BatchResult", "SchedulerUnreachableError", "WorkerModelError", "segment_files"]


def segment_files(
    sources: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | SamModel = "mobile_sam",
    params: AutomaticParams | None = None,
    client: Client | str | None = None,
    n_workers: int | None = None,
    link: bool = True,
    tiff: bool = False,
    recompute: bool = False,
    device: str = "auto",
    axes: str | None = None,
    level: int = 0,
    channel: int | None = None,
    time: int | None = None,
    timeout: float = 10.0,
    torch_threads: int | None = None,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **overrides: Any,
) -> list[BatchResult]:
    """Segment every slice of each source automatically into OME-Zarr labels, resumably.

    Parameters
    ----------
    sources
        TIFF files and (OME-)Zarr folders; each is a volume of its own (shapes may
        differ). Expand globs first (see :func:`napari_segany.batch.files.expand_sources`).
    out_dir
        Where each source's outputs go, named after it: ``<name>.labels.ome.zarr``,
        ``<name>.embeddings-<model>.zarr``, ``<name>.slices.zarr`` and, with ``tiff``,
        ``<name>.labels.tif``.
    model
        A model name, a checkpoint path (readable by every worker) or a loaded
        :class:`~napari_segany.SamModel`.
    params
        :class:`~napari_segany.AutomaticParams`; keyword ``overrides`` (e.g.
        ``points_per_side=16``) replace single fields.
    client
        None: segment in this process. ``"local"``: on a new dask LocalCluster of worker
        processes sized to this machine (or ``n_workers``), closed afterwards. An address
        such as ``"tcp://10.0.0.5:8786"``: on that dask scheduler's workers. A
        :class:`distributed.Client` (e.g. of a dask-jobqueue cluster): on its workers.
    n_workers
        Worker processes of the ``"local"`` cluster (default: one per four cores).
    link
        True: objects overlapping on neighbouring slices are one 3D object. False: each
        slice's objects keep ids of their own (2D stacks, time series).
    tiff
        Also write the labels as a TIFF.
    recompute
        Replace embeddings and slices made with another model, parameters or source
        (without it, such a source fails with a message and nothing of it is changed).
    device
        Where models loaded by name run (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
    axes, level, channel, time
        How to open the sources (see :func:`~napari_segany.open_volume`).
    timeout
        Seconds to wait for a scheduler given by address.
    torch_threads
        Torch threads of each process that segments. Default: in this process, torch's
        own setting; on ``"local"``, the cores shared out among the workers; on another
        cluster, the cores a worker may use (its batch job's) over its dask threads.
    progress
        Show a progress bar over slices.
    callback
        Called as ``callback(done, total)`` after each slice segmented.
    cancel
        Polled between slices (and between batches of points in this process): when it
        returns True, stop; finished slices are kept for the next run.

    Returns
    -------
    list of BatchResult
        One per source, in order. A source that fails does not stop the others.

    Raises
    ------
    FileNotFoundError
        Missing sources, all named, before any work.
    ValueError
        Two sources with the same name, bad parameters.
    SchedulerUnreachableError
        No scheduler answered at the address given.
    WorkerModelError
        The dask workers could not load the model.
    """
    params = with_overrides(params, overrides)
    paths = find_sources(sources)
    out = Path(out_dir).expanduser().absolute()
    plans = plan_outputs(paths, out, _model_name(model))
    options = VolumeOptions(axes=axes, level=level, channel=channel, time=time)
    with connect(client, n_workers, timeout=timeout) as where:
        loaded = _load(model, "cpu" if where.client is not None else device, progress)
        out.mkdir(parents=True, exist_ok=True)
        batch = BatchState(plans, params, link=link, tiff=tiff, callback=callback, cancel=cancel)
        works = batch.prepare(loaded, options, recompute)
        batch.open_bar(progress)
        try:
            if where.client is None:
                finished = _run_here(works, loaded, batch, torch_threads)
            else:
                spec = ModelSpec(_spec_source(loaded), device, loaded.sha256)
                plugin = ModelPlugin(spec, torch_threads or where.torch_threads)
                finished = run_on_cluster(works, where.client, plugin, batch)
        finally:
            batch.close_bar()
    return batch.results(cancelled=not finished)


def _run_here(works: list[Work], model: SamModel, batch: BatchState, threads: int | None) -> bool:
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    runner = SliceRunner(model)
    try:
        return run_here(works, runner, batch)
    finally:
        runner.close()
        torch.set_num_threads(before)


def _model_name(model: Any) -> str:
    """The name :func:`load_model` will give ``model`` (a registry name or the file name)."""
    from ..weights import list_models

    if hasattr(model, "name") and not isinstance(model, str | os.PathLike):
        return str(model.name)
    return str(model) if str(model) in list_models() else Path(model).name


def _load(model: Any, device: str, progress: bool) -> SamModel:
    from ..model import as_model

    return as_model(model, device=device, progress=progress)


def _spec_source(model: SamModel) -> str:
    from ..weights import list_models

    if model.name in list_models():
        return model.name
    if model.checkpoint is None:
        raise ValueError("a model without a checkpoint file cannot be sent to dask workers")
    return str(Path(model.checkpoint).absolute())
