"""The ``medadapt`` command line: one sub-command per module in this package.

Each sub-command module defines ``register(subparsers)`` which adds its parser and sets
``func=run`` (a callable taking the parsed namespace and returning an exit code). Modules are
imported only when the CLI starts, and heavy libraries (torch, napari) only inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence

# Sub-command modules, in the order ``medadapt --help`` lists them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "napari_medadapt.cli.demo",
    "napari_medadapt.cli.info",
    "napari_medadapt.cli.segment",
    "napari_medadapt.cli.preprocess",
    "napari_medadapt.cli.convert",
    "napari_medadapt.cli.evaluate",
    "napari_medadapt.cli.train",
    "napari_medadapt.cli.segfm",
    "napari_medadapt.cli.bench",
    "napari_medadapt.cli.tts",
    "napari_medadapt.cli.fewshot",
    "napari_medadapt.cli.explain",
    "napari_medadapt.cli.batch",
    "napari_medadapt.cli.provenance",
    "napari_medadapt.cli.shift_score",
)


#: Sub-commands that run napari's event loop.
GUI_COMMANDS = frozenset({"demo"})


class CLIError(Exception):
    """A user-facing error: printed as one clear message, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    """Build the ``medadapt`` argument parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="medadapt",
        description="Segment medical volumes and adapt AI models to your own scans.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


class _Terminated(BaseException):
    """SIGTERM arrived: unwind (temporary files are removed on the way), then exit 143."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medadapt`` console script.

    User errors print one message and exit 2; Ctrl+C exits 130 and SIGTERM 143, both after unwinding, so an
    interrupted write leaves neither a partial output nor its temporary file.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    from napari_medadapt.core.errors import MedAdaptError

    # the GUI (demo) keeps Qt's own handling of SIGTERM
    unwind = threading.current_thread() is threading.main_thread() and args.command not in GUI_COMMANDS
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if unwind else None
    try:
        return int(args.func(args) or 0)
    except (CLIError, MedAdaptError) as err:
        print(f"medadapt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medadapt {args.command}: cancelled", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"medadapt {args.command}: terminated", file=sys.stderr)
        return 143
    finally:
        if unwind:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
