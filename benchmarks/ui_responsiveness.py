"""UI responsiveness while a CPU torch job runs: the compute worker versus the Qt main thread.

A napari viewer (with an image layer) runs a QTimer at a 10 ms period on the main thread and records
every tick. A stall is the delay of a tick beyond its period. The same ~10 s torch job (3D
convolutions and matrix products, reporting progress at every step) runs once in the viewer's
:class:`~napari_medadapt._worker.ComputeWorker` and once directly on the main thread; the report gives
the maximum and 99th-percentile stall of both runs and their ratio, the idle baseline, and the CPU use
of other processes during each phase (the machine is shared).

Usage (from the repository root; a virtual X display is started when DISPLAY is unset)::

    .venv/bin/python benchmarks/ui_responsiveness.py --seconds 10

Writes ``docs/benchmarks/ui_responsiveness.json`` and ``.md`` (``--out`` changes the folder).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TICK_MS = 10
GOAL_MAX_STALL_MS = 50.0
REPO_ROOT = Path(__file__).resolve().parents[1]


def _busy_jiffies() -> float | None:
    """Total busy CPU time of the machine (seconds) from /proc/stat, or None where unavailable."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU use of other processes (in cores) between :meth:`start` and :meth:`stop`."""

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._busy = _busy_jiffies()
        times = os.times()
        self._own = times.user + times.system

    def stop(self) -> float | None:
        busy = _busy_jiffies()
        if busy is None or self._busy is None:
            return None
        times = os.times()
        own = times.user + times.system - self._own
        wall = time.perf_counter() - self._wall
        return max(0.0, (busy - self._busy - own) / wall)


def thread_cpu_seconds() -> dict[tuple[int, str], float]:
    """CPU seconds used so far by each thread of this process, keyed by (thread id, name) (Linux)."""
    usage: dict[tuple[int, str], float] = {}
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return usage
    for task in tasks.iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        usage[(int(task.name), name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return usage


def group_thread_cpu(
    before: dict[tuple[int, str], float], after: dict[tuple[int, str], float], compute_tid: int
) -> dict[str, float]:
    """CPU seconds per thread group between two :func:`thread_cpu_seconds` snapshots."""
    groups = {"main": 0.0, "compute": 0.0, "renderer": 0.0, "other": 0.0}
    for (tid, name), seconds in after.items():
        used = seconds - before.get((tid, name), 0.0)
        if tid == os.getpid():
            groups["main"] += used
        elif tid == compute_tid:
            groups["compute"] += used
        elif name.startswith("llvmpipe"):
            groups["renderer"] += used
        else:
            groups["other"] += used
    return {key: round(value, 2) for key, value in groups.items()}


def make_job(torch_module: Any, steps: int) -> Callable[..., int]:
    """A deterministic CPU torch workload of ``steps`` steps, reporting progress at each one."""
    torch = torch_module
    generator = torch.Generator().manual_seed(0)
    volume = torch.randn(1, 8, 24, 48, 48, generator=generator)
    kernel = torch.randn(8, 8, 3, 3, 3, generator=generator) * 0.05
    matrix = torch.randn(256, 256, generator=generator) / 16

    def job(*, ctx) -> int:
        features = volume
        product = matrix
        with torch.inference_mode():
            for step in range(steps):
                features = torch.tanh(torch.nn.functional.conv3d(features, kernel, padding=1))
                product = torch.tanh(product @ matrix)
                ctx.progress(step + 1, steps, "convolving")
        return steps

    return job


def measure(start_job: Callable[[Callable[[], None]], None], compute_tid: int = -1) -> dict[str, Any]:
    """Run a job while a 10 ms main-thread timer ticks; return stall statistics over the job."""
    from qtpy.QtCore import QEventLoop, Qt, QTimer

    ticks: list[float] = []
    span: dict[str, float] = {}
    loop = QEventLoop()
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))

    def finished() -> None:
        span["end"] = time.perf_counter()
        QTimer.singleShot(5 * TICK_MS, loop.quit)

    def begin() -> None:
        span["start"] = time.perf_counter()
        start_job(finished)

    meter = CpuMeter()
    meter.start()
    threads_before = thread_cpu_seconds()
    timer.start()
    QTimer.singleShot(10 * TICK_MS, begin)
    loop.exec()
    timer.stop()
    other_cores = meter.stop()
    threads_cpu = group_thread_cpu(threads_before, thread_cpu_seconds(), compute_tid)
    times = np.asarray(ticks)
    intervals = np.diff(times)
    # intervals ending after the job started and beginning before it ended (plus one period)
    inside = (times[1:] > span["start"]) & (times[:-1] < span["end"] + TICK_MS / 1000)
    stalls_ms = np.clip(intervals[inside] * 1000 - TICK_MS, 0, None)
    return {
        "job_seconds": round(span["end"] - span["start"], 3),
        "ticks": int(inside.sum()),
        "max_stall_ms": round(float(stalls_ms.max()), 2),
        "p99_stall_ms": round(float(np.percentile(stalls_ms, 99)), 2),
        "median_stall_ms": round(float(np.median(stalls_ms)), 2),
        "other_processes_cpu_cores": None if other_cores is None else round(other_cores, 2),
        "our_threads_cpu_seconds": threads_cpu,
    }


def measure_idle(seconds: float) -> dict[str, Any]:
    """Stall statistics of the idle event loop (the noise floor of this machine and display)."""
    from qtpy.QtCore import QTimer

    return measure(lambda finished: QTimer.singleShot(int(seconds * 1000), finished))


def freeze_activity_animations(window: Any) -> Callable[[], None]:
    """Keep napari's animated "in progress" indicator still (diagnostic); return an undo function."""
    from qtpy.QtWidgets import QLabel

    movies = [label.movie() for label in window.findChildren(QLabel) if label.movie() is not None]
    pausers = []
    for movie in movies:

        def pause(movie: Any = movie) -> None:
            movie.setPaused(True)

        movie.started.connect(pause)
        pausers.append((movie, pause))

    def undo() -> None:
        for movie, pause in pausers:
            movie.started.disconnect(pause)

    return undo


def run_benchmark(seconds: float) -> dict[str, Any]:
    """Measure idle, worker and main-thread runs in one viewer session; return the report dict."""
    import napari
    import torch

    from napari_medadapt._job_handle import PROGRESS_MIN_INTERVAL_S
    from napari_medadapt._worker import PROGRESS_BAR_DELAY_S, get_worker
    from napari_medadapt.core.device import default_thread_count
    from napari_medadapt.core.jobs import JobContext

    torch.set_num_threads(1)
    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((32, 128, 128), dtype=np.float32), name="volume")
    worker = get_worker(viewer)

    calibration = make_job(torch, 5)
    started = time.perf_counter()
    calibration(ctx=JobContext())
    step_seconds = (time.perf_counter() - started) / 5
    steps = max(10, math.ceil(seconds / step_seconds))
    job = make_job(torch, steps)
    load_before = os.getloadavg()

    idle = measure_idle(2.0)

    def in_worker(finished: Callable[[], None]) -> None:
        worker.submit(job, description="responsiveness benchmark", on_result=lambda _: finished())

    def on_main_thread(finished: Callable[[], None]) -> None:
        job(ctx=JobContext())
        finished()

    compute_tid = worker._thread.native_id or -1
    worker_run = measure(in_worker, compute_tid)
    undo_freeze = freeze_activity_animations(viewer.window._qt_window)
    worker_still_run = measure(in_worker, compute_tid)
    undo_freeze()
    main_run = measure(on_main_thread, compute_tid)
    load_after = os.getloadavg()
    viewer.close()

    ratio = main_run["max_stall_ms"] / max(worker_run["max_stall_ms"], 0.01)
    return {
        "benchmark": "ui_responsiveness",
        "command": " ".join([".venv/bin/python", "benchmarks/ui_responsiveness.py", *sys.argv[1:]]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": {
            "cpu_cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "napari": napari.__version__,
            "load_average_1min_before": round(load_before[0], 2),
            "load_average_1min_after": round(load_after[0], 2),
        },
        "settings": {
            "timer_period_ms": TICK_MS,
            "job_steps": steps,
            "job_step_seconds": round(step_seconds, 4),
            "main_thread_torch_threads": 1,
            "worker_torch_threads": default_thread_count(),
            "progress_min_interval_ms": PROGRESS_MIN_INTERVAL_S * 1000,
            "progress_bar_delay_ms": PROGRESS_BAR_DELAY_S * 1000,
        },
        "idle": idle,
        "worker": worker_run,
        "worker_activity_indicator_still": worker_still_run,
        "main_thread": main_run,
        "max_stall_ratio_main_over_worker": round(ratio, 1),
        "goal_max_stall_ms": GOAL_MAX_STALL_MS,
        "goal_met": worker_run["max_stall_ms"] <= GOAL_MAX_STALL_MS,
    }


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """Write the human-readable report."""
    machine, settings = report["machine"], report["settings"]
    worker, still = report["worker"], report["worker_activity_indicator_still"]
    rows = [
        ("idle event loop (baseline)", report["idle"]),
        ("job in the compute worker", worker),
        ("job in the compute worker, napari activity indicator held still (diagnostic)", still),
        ("same job on the main thread", report["main_thread"]),
    ]

    def cpu(r: dict[str, Any]) -> str:
        t = r["our_threads_cpu_seconds"]
        return f"{t['main']} / {t['compute']} / {t['renderer']}"

    table = "\n".join(
        f"| {label} | {r['job_seconds']:.1f} | {r['max_stall_ms']:.1f} | {r['p99_stall_ms']:.1f} | "
        f"{r['median_stall_ms']:.1f} | {cpu(r)} | {r['other_processes_cpu_cores']} |"
        for label, r in rows
    )
    text = f"""# UI responsiveness during computation

Does napari stay responsive while a model runs? A QTimer on the Qt main thread ticks every
{settings["timer_period_ms"]} ms in a shown napari viewer (an image layer open); a *stall* is how late a
tick arrives beyond its period. The same CPU torch job (3D convolutions and matrix products,
{settings["job_steps"]} steps of {settings["job_step_seconds"] * 1000:.0f} ms, `ctx.progress` at every step)
runs in the viewer's compute worker (`napari_medadapt._worker`, with its napari progress bar), again in
the worker with napari's animated "in progress" status-bar indicator held still (a diagnostic), and
then directly on the main thread: one session, one run each.

Command: `{report["command"]}` (starts Xvfb itself when `DISPLAY` is unset).
Date: {report["date_utc"]} UTC.

| run | duration (s) | max stall (ms) | p99 stall (ms) | median stall (ms) | our CPU s: main / compute / GL renderer | other processes' CPU (cores) |
|---|---|---|---|---|---|---|
{table}

**Max stall, main thread / worker: {report["max_stall_ratio_main_over_worker"]}x.**
Goal (max stall <= {report["goal_max_stall_ms"]:.0f} ms in the worker run): **{"met" if report["goal_met"] else "missed"}**.

Machine: {machine["cpu_cores"]} CPU cores shared with other jobs ({machine["platform"]}), Python
{machine["python"]}, torch {machine["torch"]}, napari {machine["napari"]}, Xvfb with software OpenGL
(Mesa llvmpipe). 1-minute load average {machine["load_average_1min_before"]} before and
{machine["load_average_1min_after"]} after the run; the last column is the CPU other processes used
during each phase, in cores. Torch threads: main thread {settings["main_thread_torch_threads"]}, compute
worker {settings["worker_torch_threads"]} (`limit_torch_threads()`: all cores but one).

## Reading the figures

- The idle row is the floor this machine and display allow: with other processes busy on both cores, the
  main thread sometimes waits for a core even when nothing else happens in napari.
- Worker design: torch releases the GIL inside its kernels, the compute thread bounds torch to all cores
  but one, progress reports are coalesced (at most one pending UI update per job, one per
  {settings["progress_min_interval_ms"]:.0f} ms), and a job gets its progress bar only after
  {settings["progress_bar_delay_ms"]:.0f} ms, so short interactive requests never flash one.
- What remains in the worker row is rendering: while any napari progress bar exists, napari animates an
  "in progress" GIF in the status bar (about 33 frames/s), and each frame makes Qt composite the whole
  window through OpenGL. Under Xvfb that is software rendering (the "GL renderer" CPU column:
  {worker["our_threads_cpu_seconds"]["renderer"]} s in the worker run against
  {still["our_threads_cpu_seconds"]["renderer"]} s with the indicator held still, for
  {worker["our_threads_cpu_seconds"]["compute"]} s of compute). The diagnostic row shows the worker itself:
  max {still["max_stall_ms"]:.0f} ms, p99 {still["p99_stall_ms"]:.0f} ms. On a machine with a GPU the
  compositing cost is negligible; on software-rendered remote desktops it is napari's, not the plugin's.
"""
    path.write_text(text)


def _ensure_display() -> Any:
    """Start a virtual X display when none is set (returns it so it can be stopped)."""
    if os.environ.get("DISPLAY") or sys.platform != "linux":
        return None
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(1280, 1024))
    display.start()
    return display


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="approximate job duration (s)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks", help="report folder")
    args = parser.parse_args(argv)
    display = _ensure_display()
    try:
        report = run_benchmark(args.seconds)
    finally:
        if display is not None:
            display.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ui_responsiveness.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / "ui_responsiveness.md")
    runs = ("idle", "worker", "worker_activity_indicator_still", "main_thread")
    print(json.dumps({key: report[key] for key in runs}, indent=2))
    print(f"max stall ratio main/worker: {report['max_stall_ratio_main_over_worker']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
