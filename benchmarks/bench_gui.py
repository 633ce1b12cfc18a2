"""The "Segment Anything" widget in a real napari viewer: click to preview, and the GUI
thread while a volume is embedded.

Both parts run the widget as a user does: a napari ``Viewer(show=True)`` (under Xvfb), a
synthetic image layer, the widget opened from the plugin menu's entry
(``add_plugin_dock_widget``), the MobileSAM model, the session in a temporary folder.

- **Click to preview.** A 512 x 512 or 2048 x 2048 slice of bright disks (the data of
  ``bench_click.py``), embedded first. Every round places one positive point on a disk
  through ``widget.points.add`` (a click in add mode does the same) and times, with a
  ``QEventLoop`` woken by the layers' events, until the preview layer's data is set to the
  new mask's outline ("GUI → preview data") and until the canvas has drawn it after that
  ("GUI → drawn"). In the same rounds, in rotating order, the engine alone does the same
  work in the GUI thread: ``session.preview(z, points, signs, boxes).labels()``. The
  difference is what the widget adds: napari's handling of the new point, the hand-off to
  a worker thread and back, the outline of the labels image (made in the worker,
  ``controller.preview_with_outline``) and the layer update. Stamps along the way say
  where it goes: ``points.add`` returned, the decode task handed to a worker (the
  controller's ``run("decode", task)``, which the benchmark wraps: it also wraps the
  task's function, to stamp its start and end in the worker thread, and its ``returned``
  handler, the GUI thread taking the result), preview data set, drawn. Every click is on
  another disk than the one before (a tiled 2048 slice reads another window's embedding
  then, for both paths alike); the prompts are cleared and the widget left idle (no decode
  running or pending, ``controller.running("decode")``), untimed, before each click. The
  IoU of the GUI path is that of the mask the widget shows, ``widget.preview.labels()``
  (the preview layer holds only its outline).
- **GUI thread during embedding.** A 16 x 512 x 512 volume. A 10 ms precise ``QTimer`` on
  the GUI thread records the gaps between its ticks: from the moment the widget has added
  its layers until 0.5 s pass without a gap over 50 ms (the new layers' first paint; the
  slice on screen is being embedded meanwhile), then from ``widget.embed_all()`` until
  every slice is embedded, then for as long again with nothing to do (the session open, no
  worker; ``controller.running("embed")`` says when the embedding worker ends): the idle
  baseline. A gap well over 10 ms is a moment the viewer could not repaint or answer the
  mouse.

Under Xvfb the canvas draws with Mesa's software OpenGL (llvmpipe; recorded in the JSON),
so repaints cost more than on a desktop with a GPU.

Usage::

    xvfb-run -a python benchmarks/bench_gui.py [--repeats N] [--warmup N] \
        [--sizes 512 2048] [--slices 16] [--out results.json]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QEventLoop, Qt, QTimer
from qtpy.QtWidgets import QApplication

from _timing import machine, markdown_table, percentile, summarize, write_json
from bench_click import THREAD_ENV, click_positions, disk_mask, disks_image, iou

PLUGIN, WIDGET = "napari-segany", "Segment Anything"
MODEL = "mobile_sam"
SEED = 0
TICK_MS = 10
IDLE_MS = 50  # no decode for this long: none pending either (the debounce timer is 5 ms)
WAIT_S = 600.0  # the longest wait for anything (embedding 2048 x 2048 tiles under load)
CLICK_WAIT_S = 60.0
DRAW_WAIT_MS = 2000


# --- waiting on the GUI thread -----------------------------------------------------------------


def process_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Run the Qt event loop until ``predicate()`` holds (untimed waits between measurements)."""
    deadline = time.perf_counter() + timeout_s
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        QApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        time.sleep(0.002)


def settle(widget: Any, rounds: int = 5) -> None:
    """Let pending work finish: no decode in flight for ``IDLE_MS`` (longer than the
    controller's debounce timer: no decode requested either), events handled."""
    controller = widget.controller
    since: list[float] = []

    def idle() -> bool:
        if controller.running("decode"):
            since.clear()
            return False
        since[:] = since or [time.perf_counter()]
        return time.perf_counter() - since[0] >= IDLE_MS / 1e3

    process_until(idle, "the widget to be idle")
    for _ in range(rounds):
        QApplication.processEvents()


def scene_canvas(viewer: Any) -> Any | None:
    """vispy's SceneCanvas of the viewer (private napari API; None if it moved)."""
    try:
        return viewer.window._qt_viewer.canvas._scene_canvas
    except AttributeError:
        return None


def opengl(canvas: Any | None) -> str | None:
    """The OpenGL renderer and version the canvas draws with (Xvfb: Mesa's llvmpipe)."""
    if canvas is None:
        return None
    try:
        from vispy.gloo import gl

        canvas.set_current()
        return f"{gl.glGetParameter(gl.GL_RENDERER)}, {gl.glGetParameter(gl.GL_VERSION)}"
    except Exception as err:  # informational only
        return f"unknown ({err})"


# --- a viewer with the widget on an image -------------------------------------------------------


def open_widget(image: np.ndarray, name: str) -> tuple[Any, Any]:
    """A shown viewer with ``image``, the widget opened from the plugin entry and started."""
    # napari reads NAPARI_CONFIG when imported: main() points it elsewhere first
    import napari

    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name=name)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget.image_combo.setCurrentText(name)
    widget.model_combo.setCurrentText(MODEL)
    widget.device_combo.setCurrentText("cpu")
    # back as soon as the widget has added its layers, before the viewer paints them
    controller = widget.controller
    loop = QEventLoop()

    def done(*_: Any) -> None:
        loop.quit()

    signals = (controller.layers_added, controller.error, controller.warning)
    for signal in signals:
        signal.connect(done)
    timeout = QTimer()
    timeout.setSingleShot(True)
    timeout.timeout.connect(loop.quit)
    timeout.start(int(WAIT_S * 1e3))
    try:
        widget.start()
        if controller.running("start"):
            loop.exec()
    finally:
        timeout.stop()
        for signal in signals:
            signal.disconnect(done)
    if widget.session is None:
        raise RuntimeError(f"the {name} session did not open: {controller.status}")
    return viewer, widget


def close(viewer: Any, widget: Any) -> None:
    widget.close_session()
    viewer.close()
    QApplication.processEvents()


# --- click to preview ---------------------------------------------------------------------------


def gui_click(widget: Any, canvas: Any | None, point: np.ndarray) -> dict[str, float]:
    """Seconds from ``points.add(point)`` to: its return (``"added"``), the decode task
    handed to the controller's runner (``"decoding"``: ``controller.run("decode", task)``,
    from within ``points.add`` when the widget was idle), the worker's start and end of the
    task's function (``"worker"``, ``"decoded"``: the preview, its labels image and their
    outline, ``controller.preview_with_outline``), the GUI thread taking the result
    (``"received"``: the task's ``returned`` handler), the preview layer's new data
    (``"data"``) and the canvas's next draw after it (``"drawn"``, if it comes)."""
    controller = widget.controller
    stamps: dict[str, float] = {}
    loop = QEventLoop()
    run = controller.run  # the bound method: every task of the controller starts there

    def timed_run(kind: str, task: Any) -> None:
        if kind == "decode" and "decoding" not in stamps:
            stamps["decoding"] = time.perf_counter()
            decode, received = task.function, task.returned

            def timed_decode(*args: Any, **kwargs: Any) -> Any:  # in the worker thread
                stamps.setdefault("worker", time.perf_counter())
                try:
                    return decode(*args, **kwargs)
                finally:
                    stamps.setdefault("decoded", time.perf_counter())

            def timed_received(result: Any) -> None:  # in the GUI thread
                stamps.setdefault("received", time.perf_counter())
                if received is not None:
                    received(result)

            task.function, task.returned = timed_decode, timed_received
        run(kind, task)

    def on_data(_event: Any = None) -> None:
        preview = controller.preview
        if "data" in stamps or preview is None or not preview.prompts:
            return  # the clearing of the previous preview, or a stale result
        if not np.allclose(preview.prompts[0].points[-1], point):
            return
        stamps["data"] = time.perf_counter()
        if canvas is None:
            loop.quit()
        else:
            draw_limit.start(DRAW_WAIT_MS)  # a draw that never comes costs no more

    def on_draw(_event: Any = None) -> None:
        if "data" in stamps and "drawn" not in stamps:
            stamps["drawn"] = time.perf_counter()
            loop.quit()

    layer = controller.preview_layer
    layer.events.data.connect(on_data)
    controller.run = timed_run  # an instance attribute: the controller calls self.run
    if canvas is not None:
        canvas.events.draw.connect(on_draw, position="last")  # after the scene has drawn
    timeout = QTimer()
    timeout.setSingleShot(True)
    timeout.timeout.connect(loop.quit)
    timeout.start(int(CLICK_WAIT_S * 1e3))
    draw_limit = QTimer()
    draw_limit.setSingleShot(True)
    draw_limit.timeout.connect(loop.quit)
    try:
        start = time.perf_counter()
        widget.points.add(point)
        stamps["added"] = time.perf_counter()
        loop.exec()
    finally:
        timeout.stop()
        draw_limit.stop()
        layer.events.data.disconnect(on_data)
        del controller.run  # the class's method again
        if canvas is not None:
            canvas.events.draw.disconnect(on_draw)
    if "data" not in stamps:
        raise TimeoutError(f"no preview {CLICK_WAIT_S:.0f} s after a point at {point}")
    return {k: v - start for k, v in stamps.items()}


def engine_click(widget: Any, point: np.ndarray) -> np.ndarray:
    """What the widget's decode worker computes (less the outline), called directly in the
    GUI thread."""
    preview = widget.session.preview(0, point[None], np.array([True]), np.empty((0, 4)))
    return preview.labels()


def paired(a: list[float], b: list[float], how: Callable[[float, float], float]) -> float:
    return float(np.median([how(x, y) for x, y in zip(a, b, strict=True)]))


def ms_summary(seconds: list[float]) -> dict[str, Any]:
    return {"summary": summarize(seconds), "mean_ms": statistics.fmean(seconds) * 1e3}


def bench_clicks(args: argparse.Namespace, size: int) -> dict[str, Any]:
    rng = np.random.default_rng(SEED + size)
    image, disks = disks_image(size, rng)
    name = f"disks {size}"
    t0 = time.perf_counter()
    viewer, widget = open_widget(image, name)
    try:
        process_until(
            lambda: widget.session.is_embedded(0) and not widget.controller.running("embed"),
            f"the {size} x {size} slice's embedding",
        )
        ready_s = time.perf_counter() - t0
        canvas = scene_canvas(viewer)
        renderer = opengl(canvas)
        rounds = args.warmup + args.repeats
        clicks = click_positions(disks, 2 * rounds, rng)
        names = ["gui", "engine"]
        seconds: dict[str, list[float]] = {"gui": [], "engine": []}
        stages: list[dict[str, float]] = []
        quality: dict[str, list[float]] = {"gui": [], "engine": []}
        print(
            f"{size} x {size}: embedded in {ready_s:.1f} s (with start-up); "
            f"{args.warmup} + {args.repeats} rounds of {', '.join(names)}",
            flush=True,
        )
        for r in range(rounds):
            shift = r % len(names)
            for slot, which in enumerate(names[shift:] + names[:shift]):
                point, disk = clicks[2 * r + slot]
                widget.clear_prompts()
                settle(widget)
                gc.collect()
                if which == "gui":
                    stamps = gui_click(widget, canvas, point)
                    took = stamps["data"]
                    mask = widget.preview.labels() > 0  # the layer shows its outline
                else:
                    start = time.perf_counter()
                    mask = engine_click(widget, point) > 0
                    took = time.perf_counter() - start
                if r < args.warmup:
                    continue
                seconds[which].append(took)
                if which == "gui":
                    stages.append(stamps)
                quality[which].append(iou(mask, disk_mask(image.shape, disks[disk])))
        widget.clear_prompts()
        settle(widget)
        windows = len(widget.session.store.grid)
    finally:
        close(viewer, widget)
    gui, engine = seconds["gui"], seconds["engine"]
    drawn = [st["drawn"] for st in stages if "drawn" in st]
    row: dict[str, Any] = {
        "slice_shape": [size, size],
        "windows": windows,
        "opengl": renderer,
        "start_and_embed_seconds": ready_s,
        "clicks_yx": [p.tolist() for p, _ in clicks],
        "seconds": {"gui_to_data": gui, "engine": engine},
        "gui_stamps_seconds": stages,
        "gui_to_data": ms_summary(gui),
        "engine": ms_summary(engine),
        "gui_over_engine_median": paired(gui, engine, lambda g, e: g / e),
        "gui_minus_engine_ms_median": paired(gui, engine, lambda g, e: (g - e) * 1e3),
        "stages_ms_median": stage_medians(stages),
        "iou_with_disk_median": {k: float(np.median(v)) for k, v in quality.items()},
    }
    if len(drawn) == len(gui):
        row["gui_to_drawn"] = ms_summary(drawn)
    return row


def stage_medians(stages: list[dict[str, float]]) -> dict[str, float]:
    """Median ms of each stage of a GUI click, from consecutive stamps of :func:`gui_click`."""
    bounds = [
        ("start", "added"),
        ("start", "worker"),
        ("worker", "decoded"),
        ("decoded", "received"),
        ("received", "data"),
        ("data", "drawn"),
    ]
    out = {}
    for a, b in bounds:
        spans = [st[b] - st.get(a, 0.0) for st in stages if b in st and (a == "start" or a in st)]
        if spans:
            out[f"{a} → {b}"] = float(np.median(spans)) * 1e3
    return out


# --- the GUI thread while embedding -------------------------------------------------------------


def tick_gaps(until: Callable[[list[float]], bool], timeout_s: float) -> tuple[list[float], float]:
    """Run a precise ``TICK_MS`` timer on the GUI thread until ``until(ticks)`` holds (checked
    at every tick): the gaps between ticks (seconds) and how long it ran."""
    ticks: list[float] = []
    loop = QEventLoop()
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(TICK_MS)

    def tick() -> None:
        ticks.append(time.perf_counter())
        if until(ticks):
            loop.quit()

    timer.timeout.connect(tick)
    limit = QTimer()
    limit.setSingleShot(True)
    limit.timeout.connect(loop.quit)
    start = time.perf_counter()
    timer.start()
    limit.start(int(timeout_s * 1e3))
    loop.exec()
    timer.stop()
    limit.stop()
    ran = time.perf_counter() - start
    return list(np.diff([start, *ticks])), ran


def quiet_for(seconds: float, gap_s: float = 0.05) -> Callable[[list[float]], bool]:
    """``until`` for :func:`tick_gaps`: no gap over ``gap_s`` in the last ``seconds``."""
    since: list[float] = []

    def until(ticks: list[float]) -> bool:
        if not since or (len(ticks) > 1 and ticks[-1] - ticks[-2] > gap_s):
            since[:] = [ticks[-1]]
        return ticks[-1] - since[0] >= seconds

    return until


def gap_summary(gaps: list[float], ran: float) -> dict[str, Any]:
    ms = [float(g) * 1e3 for g in gaps]
    return {
        "seconds": ran,
        "ticks": len(ms),
        "longest_gap_ms": max(ms),
        "p99_gap_ms": percentile(ms, 99),
        "p50_gap_ms": percentile(ms, 50),
        "gaps_over_50ms": sum(1 for g in ms if g > 50),
        "gaps_ms": ms,
    }


def bench_stall(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(SEED + 16)
    volume = np.stack([disks_image(512, rng)[0] for _ in range(args.slices)])
    opened = time.perf_counter()
    viewer, widget = open_widget(volume, "volume")
    try:
        session = widget.session
        # The new layers' first paint (shaders, glyphs) stalls the GUI thread whatever runs
        # beside it: timed on its own, before the measurement. The slice on screen is being
        # embedded meanwhile.
        first, first_ran = tick_gaps(quiet_for(0.5), 30.0)
        print(
            f"{args.slices} x 512 x 512: session opened in {time.perf_counter() - opened:.1f} s, "
            f"quiet after {first_ran:.1f} s; embed_all with a {TICK_MS} ms timer",
            flush=True,
        )
        widget.embed_all()

        def embedded(_ticks: list[float]) -> bool:
            return not widget.controller.running("embed") and bool(session.store.done().all())

        gaps, ran = tick_gaps(embedded, WAIT_S)
        if not embedded([]):
            raise TimeoutError(f"the volume was not embedded after {WAIT_S:.0f} s")
        settle(widget)
        print(f"embedded in {ran:.1f} s more; idle baseline for as long", flush=True)
        idle, idle_ran = tick_gaps(lambda _ticks: False, ran)
    finally:
        close(viewer, widget)
    return {
        "volume_shape": list(volume.shape),
        "tick_ms": TICK_MS,
        "after_session_opened": gap_summary(first, first_ran),
        "embedding": gap_summary(gaps, ran),
        "idle": gap_summary(idle, idle_ran),
    }


# --- output -------------------------------------------------------------------------------------


def click_table(results: dict[str, Any]) -> str:
    headers = ["slice", "path", "p50 / p95 ms", "mean ms", "÷ engine", "− engine ms"]
    headers += ["IoU with disk"]
    lines = []
    for size, row in results["clicks"].items():
        for key, label in (
            ("gui_to_data", "GUI: point → preview data"),
            ("gui_to_drawn", "GUI: point → drawn"),
            ("engine", "engine: preview + labels"),
        ):
            if key not in row:
                continue
            s = row[key]
            gui = key == "gui_to_data"
            lines.append(
                [
                    f"{size} ({row['windows']} window{'s' * (row['windows'] > 1)})",
                    label,
                    s["summary"].cell(),
                    f"{s['mean_ms']:.1f}",
                    f"{row['gui_over_engine_median']:.2f}" if gui else "",
                    f"{row['gui_minus_engine_ms_median']:.1f}" if gui else "",
                    f"{row['iou_with_disk_median']['engine' if key == 'engine' else 'gui']:.3f}",
                ]
            )
    return markdown_table(headers, lines)


def stage_table(results: dict[str, Any]) -> str:
    headers = ["slice", "points.add", "→ worker starts", "decode in worker", "→ GUI takes it"]
    headers += ["→ preview data", "→ drawn", "engine alone"]
    lines = []
    for size, row in results["clicks"].items():
        st = row["stages_ms_median"]
        keys = ("start → added", "start → worker", "worker → decoded", "decoded → received")
        cells = [st.get(k) for k in (*keys, "received → data", "data → drawn")]
        cells.append(row["engine"]["summary"].p50)
        lines.append([size, *("" if c is None else f"{c:.1f}" for c in cells)])
    return markdown_table(headers, lines)


def stall_table(results: dict[str, Any]) -> str:
    stall = results["stall"]
    shape = " x ".join(map(str, stall["volume_shape"]))
    headers = ["GUI thread", "s", "ticks", "longest gap ms", "p99 gap ms", "p50 gap ms"]
    headers += ["gaps > 50 ms"]
    lines = []
    for key, label in (
        ("after_session_opened", "after Start, until 0.5 s without a gap > 50 ms"),
        ("embedding", f"embed_all, {shape}"),
        ("idle", "idle, as long"),
    ):
        g = stall[key]
        lines.append(
            [
                label,
                f"{g['seconds']:.1f}",
                str(g["ticks"]),
                f"{g['longest_gap_ms']:.1f}",
                f"{g['p99_gap_ms']:.1f}",
                f"{g['p50_gap_ms']:.1f}",
                str(g["gaps_over_50ms"]),
            ]
        )
    return markdown_table(headers, lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "bench_gui",
        "machine": machine(),
        "settings": {
            "repeats": args.repeats,
            "warmup": args.warmup,
            "sizes": args.sizes,
            "slices": args.slices,
            "seed": SEED,
            "model": MODEL,
            "device": "cpu",
            "tick_ms": TICK_MS,
            "image": "uint8 slice, 16 bright disks on a jittered 4 x 4 grid, Gaussian noise",
            "click": "one positive point inside a disk's inner half, another disk each time",
        },
        "environment": {k: os.environ.get(k) for k in (*THREAD_ENV, "DISPLAY")},
    }
    import napari

    results["napari"] = napari.__version__
    results["clicks"] = {f"{size}x{size}": bench_clicks(args, size) for size in args.sizes}
    results["opengl"] = next((r["opengl"] for r in results["clicks"].values()), None)
    if args.slices:
        results["stall"] = bench_stall(args)
    results["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed click rounds (30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (3)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[512, 2048], help="slice sides (512 2048)"
    )
    parser.add_argument(
        "--slices", type=int, default=16, help="slices of the embedded volume (16; 0: skip)"
    )
    parser.add_argument("--out", type=Path, help="write all raw timings as JSON here")
    args = parser.parse_args(argv)
    if not os.environ.get("DISPLAY"):
        sys.exit(
            "bench_gui.py shows a napari viewer and needs a display (DISPLAY is not set): "
            "run it as `xvfb-run -a python benchmarks/bench_gui.py`"
        )

    with tempfile.TemporaryDirectory(prefix="bench_gui_") as tmp:
        # sessions (embeddings, labels) and napari's settings (window geometry is saved on
        # close) go to the temporary folder, not to the user's cache and configuration
        os.environ["NAPARI_SEGANY_SESSIONS"] = str(Path(tmp) / "sessions")
        os.environ.setdefault("NAPARI_CONFIG", str(Path(tmp) / "napari.yaml"))
        results = run(args)

    info = results["machine"]
    print()
    print(
        f"{info['cpu_model']} ({info['cpu_count']} CPUs), torch {info['torch']}, "
        f"{info['torch_threads']} threads, napari {results['napari']}, load average at start "
        f"{info.get('load_average')}, at the end {results['load_average_end']}"
    )
    print(f"environment: {results['environment']}")
    print(f"OpenGL: {results['opengl']}")
    print(
        "\nClick to preview (one positive point; ÷ and − engine: median over rounds of the "
        "paired ratio and difference)"
    )
    print(click_table(results))
    print(
        "\nWhere a GUI click's time goes (median ms; points.add and → worker starts from the "
        "click; the worker decodes and makes the labels image and its outline, then the GUI "
        "thread takes the result when its event loop gets to it and sets the preview layer's "
        "data)"
    )
    print(stage_table(results))
    if "stall" in results:
        print(f"\nGUI thread: gaps between the ticks of a {TICK_MS} ms timer")
        print(stall_table(results))
    if args.out:
        write_json(args.out, results)
        print(f"\nraw timings written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
