"""Prototype explanations benchmark (thin wrapper of ``medadapt bench explain``).

Usage (from the repository root)::

    .venv/bin/python benchmarks/explain.py [--planes 6] [--skip-trap]

Writes ``docs/benchmarks/explain.json`` and ``docs/benchmarks/explain.md``; see :mod:`napari_medadapt.bench.explain`
for what is measured.
"""

from __future__ import annotations

import sys

from napari_medadapt.bench import explain
from napari_medadapt.bench._common import standalone_main


def main(argv: list[str] | None = None) -> int:
    """Parse the benchmark's options and run it."""
    return standalone_main(explain, argv)


if __name__ == "__main__":
    sys.exit(main())
