"""Thin wrapper: ``python benchmarks/tts.py ARGS`` is ``medadapt bench tts ARGS``."""

import sys

from napari_medadapt.bench import tts
from napari_medadapt.bench._common import standalone_main

if __name__ == "__main__":
    sys.exit(standalone_main(tts))
