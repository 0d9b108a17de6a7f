"""Plumbing shared by the benchmark targets: repository paths, report options and writing, standalone runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
REPORT_DIR = REPO_ROOT / "docs" / "benchmarks"
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--data``: the folder of the real cases (default: ``../shared/data/real`` beside the repository)."""
    parser.add_argument("--data", type=Path, default=REAL_DATA)


def add_report_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Add ``--json`` and ``--md``: where the reports go (default: ``docs/benchmarks/NAME.json`` / ``.md``)."""
    parser.add_argument("--json", type=Path, default=REPORT_DIR / f"{name}.json")
    parser.add_argument("--md", type=Path, default=REPORT_DIR / f"{name}.md")


def write_json(report: dict[str, Any], path: Path, indent: int = 2) -> Path:
    """Write ``report`` as JSON to ``path`` (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=indent) + "\n", encoding="utf-8")
    return path


def standalone_main(target: ModuleType, argv: list[str] | None = None) -> int:
    """Run a ``medadapt bench`` target module (``HELP``, ``add_arguments``, ``run``) as a script."""
    parser = argparse.ArgumentParser(description=target.HELP)
    target.add_arguments(parser)
    return target.run(parser.parse_args(argv))
