"""Damaged chunks: every chunk we write carries a checksum, and a chunk that fails it (or
is cut short, or does not decompress) is named by store, array and chunk.

Stores made by this version append zarr v3's ``crc32c`` codec to each array's codecs, so
a flipped byte anywhere in a chunk is found when the chunk is read. Arrays made before it
(no checksum) are still read; there a truncated or undecodable chunk is found, a flipped
byte in an uncompressed chunk is not.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.storage
from zarr.codecs import Crc32cCodec, ZstdCodec

__all__ = [
    "CHECKSUM",
    "DamagedChunkError",
    "check_chunk",
    "chunk_file",
    "chunk_key",
    "chunks_in",
    "create_done_flags",
    "damaged_chunks",
    "default_compressors",
    "discard",
    "flag",
    "flags",
    "grid_shape",
    "has_checksum",
    "read",
    "reason",
    "store_of",
    "with_checksum",
]

CHECKSUM = Crc32cCodec()
"""The codec that appends a CRC-32C of each chunk's bytes (checked on every read)."""

_DECODE_ERRORS = (ValueError, RuntimeError, EOFError)
"""What zarr's codecs raise for a chunk they cannot decode (checksum, size, zstd)."""


class DamagedChunkError(RuntimeError):
    """A chunk of a store cannot be read back: its checksum fails, it is cut short, or it
    does not decompress.

    Attributes
    ----------
    store
        The store's folder (or a description of an in-memory store).
    array
        The array's path inside the store, e.g. ``"features"`` or ``"labels/segany/0"``.
    chunk
        The chunk's grid coordinates.
    reason
        What is wrong, in words.
    """

    def __init__(
        self, store: str, array: str, chunk: tuple[int, ...], reason: str, hint: str = ""
    ) -> None:
        self.store, self.array, self.chunk, self.reason = store, array, chunk, reason
        key = "/".join(str(c) for c in chunk)
        super().__init__(
            f"{store}: chunk {key} of the array {array!r} is damaged ({reason})"
            + (f"; {hint}" if hint else "")
        )


def with_checksum(*compressors: Any) -> tuple[Any, ...]:
    """``compressors`` for ``create_array``: the given ones, then the checksum."""
    return (*compressors, CHECKSUM)


def default_compressors() -> tuple[Any, ...]:
    """zarr's default compressor for integer arrays (zstd), then the checksum."""
    return with_checksum(ZstdCodec(level=0))


def has_checksum(array: zarr.Array) -> bool:
    """Whether ``array``'s chunks carry a checksum."""
    return any(isinstance(c, Crc32cCodec) for c in array.compressors)


def chunk_key(array: zarr.Array, chunk: Sequence[int]) -> str:
    """The store key of ``chunk`` relative to the array, e.g. ``"c/3/0/1"``."""
    return array.metadata.encode_chunk_key(tuple(int(c) for c in chunk))


def chunk_file(array: zarr.Array, chunk: Sequence[int]) -> Path | None:
    """The file holding ``chunk`` of an array in a local store (None elsewhere)."""
    store = array.store
    if not isinstance(store, zarr.storage.LocalStore):
        return None
    return Path(store.root) / array.path / chunk_key(array, chunk)


def reason(error: BaseException) -> str:
    """What a decode error means, in words."""
    text = str(error)
    if "checksum" in text.lower():
        return "its checksum does not match its bytes"
    if "reshape" in text or "size" in text.lower():
        return "it is cut short or too long"
    if "ecompress" in text:
        return "it does not decompress"
    return f"it cannot be decoded: {text.splitlines()[0] if text else type(error).__name__}"


def check_chunk(array: zarr.Array, chunk: Sequence[int]) -> str | None:
    """None when ``chunk`` reads back, else why it does not."""
    try:
        array.get_block_selection(tuple(int(c) for c in chunk))
    except _DECODE_ERRORS as error:
        return reason(error)
    return None


def chunks_in(array: zarr.Array, selection: Any) -> Iterator[tuple[int, ...]]:
    """The grid coordinates of the chunks a basic selection (ints and slices) touches."""
    if not isinstance(selection, tuple):
        selection = (selection,)
    ranges = []
    for axis, (n, c) in enumerate(zip(array.shape, array.chunks, strict=True)):
        item = selection[axis] if axis < len(selection) else slice(None)
        if isinstance(item, slice):
            start, stop, _ = item.indices(n)
            if stop <= start:
                return
        else:
            start = int(item) + n if int(item) < 0 else int(item)
            stop = start + 1
        ranges.append(range(start // c, (stop - 1) // c + 1))
    yield from itertools.product(*ranges)


def store_of(array: zarr.Array) -> str:
    """The folder of ``array``'s store, or a description of a store elsewhere."""
    store = array.store
    if isinstance(store, zarr.storage.LocalStore):
        return str(store.root)
    return f"a {type(store).__name__}"


def read(
    array: zarr.Array,
    selection: Any,
    *,
    store: str | os.PathLike[str] | None = None,
    hint: str = "",
) -> Any:
    """``array[selection]``, or :class:`DamagedChunkError` naming the first damaged chunk
    (``store`` names the store in the message; default: its folder)."""
    try:
        return array[selection]
    except _DECODE_ERRORS as error:
        for chunk in chunks_in(array, selection):
            why = check_chunk(array, chunk)
            if why is not None:
                where = str(store) if store is not None else store_of(array)
                raise DamagedChunkError(where, array.path, chunk, why, hint) from error
        raise


def damaged_chunks(
    array: zarr.Array, chunks: Sequence[Sequence[int]] | None = None
) -> list[tuple[tuple[int, ...], str]]:
    """Every damaged chunk of ``array`` (or of ``chunks``) with why, in grid order."""
    grid = (
        chunks if chunks is not None else itertools.product(*(range(n) for n in grid_shape(array)))
    )
    out = []
    for chunk in grid:
        why = check_chunk(array, chunk)
        if why is not None:
            out.append((tuple(int(c) for c in chunk), why))
    return out


def grid_shape(array: zarr.Array) -> tuple[int, ...]:
    """Chunks per axis."""
    return tuple(-(-n // c) for n, c in zip(array.shape, array.chunks, strict=True))


def create_done_flags(group: zarr.Group, count: int) -> zarr.Array:
    """A store's ``done`` array: one uint8 flag per slice, each a chunk with its checksum
    (so that writers of different slices never share a chunk)."""
    return group.create_array(
        "done",
        shape=(count,),
        chunks=(1,),
        dtype="uint8",
        compressors=with_checksum(),
        fill_value=0,
    )


def discard(array: zarr.Array, chunk: Sequence[int]) -> None:
    """Delete ``chunk`` from the store (it then reads as the fill value), so that a write of
    part of it does not read the damaged bytes."""
    from zarr.core.sync import sync

    sync(array.store.delete(f"{array.path}/{chunk_key(array, chunk)}"))


def flag(array: zarr.Array, index: int) -> bool:
    """One done flag; a damaged one reads as not done."""
    try:
        return bool(array[index])
    except _DECODE_ERRORS:
        return False


def flags(array: zarr.Array) -> np.ndarray:
    """A ``(N,)`` done-flag array read as booleans; a damaged flag reads as not done."""
    try:
        return np.asarray(array[:]).astype(bool)
    except _DECODE_ERRORS:
        out = np.zeros(array.shape, dtype=bool)
        for (i,) in itertools.product(range(grid_shape(array)[0])):
            if check_chunk(array, (i,)) is None:
                c = array.chunks[0]
                out[i * c : (i + 1) * c] = np.asarray(array[i * c : (i + 1) * c]).astype(bool)
        return out
