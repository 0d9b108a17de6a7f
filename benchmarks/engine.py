"""Engine benchmark of the bundled glioma2d model (thin wrapper of ``medadapt bench engine``).

Usage (from the repository root)::

    .venv/bin/python benchmarks/engine.py [--threads 1] [--json ...] [--md ...]

Writes ``docs/benchmarks/engine.json`` and ``docs/benchmarks/engine.md``; see
:mod:`napari_medadapt.bench.engine` for what is measured.
"""

from __future__ import annotations

import argparse
import sys

from napari_medadapt.bench import engine


def main(argv: list[str] | None = None) -> int:
    """Parse the benchmark's options and run it."""
    parser = argparse.ArgumentParser(description=engine.HELP)
    engine.add_arguments(parser)
    return engine.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
