"""Engine benchmark of the bundled glioma2d model (thin wrapper of ``medadapt bench engine``).

Usage (from the repository root)::

    .venv/bin/python benchmarks/engine.py [--threads 1] [--json ...] [--md ...]

Writes ``docs/benchmarks/engine.json`` and ``docs/benchmarks/engine.md``; see
:mod:`napari_medadapt.bench.engine` for what is measured.
"""

from __future__ import annotations

import sys

from napari_medadapt.bench import engine
from napari_medadapt.bench._common import standalone_main


def main(argv: list[str] | None = None) -> int:
    """Parse the benchmark's options and run it."""
    return standalone_main(engine, argv)


if __name__ == "__main__":
    sys.exit(main())
