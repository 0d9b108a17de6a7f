"""Thin wrapper: ``python benchmarks/preprocess.py ARGS`` is ``medadapt bench preprocess ARGS``."""

import sys

from napari_medadapt.bench import preprocess
from napari_medadapt.bench._common import standalone_main

if __name__ == "__main__":
    sys.exit(standalone_main(preprocess))
