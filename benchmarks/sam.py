"""Thin wrapper: ``python benchmarks/sam.py ARGS`` is ``medadapt bench sam ARGS``."""

import argparse
import sys

from napari_medadapt.bench import sam

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=sam.HELP)
    sam.add_arguments(parser)
    sys.exit(sam.run(parser.parse_args()))
