"""Plumbing shared by the benchmark targets: data and report options, writing, standalone runs.

Defaults come from :mod:`napari_medadapt.core.paths` (a checkout's ``../shared/data/real`` and
``docs/benchmarks``; for an installed package ``MEDADAPT_DATA_DIR`` and ``./medadapt-reports``), never the
installed package itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import ModuleType
from typing import Any


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--data``: the folder of the real cases (default: ``MEDADAPT_DATA_DIR``, or ``../shared/data/real``
    beside a source checkout)."""
    parser.add_argument("--data", type=Path, default=None, metavar="FOLDER", help="folder of the real cases")


def add_report_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Add ``--json`` and ``--md``: where the reports go (default: ``NAME.json``/``NAME.md`` in
    :func:`~napari_medadapt.core.paths.reports_dir`)."""
    parser.add_argument("--json", type=Path, default=None, help=f"JSON report (default: REPORTS/{name}.json)")
    parser.add_argument("--md", type=Path, default=None, help=f"Markdown report (default: REPORTS/{name}.md)")
    parser.set_defaults(report_name=name)


def resolve_paths(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the default data folder and report paths of ``args`` (call at the start of ``run``)."""
    from napari_medadapt.core.paths import data_dir, reports_dir

    if hasattr(args, "data"):
        args.data = data_dir(args.data)
    name = getattr(args, "report_name", None)
    if name is not None:
        args.json = args.json or reports_dir() / f"{name}.json"
        args.md = args.md or reports_dir() / f"{name}.md"
    return args


def write_json(report: dict[str, Any], path: Path, indent: int = 2) -> Path:
    """Write ``report`` as JSON to ``path`` (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=indent) + "\n", encoding="utf-8")
    return path


#: A Markdown report's section from this heading to the end is written by hand: a re-run keeps it.
NOTES_HEADING = "## Notes"


def write_markdown_keeping_notes(path: Path, text: str) -> Path:
    """Write a generated Markdown report to ``path``, keeping the hand-written section that starts at
    :data:`NOTES_HEADING` in the file already there (if any)."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.is_file() else []
    start = next((i for i, line in enumerate(lines) if line.startswith(NOTES_HEADING)), None)
    notes = "\n".join(lines[start:]) + "\n" if start is not None else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n\n" + notes if notes else text)
    return path


def standalone_main(target: ModuleType, argv: list[str] | None = None) -> int:
    """Run a ``medadapt bench`` target module (``HELP``, ``add_arguments``, ``run``) as a script."""
    parser = argparse.ArgumentParser(description=target.HELP)
    target.add_arguments(parser)
    return target.run(parser.parse_args(argv))
