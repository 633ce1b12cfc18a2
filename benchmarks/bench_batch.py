"""Batch segmentation of a stack: a plain loop vs segment_files here and on 1 or 2 dask workers.

A synthetic stack of nuclei (``napari_segany.sample_data.nuclei_volume``, default 64
slices of 256 x 256) is written as a multi-page TIFF, and every configuration segments all
of it automatically with MobileSAM on the CPU, from the file to linked 3D labels, into a
fresh output folder:

- **loop**: what one writes with the public API alone: ``load_model``, ``open_volume``,
  ``embed`` into a store on disk (all slices first), ``segment_slice`` per slice, a
  ``SliceLinker`` through z, the labels saved with ``np.save``;
- **here**: ``segment_files(client=None)``, in the calling process;
- **local1**, **local2**: ``segment_files(client="local", n_workers=1 or 2)``: a dask
  ``LocalCluster`` of worker processes started and closed by the call.

Every configuration runs in a child process of its own (so none inherits another's model,
allocator state or torch settings), one after the other, with the same
``AutomaticParams``; the wall time is taken inside the child from just before the model
is loaded until the labels are on disk (model loading, cluster start-up and linking
included, Python start-up and imports not). While a child runs, this process samples
its process tree (the child and its dask workers) every ``--sample-interval`` seconds:
resident set (RSS), proportional set (PSS, shared pages split between the processes
sharing them), each process's own high-water mark (``VmHWM``) and CPU time (a sample
costs this process about 3 ms of CPU: ~1.5% of one core at 0.2 s). The load
average is recorded before and after each configuration, and the labels of every
configuration are compared with the first one's.

Then, on the embeddings the loop stored, ``segment_slice`` alone is timed per slice (the
automatic segmentation seconds per slice without embedding) at the run's
``points_per_side`` and at each ``--extra-points-per-side``, on ``--extra-slices`` slices
spread through the stack, in a child of its own.

Torch threads: by default each process keeps the package's choice, which is what a user
gets: torch's default in-process (all cores), and on a LocalCluster the cores divided
among the workers (``napari_segany.batch.cluster.local_cluster_size``). ``--threads N``
sets N threads in every process that segments (``torch_threads=N``). The JSON records
the threads of each configuration.

Usage::

    python benchmarks/bench_batch.py [--slices 64] [--size 256] [--points-per-side 8]
        [--configs loop here local1 local2] [--rounds 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from _timing import machine, markdown_table, percentile, write_json

MIB = 2**20
CONFIGS = ("loop", "here", "local1", "local2")
OPENMP_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MALLOC_ARENA_MAX")
DESCRIPTIONS = {
    "loop": "plain loop (embed, then segment_slice per slice, link)",
    "here": "segment_files(client=None)",
    "local1": 'segment_files(client="local", n_workers=1)',
    "local2": 'segment_files(client="local", n_workers=2)',
}


# --- the child processes ---------------------------------------------------------------------


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration (or the segmentation timing) and return what it measured."""
    import torch

    from napari_segany import AutomaticParams

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    params = AutomaticParams(**spec["params"])
    if spec["config"] == "segtime":
        return _child_segtime(spec, params)
    if spec["config"] == "loop":
        return _child_loop(spec, params)
    return _child_batch(spec, params)


def _child_loop(spec: dict[str, Any], params: Any) -> dict[str, Any]:
    import torch

    from napari_segany import Segmenter, SliceLinker, embed, load_model, open_volume, segment_slice

    out = Path(spec["out"])
    start = time.perf_counter()
    model = load_model("mobile_sam", device="cpu", progress=False)
    loaded = time.perf_counter()
    volume = open_volume(spec["source"], axes="ZYX")
    store = embed(volume, model, out / "stack.embeddings.zarr", progress=False)
    embedded = time.perf_counter()
    segmenter = Segmenter(model, store)
    local, seconds, done_at = [], [], []
    for z in range(len(volume)):
        t = time.perf_counter()
        local.append(segment_slice(segmenter, z, params))
        seconds.append(time.perf_counter() - t)
        done_at.append(time.perf_counter() - start)
    segmented = time.perf_counter()
    linker = SliceLinker(params.link_iou)
    labels = np.stack([linker.add(slice_labels, z) for z, slice_labels in enumerate(local)])
    np.save(out / "labels.npy", labels)
    end = time.perf_counter()
    volume.close()
    return {
        "seconds": end - start,
        "phases": {
            "load_model": loaded - start,
            "open_and_embed": embedded - loaded,
            "segment": segmented - embedded,
            "link_and_save": end - segmented,
        },
        "segment_seconds": seconds,
        "objects_per_slice": [int(s.max(initial=0)) for s in local],
        "done_at": done_at,
        "labels": str(out / "labels.npy"),
        "embeddings": str(out / "stack.embeddings.zarr"),
        "processes": 1,
        "torch_threads": torch.get_num_threads(),
    }


def _child_batch(spec: dict[str, Any], params: Any) -> dict[str, Any]:
    import torch

    from napari_segany import segment_files
    from napari_segany.batch.cluster import local_cluster_size

    config = spec["config"]
    workers = {"here": None, "local1": 1, "local2": 2}[config]
    done_at: list[float] = []
    start = time.perf_counter()
    results = segment_files(
        [spec["source"]],
        spec["out"],
        params=params,
        client=None if workers is None else "local",
        n_workers=workers,
        device="cpu",
        axes="ZYX",
        torch_threads=spec["threads"],
        progress=False,
        callback=lambda done, total: done_at.append(time.perf_counter() - start),
    )
    end = time.perf_counter()
    (result,) = results
    if not result.ok:
        raise RuntimeError(f"{config}: {result.summary()}")
    if workers is None:
        processes, threads = 1, spec["threads"] or torch.get_num_threads()
    else:
        processes, threads = workers, spec["threads"] or local_cluster_size(workers)[1]
    return {
        "seconds": end - start,
        "result_seconds": result.seconds,
        "done_at": done_at,
        "objects": result.objects,
        "labels": str(result.labels),
        "embeddings": str(next(Path(spec["out"]).glob("*.embeddings-*.zarr"))),
        "processes": processes,
        "torch_threads": threads,
    }


def _child_segtime(spec: dict[str, Any], params: Any) -> dict[str, Any]:
    """``segment_slice`` alone on stored embeddings, per points_per_side, interleaved."""
    import dataclasses

    import torch

    from napari_segany import EmbeddingStore, Segmenter, load_model, segment_slice

    model = load_model("mobile_sam", device="cpu", progress=False)
    segmenter = Segmenter(model, EmbeddingStore.open(spec["embeddings"]))
    variants = {n: dataclasses.replace(params, points_per_side=n) for n in spec["points"]}
    names = list(variants)
    segment_slice(segmenter, spec["slices"][0], variants[names[0]])  # warm-up, untimed
    seconds: dict[int, list[float]] = {n: [] for n in names}
    objects: dict[int, list[int]] = {n: [] for n in names}
    for r, z in enumerate(spec["slices"]):
        shift = r % len(names)
        for n in names[shift:] + names[:shift]:
            t = time.perf_counter()
            labels = segment_slice(segmenter, z, variants[n])
            seconds[n].append(time.perf_counter() - t)
            objects[n].append(int(labels.max(initial=0)))
    return {
        "slices": spec["slices"],
        "seconds": {str(n): v for n, v in seconds.items()},
        "objects": {str(n): v for n, v in objects.items()},
        "torch_threads": torch.get_num_threads(),
    }


# --- sampling a child's process tree ---------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _role(pid: int, root: int, cmdline: list[str]) -> str:
    if pid == root:
        return "main"
    text = " ".join(cmdline)
    if "spawn_main" in text or "forkserver" in text:
        return "worker"  # distributed starts its worker processes with multiprocessing
    if "resource_tracker" in text:
        return "resource_tracker"
    return "other"


@dataclass
class TreeSampler:
    """Samples memory and CPU time of a process and its descendants in a thread."""

    root: int
    interval: float
    processes: dict[int, dict[str, Any]] = field(default_factory=dict)
    peak_total_rss: int = 0
    peak_total_pss: int = 0
    peak_workers_rss: int = 0
    samples: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total_rss = total_pss = workers_rss = 0
        for proc in tree:
            try:
                status = _status(proc.pid)
                pss = _pss(proc.pid)
                cpu = proc.cpu_times()
                record = self.processes.get(proc.pid)
                if record is None:
                    cmdline = proc.cmdline()
                    record = self.processes[proc.pid] = {
                        "role": _role(proc.pid, self.root, cmdline),
                        "peak_rss": 0,
                        "hwm": 0,
                        "peak_pss": 0,
                        "cpu_seconds": 0.0,
                    }
            except (psutil.Error, OSError):
                continue  # it ended between the listing and the reading
            rss = status.get("VmRSS", 0)
            record["peak_rss"] = max(record["peak_rss"], rss)
            record["hwm"] = max(record["hwm"], status.get("VmHWM", 0))
            record["peak_pss"] = max(record["peak_pss"], pss)
            record["cpu_seconds"] = max(record["cpu_seconds"], cpu.user + cpu.system)
            total_rss += rss
            total_pss += pss
            if record["role"] == "worker":
                workers_rss += rss
        self.peak_total_rss = max(self.peak_total_rss, total_rss)
        self.peak_total_pss = max(self.peak_total_pss, total_pss)
        self.peak_workers_rss = max(self.peak_workers_rss, workers_rss)
        self.samples += 1

    def summary(self) -> dict[str, Any]:
        workers = [p for p in self.processes.values() if p["role"] == "worker"]
        main = self.processes.get(self.root, {})
        return {
            "main_peak_rss": max(main.get("hwm", 0), main.get("peak_rss", 0)),
            "worker_peak_rss": [max(w["hwm"], w["peak_rss"]) for w in workers],
            "peak_total_rss": self.peak_total_rss,
            "peak_total_pss": self.peak_total_pss,
            "peak_workers_rss": self.peak_workers_rss,
            "cpu_seconds": sum(p["cpu_seconds"] for p in self.processes.values()),
            "samples": self.samples,
            "processes": {str(pid): p for pid, p in self.processes.items()},
        }


def run_child(spec: dict[str, Any], work: Path, interval: float) -> dict[str, Any]:
    """Run a child process for ``spec``, sampling its process tree; its results and ours."""
    err_path = work / f"{spec['config']}-{spec.get('round', 0)}.stderr"
    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        try:
            stdout, _ = proc.communicate()
        finally:
            sampler.stop()
    wall = time.perf_counter() - started
    stderr = err_path.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['config']} failed ({proc.returncode}):\n{stderr[-4000:]}")
    child = json.loads(stdout.strip().splitlines()[-1])
    child["process_seconds"] = wall
    child["memory"] = sampler.summary()
    child["load_average_before"] = load_before
    child["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    child["stderr_tail"] = stderr[-2000:]
    return child


# --- comparing the outputs -------------------------------------------------------------------


def read_labels(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path)
    from napari_segany import LabelsStore

    store = LabelsStore.open(path, read_only=True)
    try:
        return np.asarray(store.read())
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def embedding_difference(a: str, b: str) -> float:
    from napari_segany import EmbeddingStore

    first, second = EmbeddingStore.open(a), EmbeddingStore.open(b)
    return max(
        float(np.abs(first.get(z).features.numpy() - second.get(z).features.numpy()).max())
        for z in range(len(first))
    )


def compare(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    ref, labels = read_labels(reference["labels"]), read_labels(other["labels"])
    identical = ref.shape == labels.shape and bool(np.array_equal(ref, labels))
    out: dict[str, Any] = {
        "identical": identical,
        "objects": int(len(np.unique(labels)) - 1),
        "reference_objects": int(len(np.unique(ref)) - 1),
    }
    if not identical and ref.shape == labels.shape:
        out["voxels_differing"] = int(np.count_nonzero(ref != labels))
        out["foreground_differing"] = int(np.count_nonzero((ref != 0) != (labels != 0)))
    out["max_abs_embedding_difference"] = embedding_difference(
        reference["embeddings"], other["embeddings"]
    )
    return out


# --- the run ---------------------------------------------------------------------------------


def write_stack(path: Path, slices: int, size: int, seed: int) -> dict[str, Any]:
    import tifffile

    from napari_segany.sample_data import nuclei_volume

    image, truth = nuclei_volume((slices, size, size), seed=seed)
    tifffile.imwrite(path, image, photometric="minisblack")
    per_slice = [int(len(np.unique(truth[z])) - 1) for z in range(slices)]
    return {
        "path": str(path),
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "bytes": path.stat().st_size,
        "nuclei": int(truth.max()),
        "nuclei_per_slice_mean": float(np.mean(per_slice)),
        "nuclei_per_slice_max": max(per_slice),
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from napari_segany import AutomaticParams

    params = AutomaticParams(
        points_per_side=args.points_per_side, points_per_batch=args.points_per_batch
    )
    source = work / "stack.tif"
    stack = write_stack(source, args.slices, args.size, args.seed)
    print(
        f"stack: {args.slices} x {args.size} x {args.size} {stack['dtype']}, "
        f"{stack['nuclei']} nuclei; points_per_side {args.points_per_side}",
        flush=True,
    )
    results: dict[str, Any] = {
        "benchmark": "bench_batch",
        "machine": machine(),
        "settings": {
            "slices": args.slices,
            "size": args.size,
            "seed": args.seed,
            "configs": args.configs,
            "rounds": args.rounds,
            "threads": args.threads,
            "sample_interval": args.sample_interval,
            "params": params.to_dict(),
            "model": "mobile_sam",
            "device": "cpu",
            "stack": stack,
        },
        "environment": {name: os.environ.get(name) for name in OPENMP_VARIABLES},
        "descriptions": {c: DESCRIPTIONS[c] for c in args.configs},
        "rounds": [],
    }
    base = {"source": str(source), "params": params.to_dict(), "threads": args.threads}
    for r in range(args.rounds):
        shift = r % len(args.configs)
        measured: dict[str, Any] = {}
        for config in args.configs[shift:] + args.configs[:shift]:
            out = work / f"round{r}" / config
            out.mkdir(parents=True)
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            print(f"round {r + 1}/{args.rounds}: {config} (load {load:.2f})", flush=True)
            child = run_child(
                {**base, "config": config, "out": str(out), "round": r},
                work,
                args.sample_interval,
            )
            measured[config] = child
            print(
                f"  {child['seconds']:.1f} s, {args.slices / child['seconds']:.3f} slices/s, "
                f"peak RSS {child['memory']['peak_total_rss'] / MIB:.0f} MiB in all",
                flush=True,
            )
        results["rounds"].append({c: measured[c] for c in args.configs})
    reference = args.configs[0]
    first = results["rounds"][0][reference]
    results["labels"] = {
        "reference": reference,
        "rounds": [
            {c: compare(first, rnd[c]) for c in args.configs if rnd[c] is not first}
            for rnd in results["rounds"]
        ],
    }
    if args.extra_slices > 0:
        points = [args.points_per_side] + [
            n for n in args.extra_points_per_side if n != args.points_per_side
        ]
        slices = sorted(
            {int(z) for z in np.linspace(0, args.slices - 1, args.extra_slices + 2)[1:-1]}
        )
        print(f"segment_slice alone: points_per_side {points} on slices {slices}", flush=True)
        spec = {
            **base,
            "config": "segtime",
            "embeddings": first["embeddings"],
            "points": points,
            "slices": slices,
        }
        results["segmentation"] = run_child(spec, work, args.sample_interval)
    if hasattr(os, "getloadavg"):
        results["load_average_end"] = list(os.getloadavg())
    return results


# --- output ----------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return float(np.median(values))


def _mib(value: float) -> str:
    return f"{value / MIB:.0f}"


def tables(results: dict[str, Any]) -> str:
    configs = results["settings"]["configs"]
    rounds = results["rounds"]
    n = results["settings"]["slices"]
    reference = configs[0]

    def values(config: str, key: str) -> list[Any]:
        return [rnd[config][key] for rnd in rounds]

    speed_rows, memory_rows = [], []
    for c in configs:
        seconds = values(c, "seconds")
        wall = _median(seconds)
        paired = [rnd[reference]["seconds"] / rnd[c]["seconds"] for rnd in rounds]
        done = [rnd[c]["done_at"] for rnd in rounds]
        first = _median([d[0] for d in done])
        if c == "loop":
            steady = "—"
        else:
            steady = f"{_median([(len(d) - 1) / (d[-1] - d[0]) for d in done]):.3f}"
        cpu = _median([rnd[c]["memory"]["cpu_seconds"] for rnd in rounds]) / n
        loads = [
            f"{rnd[c]['load_average_before'][0]:.1f} → {rnd[c]['load_average_after'][0]:.1f}"
            for rnd in rounds
            if rnd[c]["load_average_before"]
        ]
        one = rounds[0][c]
        speed_rows.append(
            [
                c,
                f"{one['processes']} x {one['torch_threads']}",
                f"{wall:.1f}",
                f"{n / wall:.3f}",
                f"{_median(paired):.2f}x",
                f"{first:.1f}",
                steady,
                f"{cpu:.2f}",
                ", ".join(loads),
            ]
        )
        mem = [rnd[c]["memory"] for rnd in rounds]
        workers = [w for m in mem for w in m["worker_peak_rss"]]
        if c == reference:
            same = "(reference)"
        else:
            checks = [cmp[c] for cmp in results["labels"]["rounds"] if c in cmp]
            same = "yes" if all(x["identical"] for x in checks) else "no"
            if same == "no":
                worst = max(checks, key=lambda x: x.get("voxels_differing", 0))
                same += f" ({worst.get('voxels_differing', '?')} voxels differ)"
            diff = max(x["max_abs_embedding_difference"] for x in checks)
            same += f"; embeddings max diff {diff:.1e}"
        memory_rows.append(
            [
                c,
                _mib(max(m["main_peak_rss"] for m in mem)),
                " / ".join(_mib(w) for w in workers) if workers else "—",
                _mib(max(m["peak_total_rss"] for m in mem)),
                _mib(max(m["peak_total_pss"] for m in mem)),
                same,
            ]
        )
    lines = [
        f"{n} slices of {results['settings']['size']} x {results['settings']['size']}, "
        f"points_per_side {results['settings']['params']['points_per_side']}, "
        f"points_per_batch {results['settings']['params']['points_per_batch']}, "
        f"{len(rounds)} round(s); median over rounds",
        markdown_table(
            [
                "config",
                "processes x torch threads",
                "wall s",
                "slices/s",
                f"speed vs {reference}",
                "first slice done at s",
                "slices/s, first to last slice",
                "CPU s per slice",
                "load avg before → after",
            ],
            speed_rows,
        ),
        "",
        markdown_table(
            [
                "config",
                "peak RSS, calling process (MiB)",
                "peak RSS, each worker (MiB)",
                "peak RSS, all processes (MiB)",
                "peak PSS, all processes (MiB)",
                f"labels identical to {reference}",
            ],
            memory_rows,
        ),
    ]
    if "loop" in configs:
        phases = [rnd["loop"]["phases"] for rnd in rounds]
        seg = [s for rnd in rounds for s in rnd["loop"]["segment_seconds"]]
        p = {k: _median([ph[k] for ph in phases]) for k in phases[0]}
        lines += [
            "",
            f"loop phases (s): load model {p['load_model']:.1f}, open + embed "
            f"{p['open_and_embed']:.1f} ({p['open_and_embed'] / n:.2f} per slice), segment "
            f"{p['segment']:.1f}, link + save {p['link_and_save']:.2f}; segment_slice per slice "
            f"p50 {percentile(seg, 50):.2f} s, p95 {percentile(seg, 95):.2f} s, "
            f"mean {np.mean(seg):.2f} s",
        ]
    s = results.get("segmentation")
    if s:
        rows = []
        for pps, seconds in s["seconds"].items():
            rows.append(
                [
                    pps,
                    str(int(pps) ** 2),
                    str(len(seconds)),
                    f"{percentile(seconds, 50):.2f}",
                    f"{percentile(seconds, 95):.2f}",
                    f"{np.mean(seconds):.2f}",
                    f"{np.mean(s['objects'][pps]):.1f}",
                ]
            )
        lines += [
            "",
            f"segment_slice alone on stored embeddings, slices {s['slices']} "
            f"({s['torch_threads']} torch threads, interleaved"
            + (
                f", load avg {s['load_average_before'][0]:.1f} → {s['load_average_after'][0]:.1f})"
                if s["load_average_before"]
                else ")"
            ),
            markdown_table(
                [
                    "points_per_side",
                    "points",
                    "slices",
                    "p50 s",
                    "p95 s",
                    "mean s",
                    "objects per slice",
                ],
                rows,
            ),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=64, help="slices in the stack (default 64)")
    parser.add_argument("--size", type=int, default=256, help="slice side in pixels (default 256)")
    parser.add_argument(
        "--points-per-side", type=int, default=8, help="AutomaticParams.points_per_side (default 8)"
    )
    parser.add_argument(
        "--points-per-batch",
        type=int,
        default=64,
        help="AutomaticParams.points_per_batch (default 64, the package's): the decoder's "
        "batch, which sets most of a segmenting process's peak memory",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=CONFIGS,
        default=list(CONFIGS),
        help="configurations in order (default: all); the first is the reference",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of every configuration, order rotating"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads in every segmenting process (default: ours)"
    )
    parser.add_argument(
        "--extra-points-per-side",
        type=int,
        nargs="*",
        default=[16, 32],
        help="segment_slice alone is also timed at these (default 16 32)",
    )
    parser.add_argument(
        "--extra-slices",
        type=int,
        default=4,
        help="slices segment_slice alone is timed on (default 4; 0 skips it)",
    )
    parser.add_argument("--seed", type=int, default=0, help="nuclei_volume seed (default 0)")
    parser.add_argument(
        "--sample-interval", type=float, default=0.2, help="memory sampling period in seconds"
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--out", type=Path, help="write all raw measurements as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    work = Path(tempfile.mkdtemp(prefix="bench_batch-", dir=args.workdir))
    started = time.perf_counter()
    try:
        results = run(args, work)
    finally:
        if args.keep:
            print(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["total_seconds"] = time.perf_counter() - started
    info = results["machine"]
    load = info.get("load_average")
    print()
    print(
        f"{info['cpu_model']} ({info['cpu_count']} CPUs), torch {info['torch']}, mobile_sam on "
        f"the CPU"
        + (f", load average {load[0]:.1f} at the start" if load else "")
        + f", {results['total_seconds'] / 60:.1f} min in all"
    )
    print(tables(results))
    if args.out:
        write_json(args.out, results)
        print(f"raw measurements written to {args.out}")


if __name__ == "__main__":
    main()
