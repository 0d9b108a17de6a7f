"""The wheel, installed the way a user installs it: it works without the checkout and without ``../shared``,
and it writes nothing inside the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_installed_wheel_runs_without_the_checkout_and_writes_nothing_inside_it(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = dist.glob("napari_medadapt-*.whl")
    # a fresh environment; its dependencies come from this one (a path entry: no download, no editable finder)
    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, capture_output=True,
    )
    package = site / "napari_medadapt"
    assert (package / "weights" / "glioma2d.safetensors").is_file() and (package / "sample_data").is_dir()
    assert not (package / "tests").exists()
    before = _files(package)

    work = tmp_path / "work"  # the user's folder; no ../shared beside it or beside the package
    work.mkdir()
    environment = {
        **{k: v for k, v in os.environ.items() if k not in ("MEDADAPT_DATA_DIR", "PYTHONPATH")},
        "MEDADAPT_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONDONTWRITEBYTECODE": "1",  # Python's own bytecode cache is not the plugin writing
    }

    def medadapt(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(env / "bin" / "medadapt"), *args], cwd=work, env=environment, capture_output=True, text=True,
            timeout=600,
        )

    info = medadapt("info")
    assert info.returncode == 0, info.stderr
    assert str(package) in info.stdout or "glioma2d" in info.stdout
    flair = package / "sample_data" / "flair.nii.gz"
    segment = medadapt("segment", "--image", f"flair={flair}", "--out", "labels.nii.gz", "--device", "cpu")
    assert segment.returncode == 0, segment.stderr
    assert (work / "labels.nii.gz").is_file() and "edema" in segment.stdout
    help_text = medadapt("bench", "engine", "--help")
    assert help_text.returncode == 0 and "--data" in help_text.stdout
    no_data = medadapt("bench", "engine")
    assert no_data.returncode == 2 and "MEDADAPT_DATA_DIR" in no_data.stderr and "Traceback" not in no_data.stderr
    assert _files(package) == before  # nothing written, changed or removed inside the installed package
