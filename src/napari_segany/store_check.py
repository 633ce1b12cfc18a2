"""Check our stores chunk by chunk and repair what can be repaired: ``napari-segany check``.

- An embedding store: every done slice's features, input digests and flag are read back;
  with ``full``, the whole source is read again and compared tile by tile with the digests
  the embeddings were computed from. Repair computes the damaged or stale slices again.
- A slice store (automatic segmentation's per-slice results): every done slice's labels
  and flag. Repair marks them not done and runs the batch segmentation again, which
  segments only them and links the volume's labels anew.
- Labels (an OME-Zarr holding ``labels/<name>``, or the label image): every chunk of every
  level and every saved box of the journal. Repair rebuilds damaged chunks from the journal
  (:mod:`.labels.repair`); labels a batch run wrote are linked again from their slices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zarr

from .naming import LABELS_SUFFIX, SLICES_SUFFIX
from .volume.options import VolumeOptions

if TYPE_CHECKING:
    from .model import SamModel

__all__ = ["CheckReport", "check_store"]

EMBEDDINGS, SLICES, LABELS = "embedding store", "slice store", "labels"


@dataclass
class CheckReport:
    """What :func:`check_store` found in one store and what it repaired.

    Attributes
    ----------
    path
        The store.
    kind
        ``"embedding store"``, ``"slice store"`` or ``"labels"``.
    checked
        What was read back, in words (e.g. ``"12 slices, 1 tile each"``).
    problems
        One line per problem found.
    repaired
        One line per repair made.
    left
        Problems still there after the check (all of them without ``repair``).
    """

    path: Path
    kind: str
    checked: str = ""
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing is left damaged."""
        return not self.left

    def summary(self) -> str:
        """A few lines for the terminal."""
        head = f"{self.path}: {self.kind}, {self.checked}: "
        if not self.problems:
            return head + "intact"
        lines = [head + f"{len(self.problems)} problem(s)"]
        lines += [f"  damaged: {p}" for p in self.problems]
        lines += [f"  repaired: {r}" for r in self.repaired]
        lines += [f"  left: {r}" for r in self.left]
        return "\n".join(lines)


def check_store(
    path: str | os.PathLike[str],
    *,
    repair: bool = False,
    full: bool = False,
    model: str | os.PathLike[str] | SamModel | None = None,
    device: str = "auto",
    progress: bool = False,
) -> CheckReport:
    """Read back every chunk of the store at ``path``; with ``repair``, mend what can be.

    Parameters
    ----------
    path
        An embedding store, a slice store, or labels (see the module's description).
    repair
        Compute damaged embeddings and slices again; rebuild damaged labels from the
        journal (or link them again from their slices).
    full
        Embedding stores: also compare the whole source with what was embedded (an edit
        anywhere in it, also where the signature's fingerprint does not look).
    model
        The model to compute embeddings with; default: the one the store names.
    device
        Where to compute (``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``).
    progress
        Show progress bars while repairing.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        ``path`` is not one of our stores.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such store: {str(path)!r}")
    kind = store_kind(path)
    if kind == EMBEDDINGS:
        return _check_embeddings(path, repair, full, model, device, progress)
    if kind == SLICES:
        return _check_slices(path, repair, model, device, progress)
    return _check_labels(path, repair, model, device, progress)


def store_kind(path: Path) -> str:
    """Which of our stores is at ``path``."""
    from .batch.slices import FORMAT as SLICES_FORMAT
    from .embeddings import FORMAT as EMBEDDINGS_FORMAT

    if (path / "zarr.json").is_file():
        attrs = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r").attrs
        if attrs.get("format") == EMBEDDINGS_FORMAT:
            return EMBEDDINGS
        if attrs.get("format") == SLICES_FORMAT:
            return SLICES
        if _label_names(path):
            return LABELS
    raise ValueError(
        f"{str(path)!r} is not an embedding store, a slice store or an OME-Zarr with labels"
    )


# -- embedding stores ---------------------------------------------------------------------


def _check_embeddings(
    path: Path, repair: bool, full: bool, model: Any, device: str, progress: bool
) -> CheckReport:
    from .embeddings import EmbeddingStore

    store = EmbeddingStore.open(path, read_only=not repair)
    report = CheckReport(path, EMBEDDINGS, f"{len(store)} slices, {len(store.grid)} tile(s) each")
    if full or repair:
        store.volume = _reopen_source(store.signature, report)
    if full and store.volume is not None:
        wanted = store.signature["source"]["fingerprint"]
        if store.volume.fingerprint() != wanted:
            report.problems.append("the source changed where its fingerprint looks")
            report.left.append(
                "the source changed where its fingerprint looks: every slice is stale; "
                "embed it again with --recompute"
            )
            return report
    damaged = store.damaged(full=full and store.volume is not None)
    report.problems += [f"slice {z}: {why}" for z, why in damaged.items()]
    if not damaged or not repair:
        report.left = list(report.problems)
        return report
    if store.volume is None:
        report.left = list(report.problems)
        return report
    store.model = _model_for(store.signature, model, device, progress, report)
    if store.model is None:
        report.left = list(report.problems)
        return report
    store.forget(damaged)
    store.fill(list(damaged), progress=progress)
    still = store.damaged()
    for z in damaged:
        if z in still:
            report.left.append(f"slice {z}: {still[z]}")
        else:
            report.repaired.append(f"slice {z}: computed again")
    return report


def _reopen_source(signature: dict[str, Any], report: CheckReport) -> Any:
    """The store's source, opened as it was for embedding; None (and why) if it cannot be."""
    from .volume.volume import open_volume

    source = signature.get("source", {})
    if "path" not in source:
        report.left.append(
            "the store does not record where its source is (an array, or a store made "
            "before this version): repair and --full need it"
        )
        return None
    limits = tuple(signature["preprocessing"]["limits"])
    try:
        options = VolumeOptions.from_dict(source.get("options"))
        return open_volume(source["path"], **options.keywords(), limits=limits)
    except (OSError, ValueError) as exc:
        report.left.append(f"its source cannot be opened: {exc}")
        return None


def _model_for(
    signature: dict[str, Any], model: Any, device: str, progress: bool, report: CheckReport
) -> SamModel | None:
    """The model that made the store (``model`` if given), checked to have its encoder."""
    from .model import as_model, same_encoder

    wanted = signature["model"]
    loaded = as_model(model or wanted["name"], device=device, progress=progress)
    if not same_encoder(wanted, {"name": loaded.name, **loaded.identity}):
        report.left.append(
            f"the model {loaded.name!r} is not the one the store was made with "
            f"({wanted['name']!r}): pass the store's model"
        )
        return None
    return loaded


# -- slice stores -------------------------------------------------------------------------


def _check_slices(path: Path, repair: bool, model: Any, device: str, progress: bool) -> CheckReport:
    from .batch.slices import SliceStore

    store = SliceStore.open(path)
    report = CheckReport(path, SLICES, f"{len(store)} slices")
    damaged = store.damaged()
    report.problems += [f"slice {z}: {why}" for z, why in damaged.items()]
    if not damaged or not repair:
        report.left = list(report.problems)
        return report
    store.forget(damaged)
    _segment_again(store, model, device, progress, report)
    still = SliceStore.open(path).damaged()
    done = SliceStore.open(path).done()
    for z in damaged:
        if z in still or not done[z]:
            report.left.append(f"slice {z}: not segmented again")
        else:
            report.repaired.append(f"slice {z}: segmented again")
    return report


def _segment_again(
    slices: Any, model: Any, device: str, progress: bool, report: CheckReport
) -> None:
    """Run the batch segmentation of the slice store's source again, in its folder (it
    segments the slices not done and links the labels anew)."""
    from .automatic.params import AutomaticParams
    from .batch.segment import segment_files
    from .embeddings import EmbeddingStore
    from .naming import source_name

    stem = slices.path.name[: -len(SLICES_SUFFIX)]
    embeddings = [
        e
        for e in sorted(slices.path.parent.glob(f"{stem}.embeddings-*.zarr"))
        if EmbeddingStore.open(e).signature["model"].get("sha256")
        == slices.signature["model"]["sha256"]
    ]
    if not embeddings:
        report.left.append(f"no embedding store of the same model beside it ({stem}.embeddings-*)")
        return
    signature = EmbeddingStore.open(embeddings[0]).signature
    source = signature["source"].get("path")
    if source is None or source_name(Path(source)) != stem:
        report.left.append("its source is not recorded where the batch run can find it")
        return
    linked = slices.linked or {}
    params = AutomaticParams(
        **slices.signature["params"],
        **{k: linked[k] for k in ("link_iou", "min_signal_ratio") if k in linked},
    )
    segment_files(
        [source],
        slices.path.parent,
        model=model or signature["model"]["name"],
        params=params,
        link=bool(linked.get("link", True)),
        tiff=(slices.path.parent / f"{stem}.labels.tif").exists(),
        device=device,
        progress=progress,
        **VolumeOptions.from_dict(signature["source"].get("options")).keywords(),
    )


# -- labels -------------------------------------------------------------------------------


def _label_names(path: Path) -> list[tuple[Path, str]]:
    """``(root, name)`` of every label image at ``path`` (a root, or a label image)."""
    group = zarr.open_group(zarr.storage.LocalStore(path, read_only=True), mode="r")
    ome = group.attrs.get("ome")
    if isinstance(ome, dict) and "image-label" in ome:
        return [(path.parent.parent, path.name)]
    if (path / "labels" / "zarr.json").is_file():
        labels = zarr.open_group(zarr.storage.LocalStore(path / "labels", read_only=True), mode="r")
        ome = labels.attrs.get("ome")
        listed = ome.get("labels", []) if isinstance(ome, dict) else []
        if not isinstance(listed, list):
            return []
        return [(path, str(n)) for n in listed if (path / "labels" / str(n)).is_dir()]
    return []


def _check_labels(path: Path, repair: bool, model: Any, device: str, progress: bool) -> CheckReport:
    from .labels.files import SIDECAR
    from .labels.journal import Journal
    from .labels.layout import open_levels
    from .labels.lock import WriterLock
    from .labels.repair import find_damage, rebuild
    from .labels.store import LabelsStore

    names = _label_names(path)
    report = CheckReport(path, LABELS, f"{len(names)} label image(s)")
    for root, name in names:
        store = LabelsStore.open(root, name=name, read_only=True)
        levels = store._levels
        label_dir = root / "labels" / name
        journal = Journal(label_dir / SIDECAR)
        found = find_damage(levels, journal)
        chunks = [
            f"{name}: chunk {'/'.join(map(str, c))} of level {n}: {why}"
            for n, c, why in found.chunks
        ]
        boxes = [
            f"{name}: the saved box of change {s} cannot be read" for s in found.unreadable_regions
        ]
        report.problems += chunks + boxes
        if not repair:
            report.left += chunks + boxes
            continue
        batch = _batch_output(root) if found.chunks else None
        if batch is not None and not _journal_commits(journal):
            _relink(batch, model, device, progress, report, chunks)
            continue
        if found.chunks and not journal.exists():
            report.left += [c + " (no journal to rebuild it from)" for c in chunks]
            continue
        lock = WriterLock(label_dir / SIDECAR / "lock")
        try:
            if found.chunks:
                group = zarr.open_group(zarr.storage.LocalStore(root), path=f"labels/{name}")
                rebuild(open_levels(group, str(label_dir)), journal, found)
            for seq in found.unreadable_regions:  # undo stops before them
                (journal.regions / f"{seq:08d}.npz").unlink(missing_ok=True)
        finally:
            lock.release()
        LabelsStore.open(root, name=name).close()  # rolls back an interrupted change
        still = find_damage(LabelsStore.open(root, name=name, read_only=True)._levels, journal)
        if still.chunks:
            report.left += [
                f"{name}: chunk {c} of level {n} still damaged" for n, c, _ in still.chunks
            ]
            continue
        lost = (
            f"; {found.unknown_voxels} voxel(s) nothing recorded set to background"
            if found.unknown_voxels
            else ""
        )
        report.repaired += [c + " (rebuilt from the journal" + lost + ")" for c in chunks]
        report.repaired += [b + " (removed: undo stops before that change)" for b in boxes]
        if found.unknown_voxels:
            report.left.append(f"{name}: {found.unknown_voxels} voxel(s) could not be rebuilt")
    return report


def _journal_commits(journal: Any) -> int:
    if not journal.exists():
        return 0
    return sum(1 for e in journal.entries(repair=False) if e.get("action") == "commit")


def _batch_output(root: Path) -> Path | None:
    """The slice store beside labels a batch run wrote (``<stem>.labels.ome.zarr``)."""
    if not root.name.endswith(LABELS_SUFFIX):
        return None
    slices = root.with_name(root.name[: -len(LABELS_SUFFIX)] + SLICES_SUFFIX)
    return slices if (slices / "zarr.json").is_file() else None


def _relink(
    batch: Path, model: Any, device: str, progress: bool, report: CheckReport, chunks: list[str]
) -> None:
    """Segment the labels' slices again from ``batch``, the slice store of their batch run."""
    from .batch.slices import SliceStore

    slices = SliceStore.open(batch)
    slices.mark_linked(None)  # the batch run then links them again
    before = len(report.left)
    _segment_again(slices, model, device, progress, report)
    if len(report.left) == before:
        report.repaired += [c + " (linked again from the slices)" for c in chunks]
    else:
        report.left += chunks
