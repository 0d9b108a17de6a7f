"""``medadapt segment``: segment a volume with a model (optionally adapted at test time) and save the labels.

    medadapt segment --model NAME_OR_PATH --image MODALITY=PATH [--image MODALITY=PATH ...] --out OUT.nii.gz
                     [--tta none|bn_affine|normalizer|tent] [--device DEV]

The labels are written on the source grid of the first image, with its affine. Progress goes to stderr,
the per-class volumes (mL) to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

TTA_METHODS = ("none", "bn_affine", "normalizer", "tent")


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "segment a volume with a model and write the label map"
    parser = subparsers.add_parser("segment", help=help_text, description=help_text)
    parser.add_argument(
        "--model",
        default=None,
        metavar="NAME_OR_PATH",
        help="bundled model name, model card (.json) or weight file (.safetensors/.pt with its card beside it); "
        "default: the bundled brain-tumour model glioma2d",
    )
    parser.add_argument(
        "--image",
        action="append",
        required=True,
        metavar="MODALITY=PATH",
        help="an input image and its modality, e.g. flair=case/flair.nii.gz (repeat per modality)",
    )
    parser.add_argument("--out", required=True, metavar="OUT.nii.gz", help="where to write the label map")
    parser.add_argument(
        "--tta", choices=TTA_METHODS, default="none", help="test-time adaptation before segmenting (default: none)"
    )
    parser.add_argument("--device", default=None, help="compute device: auto, cpu, cuda, cuda:N or mps")
    parser.set_defaults(func=run)


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
    from napari_medadapt.core.volume import Volume, load_volume

    volumes = []
    for modality, path in images.items():
        volume = load_volume(path, name=modality)
        if volume.data.shape[0] != 1:
            raise VolumeError(f"{path} holds {volume.data.shape[0]} channels; give one file per modality.")
        volumes.append(volume)
    first = volumes[0]
    for modality, volume in zip(list(images)[1:], volumes[1:], strict=True):
        if not volume.geometry.matches(first.geometry):
            raise VolumeError(
                f"{modality} ({images[modality]}) is not on the voxel grid of {first.channels[0]} "
                f"({images[first.channels[0]]}): {volume.geometry.describe()} vs {first.geometry.describe()}. "
                f"Register and resample the images to one grid first."
            )
    return Volume(
        np.concatenate([v.data for v in volumes]),
        first.geometry,
        tuple(images),
        tuple(images.values()),
    )


def run(args: argparse.Namespace) -> int:
    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.device import select_device
    from napari_medadapt.core.inference import predict_volume
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.models import DEFAULT_MODEL, load_model
    from napari_medadapt.core.volume import is_nifti_path, save_labels

    if not is_nifti_path(args.out):
        raise CLIError(f"--out {args.out}: the output must be a .nii.gz or .nii file.")
    device = select_device(args.device)
    images = parse_images(args.image)
    volume = load_images(images)
    model = load_model(args.model or DEFAULT_MODEL)
    model.card.check_modalities(volume.channels)
    print(f"model {model.card.name} ({model.spatial_dims}D) on {device}; inputs {', '.join(volume.channels)}",
          file=sys.stderr)
    if args.tta != "none":
        try:
            from napari_medadapt.core.adapt.tta import adapt
        except ImportError as err:
            raise CLIError(
                f"--tta {args.tta}: test-time adaptation is not available in this installation ({err}); "
                f"run with --tta none."
            ) from err
        result = adapt(model, volume, method=args.tta, ctx=JobContext(on_progress=text_progress(f"adapt ({args.tta})")))
        model = result.model
        before, after = getattr(result, "shift_score_before", None), getattr(result, "shift_score_after", None)
        if before is not None and after is not None:
            print(f"adapted ({args.tta}): shift score {before:.4g} -> {after:.4g}", file=sys.stderr)
        for warning in getattr(result, "warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
    prediction = predict_volume(
        model,
        volume,
        ctx=JobContext(on_progress=text_progress("segment")),
        device=device,
        return_probabilities=False,
    )
    for note in prediction.notes:
        print(f"note: {note}", file=sys.stderr)
    written = save_labels(prediction.labels, volume.geometry, args.out)
    print(prediction.format_volumes())
    print(f"labels written to {written}", file=sys.stderr)
    return 0
