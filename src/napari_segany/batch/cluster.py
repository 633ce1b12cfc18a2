"""Where a batch runs: this process, a LocalCluster sized to the machine, or a dask scheduler.

A cluster started here is closed when the run ends; a client given by the user is left
as it was (but for the worker plugin that loads the model, see :mod:`.worker`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["SchedulerUnreachableError", "Where", "connect", "local_cluster_size"]

LOCAL = "local"
CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a scheduler given by address before giving up."""


class SchedulerUnreachableError(ConnectionError):
    """No dask scheduler answered at the address given."""


@dataclass
class Where:
    """Where the slices are segmented.

    Attributes
    ----------
    client
        The dask client, or None to segment in this process.
    torch_threads
        Torch threads per worker to set, or None to let each worker decide.
    description
        For messages: ``"this process"``, ``"LocalCluster of 2 workers"``, an address.
    """

    client: Client | None
    torch_threads: int | None
    description: str


def local_cluster_size(n_workers: int | None = None) -> tuple[int, int]:
    """Workers and torch threads per worker for a LocalCluster on this machine.

    By default one worker per four cores (at least one), each giving torch its share of
    the cores: torch runs one slice fastest with a few threads, and every worker holds a
    copy of the model.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if n_workers is None:
        n_workers = max(1, cores // 4)
    return n_workers, max(1, cores // n_workers)


@contextlib.contextmanager
def connect(
    client: Any = None,
    n_workers: int | None = None,
    *,
    timeout: float = CONNECT_TIMEOUT,
) -> Iterator[Where]:
    """Where to run, for the time of a batch.

    Parameters
    ----------
    client
        None: this process. ``"local"``: a new LocalCluster of worker processes, closed
        afterwards. An address (``"tcp://host:8786"``): that scheduler. A
        :class:`distributed.Client`: used as it is, left open.
    n_workers
        Worker processes of the LocalCluster (only with ``"local"``).
    timeout
        Seconds to wait for a scheduler given by address.

    Raises
    ------
    SchedulerUnreachableError
        No scheduler answered at the address within ``timeout``.
    ValueError, TypeError
        ``n_workers`` without ``"local"``; a client of another kind.
    """
    if n_workers is not None:
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
        if client != LOCAL:
            raise ValueError(
                "n_workers sets the size of a LocalCluster: pass client='local' with it "
                "(the size of another cluster is the cluster's own business)"
            )
    if client is None:
        yield Where(None, None, "this process")
        return
    import dask
    from distributed import Client, LocalCluster

    if isinstance(client, Client):
        scheduler = client.scheduler
        assert scheduler is not None, "a started Client has its scheduler's address"
        yield Where(client, None, f"the dask cluster at {scheduler.address}")
        return
    if client == LOCAL:
        workers, threads = local_cluster_size(n_workers)
        environ = dict(os.environ)
        # One malloc arena in the workers: their tasks run in threads, whose own arenas
        # cannot keep the model's large blocks (device.keep_large_allocations). glibc reads
        # it when the process starts, so it must be in the environment the worker is
        # spawned with, not set afterwards (a Nanny's env=).
        spawn = {"distributed.nanny.pre-spawn-environ.MALLOC_ARENA_MAX": 1}
        try:
            with dask.config.set(spawn):
                cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,  # one slice at a time per model copy; torch: the cores
                    processes=True,
                    dashboard_address=":0",  # any free port: 8787 may be taken
                )
        finally:
            # dask's nannies set OMP_NUM_THREADS=1 (and malloc tuning) in this process's
            # environment for their children and leave it there; later subprocesses of the
            # user's (a second run, a test) would inherit it. Put it back as it was.
            os.environ.clear()
            os.environ.update(environ)
        try:
            with Client(cluster) as local:
                yield Where(local, threads, f"a LocalCluster of {workers} worker(s)")
        finally:
            cluster.close()
            os.environ.clear()  # again: a nanny that restarted a worker set it anew
            os.environ.update(environ)
        return
    if not isinstance(client, str):
        raise TypeError(
            "client must be None, 'local', a scheduler address or a distributed.Client, "
            f"got {type(client).__name__}"
        )
    try:
        remote = Client(client, timeout=timeout)
    except OSError as exc:  # distributed raises OSError on a timeout or a refusal
        raise SchedulerUnreachableError(
            f"no dask scheduler answered at {client!r} within {timeout:g} s ({exc}); "
            "check the address and that the scheduler is running"
        ) from None
    with remote:
        yield Where(remote, None, f"the dask cluster at {client}")
