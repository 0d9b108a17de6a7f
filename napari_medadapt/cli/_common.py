"""Helpers shared by the sub-commands that run a model on ``--image MODALITY=PATH`` inputs.

``segment``, ``shift-score`` and ``tts`` take the same ``--model``/``--image``/``--device`` arguments, read the
images into one :class:`~napari_medadapt.core.volume.Volume`, load the model, check that it accepts those
inputs and report progress on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any


def add_model_arguments(parser: argparse.ArgumentParser, model_help: str) -> None:
    """Add ``--model NAME_OR_PATH`` (default: the bundled model) and the repeatable ``--image MODALITY=PATH``."""
    parser.add_argument("--model", default=None, metavar="NAME_OR_PATH", help=model_help)
    parser.add_argument(
        "--image",
        action="append",
        required=True,
        metavar="MODALITY=PATH",
        help="an input image and its modality, e.g. flair=case/flair.nii.gz or ct=DICOM_FOLDER (a DICOM folder, "
        ".dcm file or zip; repeat per modality)",
    )
    add_series_argument(parser)


class _SeriesAction(argparse.Action):
    """``--series S`` after ``--image MOD=DICOM``: that input's series (kept as ``DICOM#S``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        images = getattr(namespace, "image", None)
        if not images:
            parser.error("--series goes after the --image whose DICOM series it chooses.")
        images[-1] = f"{images[-1]}#{values}"


def add_series_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--series`` (the series of the preceding DICOM ``--image``: number, SeriesInstanceUID or description)."""
    parser.add_argument(
        "--series",
        action=_SeriesAction,
        metavar="SERIES",
        help="for a DICOM input holding several series: the series to use (its number, SeriesInstanceUID or words "
        "of its description; given after that --image). Default: the largest CT/MR series, with a note",
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--device``."""
    parser.add_argument("--device", default=None, help="compute device: auto, cpu, cuda, cuda:N or mps")


def check_nifti_out(path: str, inputs: Iterable[str | os.PathLike] = (), dicom_ok: bool = False) -> None:
    """Check ``--out`` before any computation: a NIfTI name, a writable folder, not an input, not read-only.

    Raises :class:`~napari_medadapt.cli.CLIError` or :class:`~napari_medadapt.core.files.OutputError`.
    """
    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.files import check_output_path
    from napari_medadapt.core.volume import is_nifti_path

    if not is_nifti_path(path) and not (dicom_ok and str(path).lower().endswith(".dcm")):
        also = " (or .dcm: a DICOM SEG, for a DICOM input)" if dicom_ok else ""
        raise CLIError(f"--out {path}: the output must be a .nii.gz or .nii file{also}.")
    check_output_path(path, inputs=inputs, what="--out")


def load_checked_model(name_or_path: str | None, channels: tuple[str, ...], device: Any = None) -> Any:
    """Load ``--model`` (default: the bundled model) and check that it accepts the ``channels`` given."""
    from napari_medadapt.core.models import DEFAULT_MODEL, load_model

    model = load_model(name_or_path or DEFAULT_MODEL, device=device)
    model.card.check_modalities(channels)
    return model


def text_progress(label: str, stream=None) -> Callable[[int, int, str], None]:
    """A progress callback printing ``label: done/total message`` lines (one updating line on a terminal)."""
    stream = sys.stderr if stream is None else stream
    interactive = stream.isatty()

    def report(done: int, total: int, message: str) -> None:
        line = f"{label}: {done}/{total} {message}".rstrip()
        if interactive:
            stream.write("\r\033[K" + line + ("\n" if done >= total else ""))
        else:
            stream.write(line + "\n")
        stream.flush()

    return report


def parse_images(specs: list[str]) -> dict[str, str]:
    """``["flair=a.nii.gz", ...]`` -> ``{"flair": "a.nii.gz"}`` (modality aliases such as t1ce -> t1c)."""
    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.volume import canonical_modality

    images: dict[str, str] = {}
    for spec in specs:
        modality, sep, path = spec.partition("=")
        if not sep or not modality.strip() or not path.strip():
            raise CLIError(f"--image {spec!r}: write it as MODALITY=PATH, e.g. --image flair=case/flair.nii.gz")
        key = canonical_modality(modality.strip()) or modality.strip().lower()
        if key in images:
            raise CLIError(f"--image: modality {key!r} is given twice ({images[key]} and {path.strip()}).")
        images[key] = path.strip()
    return images


def load_images(images: dict[str, str]):
    """One :class:`Volume` from single-modality files, on the first file's grid (others must match it)."""
    import numpy as np

    from napari_medadapt.core.errors import VolumeError
    from napari_medadapt.core.volume import Volume

    volumes = []
    for modality, path in images.items():
        volume = load_input(path, modality)
        if volume.data.shape[0] != 1:
            raise VolumeError(f"{path} holds {volume.data.shape[0]} channels; give one file per modality.")
        volumes.append(volume)
    first = volumes[0]
    for modality, volume in zip(list(images)[1:], volumes[1:], strict=True):
        if not volume.geometry.matches(first.geometry):
            raise VolumeError(
                f"{modality} ({images[modality]}) is not on the voxel grid of {first.channels[0]} "
                f"({images[first.channels[0]]}): {volume.geometry.describe()} vs {first.geometry.describe()}. "
                "Add --preprocess to co-register them onto the first image (medadapt preprocess writes the "
                "registered files)."
            )
    return Volume(
        np.concatenate([v.data for v in volumes]),
        first.geometry,
        tuple(images),
        tuple(images.values()),
    )


def is_dicom_input(path: str) -> bool:
    """Whether an ``--image`` path is DICOM (a folder, .dcm file or zip, optionally ``#SERIES``), not NIfTI."""
    from napari_medadapt.core.dicom import is_dicom_source
    from napari_medadapt.core.volume import is_nifti_path

    return not is_nifti_path(path) and is_dicom_source(path)


def load_input(path: str, modality: str):
    """One ``--image``: a NIfTI file, or a DICOM series (its notes printed on stderr as ``note: ...``)."""
    from napari_medadapt.core.volume import load_volume

    if not is_dicom_input(path):
        return load_volume(path, name=modality)
    from napari_medadapt.core.dicom import load_dicom

    volume, notes = load_dicom(path, name=modality)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return volume


def input_entries(images: dict[str, str], record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its DICOM inputs described by their series (the SeriesInstanceUID's sha256, modality, number:
    never a patient identifier) instead of a file checksum."""
    from napari_medadapt.core.dicom import provenance_entry

    for name, path in images.items():
        if name in record.get("inputs", {}) and is_dicom_input(path):
            record["inputs"][name] = provenance_entry(path)
    return record
