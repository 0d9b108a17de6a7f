"""``medadapt batch``: run a method over a cohort, resumable, in-process or on Dask.

    medadapt batch segment|tta|fewshot-apply|embed --cases CASES --out DIR [--model NAME_OR_PATH]
                   [--adapter DIR] [--tta bn_affine|normalizer|tent] [--all-components] [--device DEV]
                   [--scheduler none|local|ADDRESS] [--workers N] [--num-parts N --part-id I] [--timeout S]

``CASES`` is a CSV (``case_id``, one column per modality with the file's path, optional ``reference``) or a
folder of case folders. ``DIR`` gets ``labels/CASE.nii.gz`` (each with its provenance sidecar), ``manifest.jsonl``
(one record per case attempt), ``metrics.csv`` (cases with a reference) and ``summary.json``. A rerun skips the
cases already done with the same inputs, model and settings. Exit status: 0 when every case is done; 100 + the
number of failed cases (capped at 255) when some failed; 2 for a problem found before any work (a missing
file, an unwritable folder, a scheduler that does not answer), with its message and nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_medadapt.cli._common import text_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    from napari_medadapt.core.batch.runner import CONNECT_TIMEOUT
    from napari_medadapt.core.batch.tasks import METHODS

    help_text = "run segment, tta, fewshot-apply or embed over a cohort (resumable; in-process or on Dask)"
    parser = subparsers.add_parser("batch", help=help_text, description=help_text)
    parser.add_argument("method", choices=METHODS, help="what to do with every case")
    parser.add_argument("--cases", required=True, type=Path, help="CSV (case_id, modality columns, reference) or folder of case folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder (labels/, manifest.jsonl, metrics.csv, summary.json)")
    parser.add_argument("--model", default=None, help="model name or card (default glioma2d; litemedsam for embed)")
    parser.add_argument("--adapter", default=None, help="few-shot adapter folder (fewshot-apply)")
    parser.add_argument("--tta", default="bn_affine", choices=("bn_affine", "normalizer", "tent"), help="test-time adaptation method (tta)")
    parser.add_argument("--all-components", action="store_true", help="keep every connected region")
    parser.add_argument("--device", default=None, help="compute device: auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--scheduler", default="none", help="none (in this process), local (a LocalCluster) or a Dask scheduler address")
    parser.add_argument("--workers", type=int, default=2, help="workers of --scheduler local (default 2)")
    parser.add_argument("--num-parts", type=int, default=1, help="split the cohort into N parts (job arrays)")
    parser.add_argument("--part-id", type=int, default=0, help="the part this run does (0-based)")
    parser.add_argument("--timeout", type=float, default=CONNECT_TIMEOUT, help=f"seconds to wait for a scheduler address (default {CONNECT_TIMEOUT:.0f})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_medadapt.cli import CLIError
    from napari_medadapt.core.batch import BatchSettings, read_cohort, run_batch

    if args.workers < 1:
        raise CLIError(f"--workers {args.workers}: give at least 1.")
    if (args.method == "fewshot-apply") != bool(args.adapter):
        raise CLIError("--adapter DIR goes with fewshot-apply (and fewshot-apply needs it).")
    cases = read_cohort(args.cases)
    settings = BatchSettings(
        method=args.method, model=args.model, adapter=args.adapter, tta=args.tta,
        largest_component=False if args.all_components else None, device=args.device,
    )
    print(f"{len(cases)} case(s) in {args.cases}; {args.method} with {args.model or 'the default model'}; "
          f"scheduler {args.scheduler}", file=sys.stderr)
    summary = run_batch(
        cases, settings, args.out, scheduler=args.scheduler, workers=args.workers, num_parts=args.num_parts,
        part_id=args.part_id, timeout=args.timeout, on_progress=text_progress("batch"),
        on_start=lambda link: print(f"Dask dashboard: {link}", file=sys.stderr),
    )
    for case_id, error in summary.failed.items():
        print(f"failed: {case_id}: {error}", file=sys.stderr)
    for region, stats in summary.metrics.items():
        print(f"Dice {region}: mean {stats['mean']:.3f} (sd {stats['std']:.3f}, min {stats['min']:.3f}, {stats['cases']} cases)")
    print(f"{len(summary.done)} done, {len(summary.skipped)} already done, {len(summary.failed)} failed in "
          f"{summary.seconds:.0f} s; reports in {args.out}")
    return 100 + min(len(summary.failed), 155) if summary.failed else 0
