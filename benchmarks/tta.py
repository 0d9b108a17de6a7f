"""Test-time adaptation benchmark (thin wrapper of ``medadapt bench tta``).

Usage (from the repository root)::

    .venv/bin/python benchmarks/tta.py [--threads 1] [--methods bn_affine,tent,normalizer] [--shifts N]

Writes ``docs/benchmarks/tta.json`` and ``docs/benchmarks/tta.md``; see :mod:`napari_medadapt.bench.tta`
for what is measured.
"""

from __future__ import annotations

import sys

from napari_medadapt.bench import tta
from napari_medadapt.bench._common import standalone_main


def main(argv: list[str] | None = None) -> int:
    """Parse the benchmark's options and run it."""
    return standalone_main(tta, argv)


if __name__ == "__main__":
    sys.exit(main())
