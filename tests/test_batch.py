"""``medadapt batch`` and ``core.batch``: cohorts, resumable runs, failure isolation, sharding, concurrency, and a
real Dask LocalCluster (a worker killed mid-run included)."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_explain import tiny_card

from napari_medadapt._reader import read_case_layers as reader_layers
from napari_medadapt.cli import main
from napari_medadapt.core.batch import BatchSettings, CohortError, read_cohort, run_batch
from napari_medadapt.core.batch.manifest import read
from napari_medadapt.core.files import OutputError
from napari_medadapt.core.labelmaps import load_labels
from napari_medadapt.core.provenance import read_provenance
from napari_medadapt.core.volume import read_geometry

MODALITIES = ("t1", "t1c", "t2", "flair")


def _write_case(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    shape = (40, 36, 12)
    for modality in MODALITIES:
        nib.save(nib.Nifti1Image(rng.random(shape, dtype=np.float32) * 100, np.diag([1.0, 1.0, 2.0, 1.0])), folder / f"{modality}.nii.gz")
    labels = np.zeros(shape, np.uint8)
    labels[10:20, 10:20, 4:8] = 2
    nib.save(nib.Nifti1Image(labels, np.diag([1.0, 1.0, 2.0, 1.0])), folder / "seg.nii.gz")


@pytest.fixture
def cohort(tmp_path, save_tiny_model):
    for index in range(4):
        _write_case(tmp_path / "cases" / f"case{index}", index)
    card = save_tiny_model(tmp_path, tiny_card())
    return tmp_path / "cases", str(card)


def _labels_valid(out: Path, case_id: str, cases: Path) -> None:
    path = out / "labels" / f"{case_id}.nii.gz"
    labels = load_labels(path, read_geometry(cases / case_id / "flair.nii.gz"))
    assert labels.dtype == np.uint8 or labels.dtype.kind in "iu"
    assert read_provenance(path)["settings"]["case_id"] == case_id


def test_cohort_from_csv_and_folder_with_problems_named(tmp_path, cohort):
    cases, _model = cohort
    assert [c.case_id for c in read_cohort(cases)] == ["case0", "case1", "case2", "case3"]
    assert read_cohort(cases)[0].reference.endswith("seg.nii.gz")
    sheet = tmp_path / "cohort.csv"
    sheet.write_text("case_id,flair,t1c,reference\na,cases/case0/flair.nii.gz,cases/case0/t1c.nii.gz,cases/case0/seg.nii.gz\n"
                     "a,cases/case1/flair.nii.gz,cases/case1/missing.nii.gz,\nb,cases/case2/flair.nii.gz,,\n")
    with pytest.raises(CohortError) as err:
        read_cohort(sheet)
    message = str(err.value)
    assert "'a' appears twice" in message and "missing.nii.gz does not exist" in message
    assert "case 'b' lacks t1c" in message
    with pytest.raises(CohortError, match="does not exist"):
        read_cohort(tmp_path / "nowhere.csv")


def test_run_resume_change_and_failure_isolation(tmp_path, cohort):
    cases, model = cohort
    out = tmp_path / "out"
    settings = BatchSettings("segment", model=model)
    summary = run_batch(read_cohort(cases), settings, out)
    assert sorted(summary.done) == ["case0", "case1", "case2", "case3"] and not summary.failed
    for case_id in summary.done:
        _labels_valid(out, case_id, cases)
    records = read(out)
    assert len(records) == 4 and all(r["status"] == "done" and r["key"]["inputs"]["flair"] for r in records)
    assert (out / "metrics.csv").read_text().startswith("case_id,dice_")
    assert max(r["model_loads"] for r in records) == 1  # loaded once for the whole run, not per case

    again = run_batch(read_cohort(cases), settings, out)
    assert again.done == [] and sorted(again.skipped) == summary.done and len(read(out)) == 4

    image = nib.load(cases / "case1" / "t2.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) + 1, image.affine), cases / "case1" / "t2.nii.gz")
    changed = run_batch(read_cohort(cases), settings, out)
    assert changed.done == ["case1"] and sorted(changed.skipped) == ["case0", "case2", "case3"]

    other = run_batch(read_cohort(cases), BatchSettings("segment", model=model, largest_component=False), out)
    assert sorted(other.done) == ["case0", "case1", "case2", "case3"]  # a setting of every case changed

    (cases / "case3" / "t1.nii.gz").write_bytes(b"not a nifti file")
    broken = run_batch(read_cohort(cases), settings, out)
    assert list(broken.failed) == ["case3"] and "t1.nii.gz" in broken.failed["case3"]
    assert "case0" in broken.done + broken.skipped
    summary_file = json.loads((out / "summary.json").read_text())
    assert summary_file["failed"] == {"case3": broken.failed["case3"]}


def test_cli_exit_status_and_refusals(tmp_path, cohort, capsys):
    cases, model = cohort
    out = tmp_path / "out"
    (cases / "case0" / "flair.nii.gz").write_bytes(b"broken")
    assert main(["batch", "segment", "--cases", str(cases), "--out", str(out), "--model", model]) == 101  # 1 failed
    captured = capsys.readouterr()
    assert "failed: case0" in captured.err and "3 done, 0 already done, 1 failed" in captured.out
    args = ["batch", "segment", "--cases", str(cases), "--out", str(tmp_path / "o2"), "--model", model]
    assert main([*args, "--scheduler", "tcp://127.0.0.1:9", "--timeout", "2"]) == 2
    assert "did not answer within 2 s" in capsys.readouterr().err
    assert main([*args, "--num-parts", "2", "--part-id", "2"]) == 2
    assert not (tmp_path / "o2").exists()  # refused before anything was written
    assert main(["batch", "fewshot-apply", "--cases", str(cases), "--out", str(tmp_path / "o3")]) == 2
    assert "--adapter" in capsys.readouterr().err
    assert main([*args[:5], str(cases / "case1" / "flair.nii.gz" / "out"), *args[6:]]) == 2  # --out inside a file
    assert "--out" in capsys.readouterr().err


def test_unwritable_output_folder_fails_before_any_work(tmp_path, cohort):
    cases, model = cohort
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write into read-only folders")
        with pytest.raises(OutputError):
            run_batch(read_cohort(cases), BatchSettings("segment", model=model), locked / "out")
    finally:
        locked.chmod(stat.S_IRWXU)


def test_parts_and_concurrent_runs_share_one_folder(tmp_path, cohort):
    cases, model = cohort
    out = tmp_path / "out"
    settings = BatchSettings("segment", model=model)
    runs = [threading.Thread(target=run_batch, args=(read_cohort(cases), settings, out), kwargs={"num_parts": 2, "part_id": i}) for i in (0, 1)]
    runs.append(threading.Thread(target=run_batch, args=(read_cohort(cases), settings, out)))
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    records = read(out)  # every line parses: no interleaved writes
    assert {r["case_id"] for r in records} == {"case0", "case1", "case2", "case3"}
    assert all(r["status"] == "done" for r in records)
    for case_id in ("case0", "case1", "case2", "case3"):
        _labels_valid(out, case_id, cases)
    assert not [p for p in (out / "labels").iterdir() if p.name.startswith(".")]  # no temporary file left


def test_local_cluster_survives_a_killed_worker(tmp_path, cohort):
    distributed = pytest.importorskip("distributed")
    cases, model = cohort
    for index in range(4, 8):
        _write_case(cases / f"case{index}", index)
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        killed = []

        def kill_one(done: int, total: int, message: str) -> None:
            if done == 1 and not killed:  # after the first case: kill a worker while others are in flight
                killed.append(pids[0])
                os.kill(pids[0], signal.SIGKILL)

        summary = run_batch(read_cohort(cases), BatchSettings("segment", model=model), out,
                            scheduler=cluster.scheduler_address, on_progress=kill_one)
    assert killed and not summary.failed, summary.failed
    assert sorted(summary.done) == [f"case{i}" for i in range(8)]
    records = read(out)
    assert {r["case_id"] for r in records if r["status"] == "done"} == {f"case{i}" for i in range(8)}
    for case_id in summary.done:
        _labels_valid(out, case_id, cases)
    assert max(r["model_loads"] for r in records) == 1  # each worker process loaded the model once
    again = run_batch(read_cohort(cases), BatchSettings("segment", model=model), out, scheduler="local", workers=2)
    assert again.done == [] and len(again.skipped) == 8


def test_tta_and_embed_methods(tmp_path, cohort, monkeypatch):
    cases, model = cohort
    cohort_cases = read_cohort(cases)[:2]
    tta = run_batch(cohort_cases, BatchSettings("tta", model=model, tta="bn_affine"), tmp_path / "tta")
    assert sorted(tta.done) == ["case0", "case1"], tta.failed
    record = read(tmp_path / "tta")[0]
    assert record["method"] == "tta" and read_provenance(tmp_path / "tta" / record["output"])["method"] == "tta"
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(tmp_path / "cache"))
    embed = run_batch(cohort_cases[:1], BatchSettings("embed", model="sam-small"), tmp_path / "embed")
    assert embed.done == ["case0"], embed.failed
    record = read(tmp_path / "embed")[0]
    assert record["output"] is None and set(record["embedded"]) == set(MODALITIES)
    assert all((e["computed"], e["cached"]) == (12, 0) for e in record["embedded"].values())
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 4 * 12  # every modality, on disk
    from napari_medadapt.core.jobs import JobContext
    from napari_medadapt.core.sam.workspace import ModelChoice, SamWorkspace

    viewer_layers = reader_layers(cases / "case0")  # what the reader opens: the dock starts from these limits
    flair = next(layer for layer in viewer_layers if layer[1]["name"] == "flair")
    dock = SamWorkspace()  # a new session, as the Segment Anything dock has: it finds them and stores nothing
    output = dock.precompute(ModelChoice("sam-small"), flair[0], tuple(flair[1]["contrast_limits"]), 0, ctx=JobContext())
    assert (output.value.computed, output.value.cached) == (0, 12)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 4 * 12


def test_manifest_survives_a_cut_line_and_output_names_never_collide(tmp_path, cohort):
    from napari_medadapt.core.batch.cohort import output_name
    from napari_medadapt.core.batch.manifest import MANIFEST, append

    out = tmp_path / "m"
    out.mkdir()
    append(out, {"case_id": "a", "status": "done"})
    with open(out / MANIFEST, "a", encoding="utf-8") as handle:
        handle.write('{"case_id": "b", "sta')  # a run killed mid-write
    append(out, {"case_id": "c", "status": "done"})
    assert [r["case_id"] for r in read(out)] == ["a", "c"]
    assert output_name("case 1") != output_name("case_1") and output_name("..").endswith(".nii.gz")
    assert not output_name("..").startswith(".") and output_name("CaseA") == "CaseA.nii.gz"
    cases, _model = cohort
    sheet = tmp_path / "names.csv"
    sheet.write_text(f"case_id,flair\nAB,{cases}/case0/flair.nii.gz\nab,{cases}/case1/flair.nii.gz\n")
    with pytest.raises(CohortError, match="would share the output file"):
        read_cohort(sheet)
