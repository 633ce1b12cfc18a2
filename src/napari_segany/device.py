"""Choosing the torch device: CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

import torch

__all__ = [
    "choose_device",
    "keep_large_allocations",
]


def choose_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` (or a device name) to an available :class:`torch.device`.

    Parameters
    ----------
    device
        ``"auto"`` picks CUDA when available, then MPS, then the CPU; any other value is
        taken as a torch device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Raises
    ------
    ValueError
        If the named device does not exist on this machine.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or mps") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU here")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here")
    return resolved


_ALLOCATOR_TUNED = False


def keep_large_allocations() -> bool:
    """Let glibc reuse freed large blocks instead of returning them to the system.

    By default glibc maps every block over 32 MiB afresh and unmaps it when freed, so
    each of the encoder's 64 MiB activations pays for page faults again (about a quarter
    of MobileSAM's CPU encoder time). Raising the mmap and trim thresholds keeps such
    blocks in the heap for reuse; the price is that the process keeps its peak memory.

    Threads other than the main one get malloc arenas of their own, whose heaps cannot
    hold blocks over 64 MiB, so there the large blocks are mapped afresh whatever the
    thresholds (the model then runs 20-30% slower in a napari or dask worker thread than
    in the main thread). The arena count is therefore capped at one: threads started
    afterwards share the main heap. Threads that already allocated keep their arena;
    ``MALLOC_ARENA_MAX=1`` in the environment covers every thread from the start.

    Applied once per process by :func:`napari_segany.load_model` for CPU models with
    ``fast=True`` and by the napari widget when it opens;
    ``NAPARI_SEGANY_KEEP_MALLOC=1`` leaves the allocator alone. Returns whether the
    setting is in force (False off glibc).
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("NAPARI_SEGANY_KEEP_MALLOC"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    ok = mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, 1 << 31)
    ok = ok and mallopt(m_arena_max, 1)
    _ALLOCATOR_TUNED = bool(ok)
    return _ALLOCATOR_TUNED
