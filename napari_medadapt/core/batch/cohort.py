"""A cohort: the cases of a batch run, read from a CSV or a folder of case folders, checked before any work.

CSV: a header row, then one row per case. Columns: ``case_id`` (or ``case``/``id``), one column per modality
(named as the modality, e.g. ``flair``, ``t1c``; aliases such as ``t1ce`` work) holding the file's path
(relative paths are relative to the CSV's folder), and optionally ``reference`` (or ``label``/``seg``) with a
reference label file. Folder: every sub-folder is a case (the reader's case-folder convention: one file per
modality; a label file, if any, is the reference), named by the sub-folder.

Problems are reported all at once, naming the row or folder and the fix: a missing file, a duplicate case id,
modalities that differ between cases (which ones), an empty cohort.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..dicom import is_dicom_source
from ..errors import VolumeError

ID_COLUMNS = ("case_id", "case", "id")
REFERENCE_COLUMNS = ("reference", "label", "labels", "seg")


@dataclass(frozen=True)
class Case:
    """One case of a cohort: its id, modality files and optional reference label file; ``problem`` says why a
    case folder cannot be read (the case then fails alone with that message)."""

    case_id: str
    images: dict[str, str] = field(hash=False)
    reference: str | None = None
    problem: str | None = None


class CohortError(VolumeError):
    """A cohort that cannot be run as given (every problem listed)."""


def _problems(problems: list[str], source: Path) -> None:
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise CohortError(f"the cohort {source} cannot be run: " + "; ".join(problems[:8]) + more + ".")


def _from_csv(path: Path) -> list[Case]:
    from ..volume import canonical_modality

    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise CohortError(f"the cohort file {path} cannot be read ({err}).") from err
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise CohortError(f"the cohort file {path} has no cases: a header row (case_id, one column per modality) and one row per case.")
    header = [h.strip().lower() for h in rows[0]]
    id_column = next((header.index(c) for c in ID_COLUMNS if c in header), None)
    if id_column is None:
        raise CohortError(f"the cohort file {path} needs a case_id column; its header is {','.join(header)}.")
    reference_column = next((header.index(c) for c in REFERENCE_COLUMNS if c in header), None)
    modality_columns = {i: canonical_modality(h) or h for i, h in enumerate(header) if i not in (id_column, reference_column) and h}
    if not modality_columns:
        raise CohortError(f"the cohort file {path} has no modality column (e.g. flair, t1c, ct).")
    cases = []
    for line, row in enumerate(rows[1:], start=2):
        row = row + [""] * (len(header) - len(row))
        def resolve(value: str) -> str:
            file = Path(value.strip()).expanduser()
            return str((file if file.is_absolute() else path.parent / file).resolve())
        images = {m: resolve(row[i]) for i, m in modality_columns.items() if row[i].strip()}
        reference = resolve(row[reference_column]) if reference_column is not None and row[reference_column].strip() else None
        cases.append(Case(row[id_column].strip() or f"line {line}", images, reference))
    return cases


def _from_folder(folder: Path) -> list[Case]:
    from ..cases import case_files

    cases = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            modalities, labels = case_files(sub)
        except VolumeError as err:  # e.g. a corrupt file: this case fails alone when the run reaches it
            cases.append(Case(sub.name, {}, None, problem=str(err)))
            continue
        reference = str(next(iter(labels.values())).resolve()) if labels else None
        cases.append(Case(sub.name, {m: str(p.resolve()) for m, p in modalities.items()}, reference))
    if not cases:
        raise CohortError(f"{folder} has no case folders; give a folder holding one folder per case, or a CSV.")
    return cases


def read_cohort(source: str | Path, modalities: Sequence[str] | None = None) -> list[Case]:
    """The checked cases of a CSV file or a folder of case folders.

    Parameters
    ----------
    source
        The CSV or the folder.
    modalities
        Modalities every case must have (a model's required inputs); by default the cases must agree with each other.

    Raises
    ------
    CohortError
        Missing files, duplicate case ids, disagreeing modalities, no cases (every problem listed).
    """
    source = Path(source).expanduser()
    if source.is_dir():
        cases = _from_folder(source)
    elif source.is_file():
        cases = _from_csv(source)
    else:
        raise CohortError(f"the cohort {source} does not exist; give a CSV file or a folder of case folders.")
    problems = []
    seen: dict[str, int] = {}
    files: dict[str, str] = {}
    for index, case in enumerate(cases):
        name = output_name(case.case_id).casefold()
        if name in files and files[name] != case.case_id:
            problems.append(f"the case ids {files[name]!r} and {case.case_id!r} would share the output file {output_name(case.case_id)}; rename one")
        files.setdefault(name, case.case_id)
        if case.case_id in seen:
            problems.append(f"the case id {case.case_id!r} appears twice (cases {seen[case.case_id] + 1} and {index + 1}); ids must be unique")
        seen.setdefault(case.case_id, index)
        for name, file in [*case.images.items(), *([("reference", case.reference)] if case.reference else [])]:
            if is_dicom_source(file):
                if name == "reference":
                    problems.append(f"case {case.case_id!r}: the reference {file} is DICOM; give the reference labels as "
                                    f"NIfTI (medadapt convert --labels ... turns SEG into NIfTI)")  # fmt: skip
            elif not Path(file).is_file():
                problems.append(f"case {case.case_id!r}: the {name} file {file} does not exist")
    readable = [case for case in cases if case.problem is None]
    expected = set(modalities) if modalities is not None else set(readable[0].images) if readable else set()
    for case in readable:
        missing, extra = expected - set(case.images), (set(case.images) - expected) if modalities is None else set()
        if missing or extra:
            said = [f"lacks {', '.join(sorted(missing))}"] * bool(missing) + [f"has {', '.join(sorted(extra))} the first case lacks"] * bool(extra)
            problems.append(f"case {case.case_id!r} " + " and ".join(said) + f" (expected {', '.join(sorted(expected))})")
    _problems(problems, source)
    return cases


def output_name(case_id: str) -> str:
    """The label file name of a case: its id with path-unsafe characters replaced (plus a short hash of the id
    when something was replaced or nothing is left, so two ids never share a file)."""
    import hashlib

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id).strip("._")
    if safe != case_id:
        safe = f"{safe}_{hashlib.sha1(case_id.encode('utf-8')).hexdigest()[:8]}".lstrip("_")
    return safe + ".nii.gz"


def shard(cases: Sequence[Case], num_parts: int, part_id: int) -> list[Case]:
    """Part ``part_id`` (0-based) of ``num_parts`` of ``cases`` (every ``num_parts``-th case): job arrays
    split a cohort without any engine, each part writing into the same output folder."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise CohortError(f"--part-id {part_id} must be between 0 and --num-parts - 1 ({num_parts - 1}).")
    return list(cases[part_id::num_parts])
