"""Shared plumbing for CLI commands that have named targets (``medadapt bench sam``, ``medadapt train glioma2d``).

A target module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib


def register_targets(
    subparsers: argparse._SubParsersAction,
    command: str,
    help_text: str,
    targets: dict[str, str],
) -> None:
    """Add ``command`` with one sub-parser per target module (imported lazily for its arguments only)."""
    parser = subparsers.add_parser(command, help=help_text, description=help_text)
    target_parsers = parser.add_subparsers(dest="target", metavar="TARGET")
    target_parsers.required = True
    for target, module_name in targets.items():
        module = importlib.import_module(module_name)
        target_parser = target_parsers.add_parser(target, help=module.HELP, description=module.HELP)
        module.add_arguments(target_parser)
        target_parser.set_defaults(func=module.run)
