"""Running a cohort: in this process, on a local Dask cluster or on an existing one; resumable, sharded,
failures isolated, metrics and a summary at the end.

Before any work: the output folder is created and checked writable, the model (and adapter) are found and
hashed, every case's inputs are hashed. Cases whose manifest record is current (:func:`~.manifest.is_current`)
are skipped. With Dask (``distributed``), each case is one task; a worker process keeps its model loaded for
every case it gets (:mod:`.tasks`); a worker that dies has its case rescheduled on another one by Dask (the
outputs are written atomically, so a half-written file never remains); only the client writes the manifest.
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MedAdaptError
from ..files import OutputError, check_output_path, write_text_atomic
from ..hashing import sha256_file
from . import manifest
from .cohort import Case, shard
from .tasks import LABELS_FOLDER, BatchSettings, run_case

#: Seconds to wait for a Dask scheduler given by address before giving up.
CONNECT_TIMEOUT = 10.0


@dataclass
class BatchSummary:
    """What a run did: counts, failures, where the reports are, and the dashboard (with Dask)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    dashboard: str | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    loads: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed, "seconds": round(self.seconds, 1),
                "dashboard": self.dashboard, "metrics": self.metrics, "model_loads_per_worker": self.loads}


def model_identity(settings: BatchSettings) -> dict[str, Any]:
    """The model's and adapter's names and sha256 (part of every case's key), found before any work.

    Raises
    ------
    MedAdaptError
        The model or adapter cannot be found (the message says which and why).
    """
    identity: dict[str, Any] = {}
    if settings.method == "fewshot-apply":
        from ..adapt.fewshot.io import read_adapter_card

        if not settings.adapter:
            raise MedAdaptError("fewshot-apply needs --adapter DIR (a folder saved by --save-adapter).")
        card = read_adapter_card(settings.adapter)
        identity["adapter"] = {"name": card["name"], "sha256": card["weights_sha256"]}
    if settings.method == "embed":
        from ..sam.registry import REGISTRY

        name = settings.model or "litemedsam"
        if name not in REGISTRY:
            raise MedAdaptError(f"embed: {name!r} is not a Segment Anything model; choose one of {', '.join(REGISTRY)}.")
        entry = REGISTRY[name]  # the pinned checkpoint (and fine-tuned decoder) hashes name the weights
        identity["model"] = {"name": name, "sha256": entry.sha256, "decoder_sha256": entry.decoder_sha256}
        return identity
    from ..models.io import resolve_model

    if settings.model:
        reference = settings.model
    elif settings.method == "fewshot-apply":
        reference = read_base(settings.adapter)
    else:
        reference = "glioma2d"
    _card, weights = resolve_model(reference)
    identity["model"] = {"name": str(reference), "sha256": sha256_file(weights)}
    return identity


def read_base(adapter: str) -> str:
    """The base model an adapter folder names."""
    from ..adapt.fewshot.io import read_adapter_card

    return str(read_adapter_card(adapter)["base_model"])


def input_identity(path: str) -> str:
    """What identifies an input: a file's sha256, or a DICOM series' SeriesInstanceUID sha256 (a series is many
    files; its UID names its content, and never a patient)."""
    from ..dicom import is_dicom_source, provenance_entry

    if is_dicom_source(path):
        return "dicom-series:" + provenance_entry(path)["dicom_series_uid_sha256"]
    return sha256_file(path)


def case_key(case: Case, settings: BatchSettings, identity: dict[str, Any]) -> dict[str, Any]:
    """What a case's output depends on: its inputs' (and reference's) sha256, the model, adapter and settings."""
    if case.problem is not None:
        return {"problem": case.problem}
    return {
        "inputs": {m: input_identity(p) for m, p in sorted(case.images.items())},
        "reference": sha256_file(case.reference) if case.reference else None,
        "settings": settings.as_dict(),
        **identity,
    }


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / LABELS_FOLDER).mkdir(exist_ok=True)
    except OSError as err:
        raise OutputError(f"--out {out} cannot be created ({err.strerror or err}); choose a writable folder.") from err
    for name in (manifest.MANIFEST, f"{LABELS_FOLDER}/.check"):
        check_output_path(out / name, what="--out")


def _client(scheduler: str, workers: int, threads: int, timeout: float) -> tuple[Any, Any]:
    import logging

    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise MedAdaptError("--scheduler local or an address needs Dask distributed: pip install 'distributed'.") from err
    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR, env={"OMP_NUM_THREADS": str(threads)})
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout=f"{timeout}s"), None
    except (OSError, TimeoutError) as err:
        raise MedAdaptError(
            f"the Dask scheduler at {scheduler} did not answer within {timeout:.0f} s ({err}); check the address "
            "(e.g. tcp://host:8786) and that the scheduler runs, or use --scheduler local."
        ) from None


def run_batch(
    cases: Sequence[Case],
    settings: BatchSettings,
    out_dir: str | Path,
    *,
    scheduler: str = "none",
    workers: int = 2,
    num_parts: int = 1,
    part_id: int = 0,
    threads: int | None = None,
    timeout: float = CONNECT_TIMEOUT,
    on_progress: Callable[[int, int, str], None] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Run ``settings.method`` over ``cases`` (this part of them), writing into ``out_dir``.

    Returns the :class:`BatchSummary`; writes ``manifest.jsonl``, ``labels/CASE.nii.gz`` (+ provenance),
    ``metrics.csv`` (cases with a reference) and ``summary.json``.
    """
    import os

    started = time.time()
    out = Path(out_dir).expanduser().resolve()  # workers on other hosts or folders get absolute paths
    part = shard(cases, num_parts, part_id)
    identity = model_identity(settings)
    current = manifest.latest(manifest.read(out)) if out.is_dir() else {}
    summary, todo = BatchSummary(), []
    for case in part:
        key = case_key(case, settings, identity)
        if manifest.is_current(current.get(case.case_id), key, out):
            summary.skipped.append(case.case_id)
        else:
            todo.append((case, key))
    run_id = uuid.uuid4().hex[:12]
    progress = on_progress or (lambda *_: None)
    total = len(todo)
    progress(0, total, f"{len(summary.skipped)} case(s) already done, {total} to do")

    def finish(record: dict[str, Any]) -> None:
        manifest.append(out, record)
        if record["status"] == "done":
            summary.done.append(record["case_id"])
        else:
            summary.failed[record["case_id"]] = record.get("error", "")
        if "worker_pid" in record:
            summary.loads[str(record["worker_pid"])] = record.get("model_loads", 0)
        progress(len(summary.done) + len(summary.failed), total, f"{record['case_id']}: {record['status']}")

    cores = os.cpu_count() or 1
    threads = threads or (cores if scheduler == "none" else max(1, cores // max(workers, 1)))
    if scheduler == "none" or not todo:
        _check_out(out)  # after every other check: a refused run leaves no folder behind
        for case, key in todo:
            finish(run_case(case, settings, key, str(out), run_id, threads))
    else:
        client, cluster = _client(scheduler, workers, threads, timeout)
        try:
            _check_out(out)
            summary.dashboard = client.dashboard_link
            if on_start:
                on_start(summary.dashboard)
            from distributed import as_completed

            futures = {
                client.submit(run_case, case, settings, key, str(out), run_id, threads, key=f"{case.case_id}-{run_id}", pure=False): case
                for case, key in todo
            }
            for future in as_completed(list(futures)):
                case = futures.pop(future)
                try:
                    record = _result(future)
                except Exception as err:  # noqa: BLE001 - e.g. KilledWorker: the case failed, the run goes on
                    record = {"case_id": case.case_id, "run_id": run_id, "status": "failed", "key": None,
                              "error": f"the worker running this case died repeatedly ({type(err).__name__}: {err})"}
                # released at once: a result lost later with its worker must not be computed (and written) again
                future.release()
                finish(record)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    summary.seconds = time.time() - started
    _reports(out, summary)
    return summary


def _result(future: Any, attempts: int = 3) -> dict[str, Any]:
    """A finished case's record. When the worker holding it dies before the client fetched it, Dask computes the
    case again elsewhere: wait for that instead of failing (a case whose workers keep dying raises KilledWorker)."""
    from distributed import KilledWorker

    for _attempt in range(attempts - 1):
        try:
            return future.result()
        except KilledWorker:
            raise
        except Exception:
            if future.status == "error":
                raise
            time.sleep(1.0)
    return future.result()


def _reports(out: Path, summary: BatchSummary) -> None:
    """``metrics.csv`` and the Dice summary over every case of the folder's manifest with Dice figures (all parts
    of a job array, so the last part to finish writes the whole cohort's), and ``summary.json`` of this run."""
    import numpy as np

    latest = manifest.latest(manifest.read(out))
    rows = [record for record in latest.values() if record.get("status") == "done" and record.get("dice")]
    regions = sorted({r for row in rows for r in row["dice"]})
    if rows:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["case_id", *(f"dice_{r}" for r in regions)])
        for row in rows:
            writer.writerow([row["case_id"], *(row["dice"].get(r, "") for r in regions)])
        write_text_atomic(out / "metrics.csv", text.getvalue(), what="Metrics file")
        for region in regions:
            values = np.array([row["dice"][region] for row in rows if region in row["dice"]], dtype=float)
            summary.metrics[region] = {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4),
                                       "min": round(float(values.min()), 4), "cases": int(len(values))}
    write_text_atomic(out / "summary.json", json.dumps(summary.as_dict(), indent=1) + "\n", what="Summary file")
