"""``medadapt provenance FILE.nii.gz``: print how a label file was made (its provenance record, as JSON).

The record is read from the file's header (the plugin's extension), else from its sidecar ``FILE.json``.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "print how a label file was made: inputs and their sha256, model, adapter, method, settings"
    parser = subparsers.add_parser("provenance", help=help_text, description=help_text)
    parser.add_argument("file", metavar="FILE.nii.gz", help="a label file written by napari-medadapt")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_medadapt.core.provenance import read_provenance

    print(json.dumps(read_provenance(args.file), indent=2))
    return 0
