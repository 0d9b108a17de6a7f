"""Few-shot adapter benchmark (thin wrapper of ``medadapt bench fewshot``).

Usage (from the repository root)::

    .venv/bin/python benchmarks/fewshot.py [--counts 1,3,5,10] [--skip-ct]

Writes ``docs/benchmarks/fewshot.json`` and ``docs/benchmarks/fewshot.md``; see :mod:`napari_medadapt.bench.fewshot`
for what is measured.
"""

from __future__ import annotations

import sys

from napari_medadapt.bench import fewshot
from napari_medadapt.bench._common import standalone_main


def main(argv: list[str] | None = None) -> int:
    """Parse the benchmark's options and run it."""
    return standalone_main(fewshot, argv)


if __name__ == "__main__":
    sys.exit(main())
