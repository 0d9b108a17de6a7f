"""The preparation chain of one patient's brain MRI: co-register, extract the brain, correct the bias field.

:func:`prepare_scans` takes the sequences as read (each on its own grid) and returns them on the reference
sequence's grid (FLAIR by default), brain-only and bias-corrected as decided, with a record of every step.
Nothing is written and the inputs are never changed; :func:`save_prepared` writes the results next to each other
(atomically, never over an input). The order: register every sequence onto the reference (skipped for one
sequence, or a sequence already on the reference grid); detect whether the reference is skull-stripped and, if
not (and ``strip`` is ``"auto"``), compute the brain mask on the T1 (else T1c, else the reference) and apply it
to every sequence; fit the bias field of every sequence inside the brain (or head) and remove it where
``n4`` says so. Registration and N4 report progress and stop on cancellation within ten iterations; brain
extraction reports before and after its one network pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VolumeError
from ..intensity import foreground_mask
from ..jobs import JobContext, ensure_context
from ..volume import Geometry, Volume, canonical_modality
from .bias import CORRECT_ITERATIONS, STRONG_FIELD, BiasField, field_spread, fit_bias_field
from .brain import MASK_SEQUENCES, StripCheck, check_stripped, extract_brain
from .itk import to_sitk
from .register import Registration, coregister, head_mask

#: Reference sequences in order of preference when the requested one is absent.
REFERENCE_ORDER = ("flair", "t1c", "t1", "t2")
#: Brain MRI sequences the chain is made for.
BRAIN_SEQUENCES = ("t1", "t1c", "t2", "flair")
N4_CHOICES = ("auto", "on", "off")
STRIP_CHOICES = ("auto", "on", "off")
#: Fewest voxels along any axis of a sequence the chain accepts.
MIN_SLICES = 8


@dataclass
class PreparedScans:
    """The sequences of one patient prepared for a model.

    Attributes
    ----------
    volume
        Every sequence on the reference grid, in the order given (brain-only and corrected as recorded).
    reference
        The sequence whose grid the others were brought onto (and labels are written on).
    brain_mask
        bool ``(Z, Y, X)`` on the reference grid, or ``None`` when no extraction ran.
    strip_check
        The skull-stripping verdict of the reference as given.
    registrations
        One record per moved sequence.
    bias
        One record per sequence.
    notes
        What was done or skipped, in words.
    seconds
        Time per step.
    """

    volume: Volume
    reference: str
    brain_mask: np.ndarray | None
    strip_check: StripCheck
    registrations: list[Registration] = field(default_factory=list)
    bias: list[BiasField] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def geometry(self) -> Geometry:
        """The reference grid."""
        return self.volume.geometry

    def report(self) -> dict[str, Any]:
        """What was done, JSON-ready."""
        return {
            "reference": self.reference,
            "sequences": list(self.volume.channels),
            "inputs": dict(zip(self.volume.channels, self.volume.source_paths, strict=False)),
            "grid": self.geometry.describe(),
            "skull_stripped_as_given": self.strip_check.stripped,
            "strip_check": {"outside_zero": self.strip_check.outside_zero, "nonzero_ml": self.strip_check.nonzero_ml},
            "brain_extracted": self.brain_mask is not None,
            "brain_ml": None if self.brain_mask is None else float(self.brain_mask.sum() * np.prod(self.geometry.spacing) / 1000),
            "registrations": [r.to_dict() for r in self.registrations],
            "bias_field": [b.to_dict() for b in self.bias],
            "notes": list(self.notes),
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def choose_reference(modalities: list[str], requested: str | None) -> str:
    """The requested reference when given, else the first of :data:`REFERENCE_ORDER` present, else the first."""
    if requested:
        if requested in modalities:
            return requested
        key = canonical_modality(requested) or requested.lower()
        if key not in modalities:
            raise VolumeError(f"reference {requested!r} is not among the sequences given ({', '.join(modalities)}).")
        return key
    return next((m for m in REFERENCE_ORDER if m in modalities), modalities[0])


def _check_inputs(sequences: Mapping[str, Volume]) -> None:
    if not sequences:
        raise VolumeError("No sequence to prepare: give at least one brain MRI sequence (e.g. flair=FILE).")
    for name, volume in sequences.items():
        if volume.data.shape[0] != 1:
            raise VolumeError(f"{name} holds {volume.data.shape[0]} channels; give one file per sequence.")
        if min(volume.data.shape[1:]) < MIN_SLICES:
            raise VolumeError(
                f"{name} has shape {volume.data.shape[1:]}: too thin to register or extract a brain from (at least "
                f"{MIN_SLICES} slices along every axis); leave out localisers and single slices."
            )
    if "ct" in sequences:
        raise VolumeError(
            "The preparation chain (co-registration, brain extraction, bias-field correction) is for brain MRI; "
            "a CT needs none of it: segment the CT directly."
        )


def prepare_scans(
    sequences: Mapping[str, Volume],
    *,
    reference: str | None = None,
    strip: str = "auto",
    n4: str = "auto",
    device: Any = None,
    ctx: JobContext | None = None,
) -> PreparedScans:
    """Prepare one patient's sequences (each a one-channel :class:`Volume` on its own grid).

    Parameters
    ----------
    sequences
        ``{modality: Volume}`` as read from the files.
    reference
        The sequence whose grid the result is on (default: FLAIR, else T1c, T1, T2, else the first).
    strip
        ``"auto"``: extract the brain when the reference is not skull-stripped; ``"on"``: also when it looks
        stripped (the detection can be wrong); ``"off"``: never.
    n4
        ``"auto"``: remove the bias field of every sequence when their median field spread exceeds
        :data:`~napari_medadapt.core.preprocess.bias.STRONG_FIELD`; ``"on"``: always; ``"off"``: never.
    device
        Torch device for brain extraction.
    ctx
        Progress (one stage per step) and cancellation.
    """
    if strip not in STRIP_CHOICES:
        raise VolumeError(f"strip must be one of {', '.join(STRIP_CHOICES)}; got {strip!r}.")
    if n4 not in N4_CHOICES:
        raise VolumeError(f"n4 must be one of {', '.join(N4_CHOICES)}; got {n4!r}.")
    ctx = ensure_context(ctx)
    _check_inputs(sequences)
    names = list(sequences)
    ref_name = choose_reference(names, reference)
    ref = sequences[ref_name]
    notes: list[str] = []
    seconds: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {ref_name: ref.data[0].astype(np.float32)}
    registrations: list[Registration] = []

    started = time.perf_counter()
    for name in names:
        if name == ref_name:
            continue
        moving = sequences[name]
        if moving.geometry.matches(ref.geometry):
            arrays[name] = moving.data[0].astype(np.float32)
            notes.append(f"{name} is on the grid of {ref_name} already: not registered.")
            continue
        arrays[name], record = coregister(ref, moving, ctx=ctx)
        registrations.append(record)
    if len(names) == 1:
        notes.append(f"one sequence ({ref_name}): nothing to co-register.")
    seconds["registration"] = time.perf_counter() - started

    started = time.perf_counter()
    strip_check = check_stripped(arrays[ref_name], ref.geometry.spacing)
    brain: np.ndarray | None = None
    unknown = [n for n in names if n not in BRAIN_SEQUENCES]
    if strip_check.stripped and strip != "on":
        notes.append(strip_check.describe(ref_name) + " No brain extraction.")
    elif strip == "off":
        notes.append(strip_check.describe(ref_name) + " Brain extraction was switched off.")
    else:
        source = next((m for m in MASK_SEQUENCES if m in arrays), ref_name)
        if source not in MASK_SEQUENCES:
            notes.append(
                f"brain mask computed on {source}: the extraction network was trained on T1-weighted scans; check "
                "the brain mask layer (add a T1 for a better mask)."
            )
        if unknown:
            notes.append(f"{', '.join(unknown)}: not a brain MRI sequence this chain knows; masked like the others.")
        brain = extract_brain(arrays[source], device=device, ctx=ctx)
        for name in names:
            arrays[name] = arrays[name] * brain
        notes.append(
            f"brain extracted on {source} ({brain.sum() * np.prod(ref.geometry.spacing) / 1000:.0f} mL) and applied "
            "to every sequence."
        )
    seconds["brain extraction"] = time.perf_counter() - started

    started = time.perf_counter()
    region = brain if brain is not None else (
        foreground_mask(arrays[ref_name]) if strip_check.stripped else head_mask(arrays[ref_name])
    )
    bias: list[BiasField] = []
    if n4 != "off":
        images = {name: to_sitk(arrays[name].astype(np.float32), ref.geometry) for name in names}
        spreads = {name: field_spread(fit_bias_field(images[name], region, ctx=ctx, label=name), region) for name in names}
        strong = float(np.median(list(spreads.values())))
        correct = n4 == "on" or strong > STRONG_FIELD
        for name in names:
            if correct:
                field = fit_bias_field(images[name], region, ctx=ctx, label=name, iterations=CORRECT_ITERATIONS)
                arrays[name] = np.where(region, arrays[name] / field, arrays[name]).astype(np.float32)
            bias.append(BiasField(name, spreads[name], correct))
        notes.append(
            f"bias field removed from {', '.join(names)} (median spread {strong:.2f})." if correct
            else f"no strong bias field (median spread {strong:.2f}, threshold {STRONG_FIELD})."
        )
    seconds["bias field"] = time.perf_counter() - started
    volume = Volume(
        np.stack([arrays[n] for n in names]).astype(np.float32),
        ref.geometry,
        tuple(names),
        tuple(sequences[n].source_paths[0] if sequences[n].source_paths else "" for n in names),
    )
    return PreparedScans(volume, ref_name, brain, strip_check, registrations, bias, notes, seconds)


def load_sequences(paths: Mapping[str, str | Path]) -> tuple[dict[str, Volume], list[str]]:
    """Read ``{modality: file or DICOM series}``; a 2D image (a localiser) or a 4D series is skipped with a note
    (a DICOM source's own notes, e.g. the series chosen, come with them)."""
    from ..dicom import is_dicom_source, load_dicom
    from ..volume import file_layout, load_volume, open_nifti

    sequences: dict[str, Volume] = {}
    skipped: list[str] = []
    for name, path in paths.items():
        if is_dicom_source(path):  # the reader skips localisers and refuses what is not one volume
            sequences[name], notes = load_dicom(path, name=name)
            skipped.extend(f"{name}: {note}" for note in notes)
            continue
        spatial, kind, channels = file_layout(open_nifti(path), path)
        if kind == "series":
            skipped.append(f"{name} ({path}) is a series of volumes, not one scan: skipped.")
        elif min(spatial) == 1:
            skipped.append(f"{name} ({path}) is a single 2D image (e.g. a localiser), not a volume: skipped.")
        elif kind == "channels" and channels > 1:
            skipped.append(f"{name} ({path}) holds {channels} channels; give one file per sequence: skipped.")
        else:
            sequences[name] = load_volume(path, name=name)
    return sequences, skipped


def output_paths(folder: str | Path, sequences: list[str]) -> list[Path]:
    """The files :func:`save_prepared` writes into ``folder`` for ``sequences`` (the mask when one is made)."""
    folder = Path(folder)
    return [folder / f"{name}.nii.gz" for name in sequences] + [folder / "brain_mask.nii.gz", folder / "preprocess.json"]


def check_outputs(folder: str | Path, sequences: list[str], inputs: list[str | Path] = ()) -> None:
    """Refuse, before anything runs or is written, an output folder that is missing or where an output would
    replace an input or a read-only file."""
    from ..files import check_output_path

    if not Path(folder).is_dir():
        raise VolumeError(f"{folder} is not an existing folder; create it first.")
    for path in output_paths(folder, sequences):
        check_output_path(path, inputs=inputs, what="Output file")


def save_prepared(prepared: PreparedScans, folder: str | Path, inputs: list[str | Path] = ()) -> list[Path]:
    """Write the prepared sequences (``MODALITY.nii.gz``), the brain mask (``brain_mask.nii.gz``) and
    ``preprocess.json`` into ``folder`` on the reference grid; every output is checked first (:func:`check_outputs`),
    so nothing is written when one of them would replace an input."""
    from ..files import write_text_atomic
    from ..labelmaps import save_labels
    from ..volume import save_image

    folder = Path(folder)
    check_outputs(folder, list(prepared.volume.channels), inputs)
    written = [
        save_image(prepared.volume.channel(name), prepared.geometry, folder / f"{name}.nii.gz", inputs=inputs)
        for name in prepared.volume.channels
    ]
    if prepared.brain_mask is not None:
        written.append(
            save_labels(prepared.brain_mask.astype(np.uint8), prepared.geometry, folder / "brain_mask.nii.gz",
                        class_names={0: "background", 1: "brain"}, inputs=inputs)
        )
    written.append(write_text_atomic(folder / "preprocess.json", json.dumps(prepared.report(), indent=2) + "\n"))
    return written
