"""One case of a batch run, as a worker runs it: the model comes from a per-process cache (loaded once per
worker, never once per case), the output is written atomically with its provenance, and any failure becomes a
``failed`` record with its message instead of stopping the run."""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import MedAdaptError
from .cohort import Case, output_name

METHODS = ("segment", "tta", "fewshot-apply", "embed")
LABELS_FOLDER = "labels"

#: Per-process model sessions (a Dask worker process keeps its own: the model is loaded once per worker).
_SESSIONS: dict[str, Any] = {}


@dataclass(frozen=True)
class BatchSettings:
    """What every case of a run does.

    Attributes
    ----------
    method
        ``segment``, ``tta`` (test-time adaptation, then segment), ``fewshot-apply`` (a saved few-shot adapter)
        or ``embed`` (Segment Anything slice embeddings of the first modality's axial planes into the disk
        embedding cache, where the Segment Anything dock finds them).
    model
        Model name or card path (default: the bundled segmentation model; ``litemedsam`` for ``embed``).
    adapter
        The adapter folder (``fewshot-apply``).
    tta
        Test-time adaptation method (``tta``).
    largest_component
        ``None``: the card's post-processing.
    device
        Compute device (default: automatic).
    """

    method: str
    model: str | None = None
    adapter: str | None = None
    tta: str = "bn_affine"
    largest_component: bool | None = None
    device: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return asdict(self)


def _session(settings: BatchSettings, threads: int | None) -> Any:
    from ..device import limit_torch_threads, select_device
    from ..session import ModelSession

    key = str(settings.device)
    if key not in _SESSIONS:
        limit_torch_threads(threads)
        _SESSIONS[key] = ModelSession(device=select_device(settings.device))
    return _SESSIONS[key]


def loads_in_this_process() -> int:
    """Model files read by this process's batch sessions (a worker reports it: once per worker, not per case)."""
    return sum(s.loads for s in _SESSIONS.values())


def _segment(case: Case, volume: Any, settings: BatchSettings, session: Any) -> tuple[Any, dict[str, str], dict[str, Any]]:
    """Labels, class names and model/adapter entries of one case."""
    from ..provenance import model_entry

    if settings.method == "fewshot-apply":
        from ..adapt.fewshot.io import apply_adapter

        labels, _probs, card = apply_adapter(settings.adapter, volume, session, model=settings.model)
        names = dict(zip(card["labels"], card["class_names"] or [str(v) for v in card["labels"]], strict=True))
        base = session.model(settings.model or card["base_model"])
        return labels, names, {"model": model_entry(base), "adapter": {"name": card["name"], "sha256": card["weights_sha256"], "path": card["path"]}}
    model_ref = settings.model or "glioma2d"
    model = session.model(model_ref)
    if settings.method == "tta":
        from ..adapt.tta.workflow import adapt_and_segment

        prediction = adapt_and_segment(session, model_ref, volume, {"method": settings.tta}, segment_source=False,
                                       largest_component=settings.largest_component).after
    else:
        prediction = session.segment(model_ref, volume, largest_component=settings.largest_component)
    return prediction.labels, prediction.class_names, {"model": model_entry(model)}


def _embed(volume: Any, settings: BatchSettings, session: Any) -> dict[str, Any]:
    from ..intensity import display_window
    from ..jobs import JobContext
    from ..sam.workspace import ModelChoice

    name = settings.model or "litemedsam"
    predictor = session.sam.predictor(ModelChoice(name), JobContext(), [])
    predictor.cache.write_disk = True  # the point of embedding a cohort: the dock reads them from the disk cache
    embedded = {}
    for modality, image in zip(volume.channels, volume.data, strict=True):
        # every modality, with the window the dock starts from: the reader's contrast limits of that layer
        window = display_window(modality, image)
        output = session.sam.precompute(ModelChoice(name), image, window, 0, ctx=JobContext())
        embedded[modality] = {"computed": output.value.computed, "cached": output.value.cached, "window": [float(v) for v in window]}
    return {"model": {"name": name, "sha256": predictor.model.weights_hash}, "embedded": embedded}


def _rss_mb() -> float:
    """This process's resident memory now, in MB (psutil, which Dask installs; 0 without it)."""
    try:
        import psutil
    except ImportError:
        return 0.0
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _metrics(labels: Any, case: Case, geometry: Any, class_names: dict[int, str]) -> dict[str, Any]:
    import numpy as np

    from ..labelmaps import load_labels
    from ..metrics import evaluate_labels

    reference = load_labels(case.reference, geometry)
    scheme = "brats" if {1, 2, 4} >= set(int(v) for v in class_names if v) and len(class_names) == 4 else "labels"
    scores = evaluate_labels(np.asarray(labels), reference, geometry.spacing, scheme=scheme, with_hd95=False)
    return {region: round(values["dice"], 4) for region, values in scores.items()}


def _series_entries(record: dict[str, Any], images: dict[str, str]) -> None:
    """Describe DICOM inputs in a provenance record by their series (UID sha256, modality, number), never by a
    patient identifier."""
    from ..dicom import is_dicom_source, provenance_entry

    for name, path in images.items():
        if is_dicom_source(path):
            record["inputs"][name] = provenance_entry(path)


def run_case(
    case: Case, settings: BatchSettings, key: dict[str, Any], out_dir: str, run_id: str, threads: int | None = None,
) -> dict[str, Any]:
    """Process ``case`` and return its manifest record (``status`` ``done`` or ``failed`` with the message);
    ``threads``: torch threads of this process (set when its session is first made)."""
    from ..cases import load_case
    from ..provenance import package_version, provenance_record

    started = time.time()
    record: dict[str, Any] = {
        "case_id": case.case_id, "run_id": run_id, "key": key, "method": settings.method, "settings": settings.as_dict(),
        "inputs": dict(case.images), "reference": case.reference, "worker_pid": os.getpid(),
        "versions": {"napari-medadapt": package_version("napari-medadapt"), "torch": package_version("torch")},
    }
    try:
        if case.problem is not None:
            raise MedAdaptError(case.problem)
        session = _session(settings, threads)
        record["device"] = str(session.device)
        volume, _labels = load_case(case.images)
        read = time.time()
        if settings.method == "embed":
            record.update(_embed(volume, settings, session), output=None)
        else:
            labels, class_names, entries = _segment(case, volume, settings, session)
            provenance = provenance_record(
                settings.method, inputs=case.images, settings={**settings.as_dict(), "case_id": case.case_id},
                device=str(session.device), **entries,
            )
            _series_entries(provenance, case.images)
            path = Path(out_dir) / LABELS_FOLDER / output_name(case.case_id)
            from ..hashing import sha256_file
            from ..labelmaps import save_labels

            inputs = [*case.images.values(), *([case.reference] if case.reference else [])]
            save_labels(labels.astype("uint8" if max(class_names, default=0) < 256 else "int16"), volume.geometry, path,
                        class_names=class_names, inputs=inputs, provenance=provenance)
            record.update(entries, output=f"{LABELS_FOLDER}/{path.name}", output_sha256=sha256_file(path))
            if case.reference:
                try:
                    record["dice"] = _metrics(labels, case, volume.geometry, class_names)
                except MedAdaptError as err:  # the labels are written: the case is done, its scores are not
                    record["metrics_error"] = str(err)
        record.update(status="done", seconds={"read": round(read - started, 3), "total": round(time.time() - started, 3)})
    except MedAdaptError as err:
        record.update(status="failed", error=str(err), seconds={"total": round(time.time() - started, 3)})
    except MemoryError:
        record.update(status="failed", error="out of memory on this worker; run fewer workers or a smaller model", seconds={"total": round(time.time() - started, 3)})
    except Exception as err:  # noqa: BLE001 - a bad case must never stop the run; its record keeps the cause
        detail = traceback.format_exception_only(type(err), err)[-1].strip()
        if type(err).__name__ == "OutOfMemoryError":  # torch's, on a GPU
            detail = f"out of GPU memory ({detail}); run on --device cpu or with fewer workers per GPU"
        else:
            detail += " (an unexpected error: please report it)"
        record.update(status="failed", error=detail, seconds={"total": round(time.time() - started, 3)})
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record["model_loads"] = loads_in_this_process()
    record["rss_mb"] = _rss_mb()  # with the model and this case's volume still loaded
    return record
