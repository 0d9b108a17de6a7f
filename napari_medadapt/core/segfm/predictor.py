"""The challenge's predictor contract: one case file in, ``segs`` out, state only through the file.

Step 0 (``boxes``, no ``clicks``): every class from its 3D box. A click step (``clicks`` present): each class
starts from ``prev_pred == class`` with its box and its earlier clicks as history, and its newest click (the last
entry of ``clicks_order``) updates the 3D object; without ``prev_pred`` every interaction is replayed. Classes
never overlap (the class a click is for takes other classes' voxels only near the click). Embeddings come from the
predictor's cache (memory, and the disk store when it has one), so a later step re-encodes nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..interactive import Click, ObjectSet, SliceEngine
from .npz_io import ClassClicks, SegFMCase, SegFMInputError, load_case, save_case


def case_window(imgs: np.ndarray) -> tuple[float, float]:
    """The intensity window: 0-255 for the challenge's uint8 images, else the image's range."""
    if imgs.dtype == np.uint8:
        return 0.0, 255.0
    lo, hi = float(imgs.min()), float(imgs.max())
    return lo, hi if hi > lo else lo + 1.0


def predict_case(case: SegFMCase, predictor: Any, spread: bool = True, **engine_options: Any) -> np.ndarray:
    """``segs`` (uint8, the image's shape; class ``k`` = ``k``-th box/click entry + 1) for one case step.

    Parameters
    ----------
    case
        The loaded case (:func:`~.npz_io.load_case`).
    predictor
        A ``core.sam.SamPredictor``.
    spread
        Let each click update the whole 3D object (``False``: the clicked slice only).
    engine_options
        Overrides of :class:`~..interactive.SliceEngine`'s defaults (the dock's, chosen on data the benchmark does
        not score: docs/benchmarks/segfm.md).
    """
    engine = SliceEngine(predictor, case.imgs, case_window(case.imgs), spread=spread, **engine_options)
    objects = ObjectSet(engine)
    click_step = case.clicks is not None
    pending: list[tuple[int, list]] = []
    for k in range(case.n_classes):
        box = case.boxes[k] if case.boxes is not None else None
        clicks = case.clicks[k] if case.clicks is not None and k < len(case.clicks) else ClassClicks()
        seq = [Click(tuple(p), positive) for p, positive in clicks.sequence()]
        if click_step and case.prev_pred is not None:
            history = ([box] if box is not None else []) + seq
            todo = []
            if clicks.newest is not None and seq:
                history, todo = history[:-1], [history[-1]]
            obj = objects.add(f"class {k + 1}", mask=case.prev_pred == k + 1, interactions=history)
        else:  # step 0, or a click step without the previous prediction: replay every interaction
            obj = objects.add(f"class {k + 1}")
            todo = ([box] if box is not None else []) + (seq if click_step else [])
        pending.append((obj, todo))
    rounds = max((len(t) for _, t in pending), default=0)
    for r in range(rounds):  # step by step over the classes, as the interactions came
        for obj, todo in pending:
            if r < len(todo):
                objects.interact(obj, todo[r])
    if case.n_classes > 255:
        raise SegFMInputError(f"{case.name}: {case.n_classes} classes do not fit the uint8 'segs'.")
    return objects.labels(np.uint8)


@dataclass
class FolderResult:
    """What :func:`run_folder` did: files written, one message per refused file, seconds per written file."""

    written: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_folder(
    inputs: str | Path,
    outputs: str | Path,
    predictor: Any,
    spread: bool = True,
    log: Callable[[str], None] | None = None,
    **engine_options: Any,
) -> FolderResult:
    """Predict every ``*.npz`` of ``inputs`` into the same file name in ``outputs`` (``segs``, atomically).

    A file that cannot be used gets one message naming it and its key; nothing is written for it, and the other
    files are still processed.
    """
    from ..files import check_output_path

    log = log or (lambda message: print(message, file=sys.stderr))
    inputs, outputs = Path(inputs), Path(outputs)
    result = FolderResult()
    for path in sorted(inputs.glob("*.npz")):
        try:
            case = load_case(path)
            target = check_output_path(outputs / path.name, inputs=[path], what="output")
            start = time.perf_counter()
            segs = predict_case(case, predictor, spread=spread, **engine_options)
            save_case(target, segs=segs)
            result.seconds[path.name] = time.perf_counter() - start
            result.written.append(path.name)
        except SegFMInputError as err:
            result.errors[path.name] = str(err)
            log(f"skipped {err}")
        except Exception as err:  # noqa: BLE001 - one bad case must not stop the others
            from ..errors import MedAdaptError

            if not isinstance(err, MedAdaptError):
                raise
            result.errors[path.name] = f"{path.name}: {err}"
            log(f"skipped {path.name}: {err}")
    return result
