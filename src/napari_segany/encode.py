"""Batched image encoding of volume slices and tiles.

Tiles are read and preprocessed on a background thread while the encoder runs on the
previous batch, so a GPU is not left waiting for the disk or for PIL.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import google_crc32c
import numpy as np
import torch

from .preprocess import model_input
from .tiling import TileGrid

if TYPE_CHECKING:
    from .model import SamModel
    from .volume.volume import Volume

__all__ = [
    "MAX_BATCH",
    "choose_batch_size",
    "encode_tiles",
    "input_digest",
    "tile_digest",
]

#: Rough peak memory of one image through each encoder in bf16 on a GPU (activations,
#: attention matrices), used only to size batches; erring high costs some throughput.
_GPU_BYTES_PER_IMAGE = {
    "mobile_sam": 1.0 * 2**30,
    "vit_b": 2.0 * 2**30,
    "vit_l": 3.0 * 2**30,
    "vit_h": 4.0 * 2**30,
}
MAX_BATCH = 32


def choose_batch_size(
    model: SamModel, free_bytes: int | None = None, *, fraction: float = 0.7
) -> int:
    """Slices (tiles) per encoder pass: from free GPU memory, 1 on CPU and MPS.

    On the CPU a batch gains nothing (the matrix products already use every core) and
    costs memory. ``free_bytes`` overrides the CUDA query (for tests and planning).
    """
    if free_bytes is None:
        if model.device.type != "cuda":
            return 1
        free_bytes, _ = torch.cuda.mem_get_info(model.device)
    per_image = _GPU_BYTES_PER_IMAGE.get(model.architecture, 4.0 * 2**30)
    return int(max(1, min(MAX_BATCH, fraction * free_bytes // per_image)))


def _prepare(
    volume: Volume, model: SamModel, grid: TileGrid, items: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, list[tuple[int, int]], list[int]]:
    """Read, scale and resize the tiles ``items`` = ``[(z, tile), ...]`` (on the CPU).

    Returns the 8-bit pixels ``(B, 3, S, S)``, each resized tile at the top left (a quarter
    of the bytes of float32 to send to the device), each one's resized ``(h, w)``, and each
    one's :func:`input_digest`.
    """
    batch = torch.zeros(len(items), 3, model.image_size, model.image_size, dtype=torch.uint8)
    sizes, digests = [], []
    for i, (z, t) in enumerate(items):
        rgb = model_input(volume.model_slice(z, region=grid.windows[t]), model.image_size)
        h, w = rgb.shape[:2]
        batch[i, :, :h, :w] = torch.from_numpy(rgb).permute(2, 0, 1)
        sizes.append((h, w))
        digests.append(input_digest(rgb))
    return batch.pin_memory() if model.device.type == "cuda" else batch, sizes, digests


def tile_digest(volume: Volume, z: int, window: tuple[int, int, int, int], size: int) -> int:
    """The :func:`input_digest` of one tile of slice ``z``, read and resized as for the model."""
    return input_digest(model_input(volume.model_slice(z, region=window), size))


def input_digest(rgb: np.ndarray) -> int:
    """A CRC-32C of a tile's 8-bit model input: what its embedding was computed from.

    About 0.4 ms for a 1024 x 1024 tile (a cryptographic hash takes ten times as long, in
    the thread that must keep a GPU fed); an edit that leaves it unchanged is one in 2^32.
    """
    return int(google_crc32c.value(np.ascontiguousarray(rgb).tobytes()))


def _normalised(
    model: SamModel, pixels: torch.Tensor, sizes: list[tuple[int, int]]
) -> torch.Tensor:
    """Normalise and zero-pad :func:`_prepare`'s pixels on the model's device."""
    x = pixels.to(model.device, non_blocking=True).float()
    x = (x - model.net.pixel_mean) / model.net.pixel_std
    for i, (h, w) in enumerate(sizes):  # padding is zero after normalising
        x[i, :, h:, :] = 0
        x[i, :, :h, w:] = 0
    return x


def encode_tiles(
    volume: Volume,
    model: SamModel,
    grid: TileGrid,
    items: Sequence[tuple[int, int]],
    batch_size: int,
) -> Generator[tuple[list[tuple[int, int]], np.ndarray, list[int]], None, None]:
    """Yield ``(items of the batch, float16 features (B, 256, 64, 64), input digests)``
    batch by batch.

    The generator may be closed between batches (cancellation); nothing is left running.
    """
    batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segany-prefetch") as pool:
        pending = pool.submit(_prepare, volume, model, grid, batches[0])
        for i, batch_items in enumerate(batches):
            pixels, sizes, digests = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(_prepare, volume, model, grid, batches[i + 1])
            features = model.encode(_normalised(model, pixels, sizes))
            yield batch_items, features.to(torch.float16).cpu().numpy(), digests
