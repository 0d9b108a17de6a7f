"""``medadapt segfm --inputs DIR --outputs DIR``: the CVPR 2025 interactive 3D challenge's predictor contract.

Reads every case ``.npz`` of ``--inputs`` (image, boxes and/or clicks, previous prediction) and writes ``segs``
to the same file name in ``--outputs``. Between steps the only state is what the case file holds and the disk
cache of slice embeddings. A file that cannot be used gets one message; the others are still processed
(exit code 1 when any was refused).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "CVPR 2025 interactive 3D challenge predictor: case .npz files in, segs out"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``medadapt segfm``."""
    parser = subparsers.add_parser("segfm", help=HELP, description=__doc__)
    parser.add_argument("--inputs", required=True, type=Path, help="folder of case .npz files")
    parser.add_argument("--outputs", required=True, type=Path, help="folder for the predictions (same file names)")
    parser.add_argument("--model", default=None, help="promptable model (default: the Segment Anything dock's default)")
    parser.add_argument("--device", default=None, help="compute device: auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache folder (default: the plugin's embedding cache)")
    parser.add_argument("--slice-only", action="store_true", help="a click re-predicts its slice only (the old way)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Predict every case of ``--inputs``."""
    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.sam import EmbeddingCache, SamPredictor
    from napari_medadapt.core.sam.registry import DEFAULT_MODEL_NAME
    from napari_medadapt.core.segfm import run_folder

    if not args.inputs.is_dir():
        raise CLIError(f"--inputs {args.inputs}: not a folder; give the folder of the case .npz files.")
    if not args.outputs.is_dir():
        raise CLIError(f"--outputs {args.outputs}: not a folder; create it first.")
    if args.inputs.resolve() == args.outputs.resolve():
        raise CLIError("--outputs must differ from --inputs (each output has its input's file name).")
    if not any(args.inputs.glob("*.npz")):
        raise CLIError(f"--inputs {args.inputs}: no .npz case files there.")
    if args.cache_dir is not None:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
    cache = EmbeddingCache(disk_dir=args.cache_dir if args.cache_dir is not None else True)
    predictor = SamPredictor(args.model or DEFAULT_MODEL_NAME, cache=cache, device=args.device)
    result = run_folder(args.inputs, args.outputs, predictor, spread=not args.slice_only)
    for name in result.written:
        print(f"{name}: {result.seconds[name]:.2f} s")
    return 1 if result.errors else 0
