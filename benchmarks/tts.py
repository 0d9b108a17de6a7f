"""Thin wrapper: ``python benchmarks/tts.py ARGS`` is ``medadapt bench tts ARGS``."""

import argparse
import sys

from napari_medadapt.bench import tts

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=tts.HELP)
    tts.add_arguments(parser)
    sys.exit(tts.run(parser.parse_args()))
