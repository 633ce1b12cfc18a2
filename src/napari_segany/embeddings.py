"""The embedding store: image embeddings of every slice (and tile) of a volume, in zarr.

Layout of the zarr v3 group::

    features   (Z, T, 256, 64, 64) float16, one uncompressed chunk per slice and tile
    inputs     (Z, T) uint64, a digest of each tile's 8-bit model input (``check --full``)
    done       (Z,) uint8, one chunk per slice, set once all the slice's tiles are written
    attrs      the signature: format, model, preprocessing, tiles, source

Every chunk ends in a CRC-32C checksum (:mod:`.damage`): a damaged features chunk or done
flag counts as not done, and is computed again where the volume and model are at hand.

Chunk writes are atomic (zarr writes a temporary file and renames it) and a slice is
marked done only after its features are written, so a run killed at any moment leaves
every slice either done and valid or not done; the next run computes only those. Two
processes can fill one store at once: each chunk belongs to one slice and tile.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from . import damage
from .argument_errors import ArgumentError, Fix, Setting
from .encode import choose_batch_size, encode_tiles, tile_digest
from .model import ImageEmbedding, same_encoder
from .models import input_size
from .staging import remove_leftovers, staging_path
from .tiling import TileGrid, Window, tile_grid
from .volume.volume import Volume, open_volume

if TYPE_CHECKING:
    from .model import SamModel

__all__ = [
    "FEATURES_SHAPE",
    "FORMAT",
    "VERSION",
    "EmbeddingStore",
    "FillReport",
    "NotEmbeddedError",
    "StoreMismatchError",
    "embed",
    "signature",
]

FORMAT = "napari-segany.embeddings"
VERSION = 1
FEATURES_SHAPE = (256, 64, 64)


class StoreMismatchError(ArgumentError):
    """An existing store holds embeddings of another model, preprocessing or source.

    A ValueError whose fix is ``recompute=True`` (``--recompute`` on the command line).
    """


class NotEmbeddedError(LookupError):
    """A slice asked for is not in the store and may not be computed here."""


@dataclass(frozen=True)
class FillReport:
    """What one :meth:`EmbeddingStore.fill` did."""

    computed: list[int]
    skipped: int
    cancelled: bool
    seconds: float


def signature(volume: Volume, model: SamModel, grid: TileGrid) -> dict[str, Any]:
    """What a store's embeddings depend on; stored in its attributes, compared on reopening."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model.name, **model.identity},
        "preprocessing": {
            "limits": [float(v) for v in volume.limits],
            "input_size": model.image_size,
            "resize": "PIL bilinear on 8-bit levels",
        },
        "tiles": grid.to_attrs(),
        "source": {
            "shape": [int(s) for s in volume.shape],
            "dtype": str(volume.dtype),
            "rgb": bool(volume.rgb),
            "fingerprint": volume.fingerprint(),
            "description": volume.source,
            **_reopening(volume),
        },
    }


def _reopening(volume: Volume) -> dict[str, Any]:
    """How ``napari-segany check`` reopens a source given by path (nothing for arrays)."""
    source, options = volume.opened_from, volume.options
    if options is None or not isinstance(source, (str, os.PathLike)):
        return {}
    return {"path": os.path.abspath(os.fspath(source)), "options": options.to_dict()}


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Human-readable differences that make a stored signature unusable for ``wanted``."""
    out = []
    for key in ("format", "version"):
        if stored.get(key) != wanted[key]:
            out.append(f"{key} {stored.get(key)!r} (this version writes {wanted[key]!r})")
    s_model, w_model = stored.get("model", {}), wanted["model"]
    if not same_encoder(s_model, w_model):
        out.append(
            f"model {s_model.get('name')!r} (sha256 {str(s_model.get('sha256'))[:12]}) "
            f"instead of {w_model['name']!r} (sha256 {str(w_model['sha256'])[:12]})"
        )
    if stored.get("preprocessing") != wanted["preprocessing"]:
        out.append(
            f"preprocessing {stored.get('preprocessing')} instead of {wanted['preprocessing']}"
        )
    if stored.get("tiles") != wanted["tiles"]:
        out.append("tile geometry differs")
    s_src, w_src = stored.get("source", {}), wanted["source"]
    for key in ("shape", "dtype", "rgb", "fingerprint"):
        if s_src.get(key) != w_src[key]:
            out.append(f"source {key} {s_src.get(key)!r} instead of {w_src[key]!r}")
    return out


class EmbeddingStore:
    """Image embeddings of a volume's slices and tiles, kept in a zarr group.

    Make one with :func:`embed`; reopen an existing one with :meth:`open`. When the
    store knows its volume and model (as :func:`embed` returns it), :meth:`get`
    computes a missing slice on demand.

    Attributes
    ----------
    path
        The store's folder, or None for an in-memory store.
    signature
        What the embeddings were computed from (see :func:`signature`).
    grid
        The tile windows of every slice.
    """

    def __init__(
        self,
        group: zarr.Group,
        *,
        path: Path | None,
        volume: Volume | None = None,
        model: SamModel | None = None,
    ) -> None:
        self._group = group
        self.path = path
        self.signature: dict[str, Any] = dict(group.attrs)
        self.grid = TileGrid.from_attrs(self.signature["tiles"])
        self._features = _array(group, "features")
        self._done = _array(group, "done")
        self._inputs = _array(group, "inputs") if "inputs" in group else None  # stores since 0.x
        self.volume = volume
        self.model = model

    def __repr__(self) -> str:
        where = self.path or "memory"
        done = int(self.done().sum())
        return f"EmbeddingStore({where}, {done}/{len(self)} slices, {len(self.grid)} tile(s))"

    def __len__(self) -> int:
        return int(self._done.shape[0])

    @property
    def read_only(self) -> bool:
        """Whether this handle may write."""
        return bool(self._group.store.read_only)

    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = True) -> EmbeddingStore:
        """Open an existing store (no signature check: nothing to compare with).

        Raises
        ------
        FileNotFoundError
            No store at ``path``.
        ValueError
            ``path`` holds something else than an embedding store.
        """
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(f"no embedding store at {path}")
        group = zarr.open_group(path, mode="r" if read_only else "r+")
        if group.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is a zarr group but not a napari-segany embedding store")
        return cls(group, path=path)

    def done(self) -> np.ndarray:
        """Boolean ``(Z,)``: which slices are embedded (a damaged flag reads as not)."""
        return damage.flags(self._done)

    def missing(self) -> list[int]:
        """Indices of the slices not embedded yet, in order."""
        return [int(z) for z in np.flatnonzero(~self.done())]

    def is_done(self, z: int) -> bool:
        """Whether slice ``z`` is embedded."""
        return damage.flag(self._done, self._check(z))

    def _check(self, z: int) -> int:
        if not -len(self) <= z < len(self):
            raise IndexError(f"slice {z} is outside the volume's {len(self)} slices")
        return z % len(self)

    def _device(self) -> torch.device:
        return self.model.device if self.model is not None else torch.device("cpu")

    def get(self, z: int = 0, tile: int = 0, *, compute: bool = True) -> ImageEmbedding:
        """The embedding of slice ``z`` (window ``tile`` of a tiled slice).

        Parameters
        ----------
        z
            Slice index (0 for a 2D image).
        tile
            Window index in :attr:`grid` (0 for an untiled slice).
        compute
            Compute the slice now if it is missing (needs the volume and model).

        Raises
        ------
        NotEmbeddedError
            The slice is missing and cannot or may not be computed here.
        DamagedChunkError
            Its features are damaged on disk and cannot be computed again here (a store
            opened without its volume and model, or read-only).
        """
        z = self._check(z)
        if not self.is_done(z):
            if not compute or self.volume is None or self.model is None:
                raise NotEmbeddedError(
                    f"slice {z} is not embedded yet in {self.path or 'this in-memory store'}"
                    + ("" if compute else " (compute=False)")
                    + (
                        "; open it through embed(volume, model, ...) to compute it"
                        if compute
                        else ""
                    )
                )
            self.fill([z], progress=False)
        window = self.grid.windows[tile]
        try:
            data = damage.read(self._features, (z, tile), store=self._where(), hint=self._hint())
        except damage.DamagedChunkError:
            if not self._computable():
                raise
            self.forget([z])  # damaged: computed again, as if never done
            self.fill([z], progress=False)
            data = damage.read(self._features, (z, tile), store=self._where())
        features = torch.from_numpy(data).to(self._device(), torch.float32)
        size = (window[2] - window[0], window[3] - window[1])
        return ImageEmbedding(features[None], size, input_size(size))

    def _where(self) -> str:
        return f"the embedding store {self.path}" if self.path else "the in-memory embedding store"

    def _hint(self) -> str:
        return f"`napari-segany check --repair {self.path}` computes it again" if self.path else ""

    def _computable(self) -> bool:
        return self.volume is not None and self.model is not None and not self.read_only

    def forget(self, slices: Iterable[int]) -> None:
        """Mark ``slices`` not done, so that :meth:`fill` computes them again."""
        for z in slices:
            self._done[self._check(z)] = 0

    def intact_on_disk(self, z: int) -> bool:
        """Whether the files of done slice ``z``'s features have their full size (a stat per
        tile: a chunk cut short is found without reading it)."""
        expected = int(np.prod(self._features.chunks)) * self._features.dtype.itemsize
        expected += 4 if damage.has_checksum(self._features) else 0
        for t in range(len(self.grid)):
            file = damage.chunk_file(self._features, (self._check(z), t, 0, 0, 0))
            if file is None:
                return True  # not a local store: found when read
            try:
                if file.stat().st_size != expected:
                    return False
            except FileNotFoundError:
                return False
        return True

    def damaged(self, *, full: bool = False) -> dict[int, str]:
        """The slices whose features, input digests or done flag are damaged, and why.

        Every chunk of the done slices is read back and checked. With ``full``, the done
        slices whose source changed since they were embedded are added (see
        :meth:`changed`).
        """
        out = {
            z: f"its done flag is damaged: {why}" for (z,), why in damage.damaged_chunks(self._done)
        }
        done = [int(z) for z in np.flatnonzero(self.done())]
        tiles = [(z, t) for z in done for t in range(len(self.grid))]
        for (z, t, *_), why in damage.damaged_chunks(
            self._features, [(*i, 0, 0, 0) for i in tiles]
        ):
            out.setdefault(z, f"the features of tile {t} are damaged: {why}")
        if self._inputs is not None:
            for (z, t), why in damage.damaged_chunks(self._inputs, tiles):
                out.setdefault(z, f"the input digest of tile {t} is damaged: {why}")
        for z in done:
            if z not in out and not self.intact_on_disk(z):
                out[z] = "its features are missing on disk"
        if full:
            out.update({z: why for z, why in self.changed().items() if z not in out})
        return dict(sorted(out.items()))

    def changed(self) -> dict[int, str]:
        """The done slices whose model input (the source, read and scaled as when they were
        embedded) differs from the one their embeddings were computed from.

        Reads the whole source: an edit anywhere is seen, also where the signature's
        fingerprint does not look.

        Raises
        ------
        NotEmbeddedError
            The store was opened without its volume.
        ValueError
            The store was made before input digests were kept.
        """
        if self.volume is None:
            raise NotEmbeddedError("comparing with the source needs the store's volume")
        if self._inputs is None:
            raise ValueError(
                f"{self._where()} was made before input digests were kept: it cannot be "
                "compared with its whole source (embed it again into a new store)"
            )
        size = int(self.signature["preprocessing"]["input_size"])
        stored = np.asarray(self._inputs[:])
        out = {}
        for z in np.flatnonzero(self.done()):
            for t, window in enumerate(self.grid.windows):
                if int(stored[z, t]) != tile_digest(self.volume, int(z), window, size):
                    out[int(z)] = f"tile {t} of the source changed since it was embedded"
                    break
        return out

    def at_point(self, z: int, y: float, x: float) -> tuple[ImageEmbedding, Window]:
        """The embedding of the window in which ``(y, x)`` lies deepest, and that window."""
        tile = self.grid.window_for_point(y, x)
        return self.get(z, tile), self.grid.windows[tile]

    def fill(
        self,
        slices: Iterable[int] | None = None,
        *,
        first: int | None = None,
        batch_size: int | None = None,
        progress: bool = True,
        callback: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> FillReport:
        """Compute the missing slices among ``slices`` (default: all).

        Parameters
        ----------
        slices
            Slice indices to make sure of; those already done are skipped.
        first
            A slice to compute before all others (the one a user looks at).
        batch_size
            Tiles per encoder pass; default from free GPU memory (1 on CPU).
        progress
            Show a progress bar.
        callback
            Called as ``callback(done, total)`` after each batch (for GUIs).
        cancel
            Polled between batches; when it returns True, stop (finished slices stay).
        """
        if self.volume is None or self.model is None:
            raise NotEmbeddedError("this store was opened without its volume and model")
        if self.read_only:
            raise PermissionError(f"the embedding store {self.path} is open read-only")
        start = time.perf_counter()
        wanted = range(len(self)) if slices is None else [self._check(z) for z in slices]
        done = self.done()
        todo = [z for z in dict.fromkeys(wanted) if not done[z] or not self.intact_on_disk(z)]
        if first is not None and self._check(first) in todo:
            todo.remove(first % len(self))
            todo.insert(0, first % len(self))
        items = [(z, t) for z in todo for t in range(len(self.grid))]
        size = batch_size or choose_batch_size(self.model)
        tiles_left = {z: len(self.grid) for z in todo}
        computed: list[int] = []
        cancelled = False
        bar = tqdm(total=len(todo), desc="embedding", unit="slice", disable=not progress)
        batches = encode_tiles(self.volume, self.model, self.grid, items, size)
        try:
            for batch_items, features, digests in batches:
                self._write(batch_items, features, digests, tiles_left, computed, bar)
                if callback is not None:
                    callback(len(computed), len(todo))
                if cancel is not None and cancel():
                    cancelled = len(computed) < len(todo)
                    break
        finally:
            batches.close()
            bar.close()
        skipped = len(list(wanted)) - len(todo)
        return FillReport(computed, skipped, cancelled, time.perf_counter() - start)

    def _write(
        self,
        items: list[tuple[int, int]],
        features: np.ndarray,
        digests: list[int],
        tiles_left: dict[int, int],
        computed: list[int],
        bar: tqdm,
    ) -> None:
        """Write one batch; mark each slice done once all its tiles are written."""
        try:
            for (z, t), f, digest in zip(items, features, digests, strict=True):
                self._features[z, t] = f
                if self._inputs is not None:
                    self._inputs[z, t] = digest
                tiles_left[z] -= 1
                if tiles_left[z] == 0:
                    self._done[z] = 1  # after the features: a crash never marks a slice done
                    computed.append(z)
                    bar.update(1)
        except OSError as err:  # read-only or full file system
            raise PermissionError(
                f"cannot write to the embedding store {self.path}: {err}"
            ) from err


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of a store's group (every store made here has it as an array)."""
    node = group[name]
    assert isinstance(node, zarr.Array), f"{name} in an embedding store is not an array"
    return node


def _create(group: zarr.Group, sig: dict[str, Any], n_slices: int, n_tiles: int) -> None:
    group.create_array(
        "features",
        shape=(n_slices, n_tiles, *FEATURES_SHAPE),
        chunks=(1, 1, *FEATURES_SHAPE),
        dtype="float16",
        # fp16 features barely compress: raw chunks (read in ~1 ms) with a checksum
        compressors=damage.with_checksum(),
        fill_value=0,
    )
    group.create_array(
        "inputs",
        shape=(n_slices, n_tiles),
        chunks=(1, 1),
        dtype="uint32",
        compressors=damage.with_checksum(),
        fill_value=0,
    )
    damage.create_done_flags(group, n_slices)
    group.attrs.update(sig)


def _create_atomically(path: Path, sig: dict[str, Any], n_slices: int, n_tiles: int) -> bool:
    """Build the store beside ``path`` and rename it into place in one step.

    Another process opening ``path`` sees either no store or a complete one, never a
    group without its arrays or signature. Returns False when another process got
    there first (its store is then the one to open).
    """
    remove_leftovers(path)
    staging = staging_path(path)
    try:
        _create(zarr.open_group(staging, mode="w-"), sig, n_slices, n_tiles)
        os.rename(staging, path)  # fails if path exists and is not empty
        return True
    except OSError:
        if not (path / "zarr.json").is_file():
            raise
        return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _open_or_create(path: Path | None, sig: dict[str, Any], recompute: bool) -> zarr.Group:
    n_slices, n_tiles = sig["source"]["shape"][0], len(sig["tiles"]["windows"])
    if path is None:
        group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
        _create(group, sig, n_slices, n_tiles)
        return group
    if not (path / "zarr.json").is_file():
        if path.exists() and any(path.iterdir()):
            raise ValueError(f"{path} exists and is not an embedding store; choose another path")
        if path.exists():
            path.rmdir()  # an empty folder: rename needs the name free
        path.parent.mkdir(parents=True, exist_ok=True)
        if _create_atomically(path, sig, n_slices, n_tiles):
            return zarr.open_group(path, mode="r+")
    group = zarr.open_group(path, mode="r+")
    stored: dict[str, Any] = dict(group.attrs)
    if stored.get("format") != FORMAT:
        raise ValueError(f"{path} is a zarr group but not a napari-segany embedding store")
    diffs = _differences(stored, sig)
    if not diffs:
        model = stored.get("model", {})
        if not model.get("encoder_sha256") and sig["model"]["encoder_sha256"]:
            # A store from before encoders had their own sha256, opened by its own model:
            # record the encoder's, so that decoders tuned from the model may read it too.
            try:
                group.attrs["model"] = {**model, "encoder_sha256": sig["model"]["encoder_sha256"]}
            except OSError:  # a store on read-only media stays as it is
                pass
        return group
    if not recompute:
        raise StoreMismatchError(
            f"the embedding store {path} does not match this volume and model: "
            + "; ".join(diffs)
            + ". Nothing was changed",
            fix=Fix(
                (Setting("recompute"),), then=" to replace its embeddings, or choose another path"
            ),
        )
    shutil.rmtree(path)
    _create_atomically(path, sig, n_slices, n_tiles)
    return zarr.open_group(path, mode="r+")


def embed(
    volume: Volume | Any,
    model: SamModel,
    path: str | Path | None = None,
    *,
    slices: Iterable[int] | None = None,
    first: int | None = None,
    compute: bool = True,
    recompute: bool = False,
    tile_size: int = 1024,
    halo: int = 128,
    batch_size: int | None = None,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> EmbeddingStore:
    """Embed a volume's slices into a store on disk (resumable) or in memory.

    Parameters
    ----------
    volume
        From :func:`napari_segany.open_volume`, or anything it opens with its defaults
        (a numpy or dask array, a TIFF or zarr path).
    model
        From :func:`napari_segany.load_model`.
    path
        The store's folder (a zarr v3 group, e.g. ``"stack.embeddings.zarr"``); None
        keeps the embeddings in memory.
    slices
        Which slices to compute now (default: all); the rest are computed on demand.
    first
        A slice to compute before all others.
    compute
        False: only create or open the store; slices are computed on demand by
        :meth:`EmbeddingStore.get`.
    recompute
        Replace a store whose signature does not match instead of raising.
    tile_size, halo
        Tiling of slices larger than 1.5 tiles (see :func:`napari_segany.tiling.tile_grid`).
    batch_size
        Tiles per encoder pass (default: from free GPU memory; 1 on CPU).
    progress, callback, cancel
        Progress bar, ``callback(done, total)`` after each batch, and a cancel poll
        (see :meth:`EmbeddingStore.fill`).

    Raises
    ------
    StoreMismatchError
        An existing store at ``path`` holds embeddings of another model, preprocessing
        or source (and ``recompute`` is False).
    PermissionError
        The store cannot be written.
    """
    if not isinstance(volume, Volume):
        volume = open_volume(volume)
    grid = tile_grid(volume.slice_shape, tile_size=tile_size, halo=halo)
    sig = signature(volume, model, grid)
    target = None if path is None else Path(path)
    group = _open_or_create(target, sig, recompute)
    store = EmbeddingStore(group, path=target, volume=volume, model=model)
    if compute:
        store.fill(
            slices,
            first=first,
            batch_size=batch_size,
            progress=progress,
            callback=callback,
            cancel=cancel,
        )
    return store
