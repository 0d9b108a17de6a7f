"""Shared plumbing for CLI commands that have named targets (``medadapt bench sam``, ``medadapt train glioma2d``).

A target module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

#: Packages a target may need beyond the plugin's own dependencies; installed by the command's extra.
OPTIONAL_PACKAGES = frozenset({"nilearn"})


def needs_extra(run: Callable[[argparse.Namespace], int], what: str, extra: str) -> Callable[[argparse.Namespace], int]:
    """``run``, with a missing optional package reported as the ``pip install`` that brings it."""

    def wrapped(args: argparse.Namespace) -> int:
        from napari_medadapt.cli import CLIError

        try:
            return run(args)
        except ModuleNotFoundError as err:
            if err.name not in OPTIONAL_PACKAGES:
                raise
            raise CLIError(
                f"{what} needs {err.name}, which is not installed: pip install 'napari-medadapt[{extra}]'"
            ) from err

    return wrapped


def register_targets(
    subparsers: argparse._SubParsersAction,
    command: str,
    help_text: str,
    targets: dict[str, str],
    extra: str,
) -> None:
    """Add ``command`` with one sub-parser per target module (imported lazily for its arguments only);
    ``extra`` is the install extra that brings what the targets need."""
    parser = subparsers.add_parser(command, help=help_text, description=help_text)
    target_parsers = parser.add_subparsers(dest="target", metavar="TARGET")
    target_parsers.required = True
    for target, module_name in targets.items():
        module = importlib.import_module(module_name)
        target_parser = target_parsers.add_parser(target, help=module.HELP, description=module.HELP)
        module.add_arguments(target_parser)
        target_parser.set_defaults(func=needs_extra(module.run, f"medadapt {command} {target}", extra))
