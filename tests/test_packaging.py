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
    requires = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print('\\n'.join(m.requires('napari-medadapt')))"],
        check=True, capture_output=True, text=True,
    ).stdout.splitlines()
    # a plain install brings nilearn: the phantom anatomy behind the bundled prototypes' source slices
    assert any(r.startswith("nilearn") and "extra" not in r for r in requires), requires


# A fresh interpreter that can import only what a plain ``pip install napari-medadapt`` brings: the standard
# library, the plugin and the distributions its install_requires (setup.cfg) pull in, transitively; or, with
# ``BLOCK``, everything but the named packages. Then it opens the source slice of a prototype projected onto a
# synthetic phantom, as "Open source slice" in the dock does.
CLEAN_SOURCE_SLICE = r'''
import configparser, importlib.metadata as md, json, sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

setup_cfg, block = sys.argv[1], {b for b in sys.argv[2].split(",") if b}
allowed = None
if not block:
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    todo = [Requirement(line) for line in parser["options"]["install_requires"].splitlines()
            if line.strip() and not line.strip().startswith("#")]
    allowed = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in allowed or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        allowed.add(name)
        try:
            todo += [Requirement(r) for r in md.requires(requirement.name) or []]
        except md.PackageNotFoundError:  # not installed here: nothing of it can be imported anyway
            pass
owners = md.packages_distributions()


class Clean:
    """Refuses a top-level module that a plain install would not have."""

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in sys.modules or top in sys.stdlib_module_names or top == "napari_medadapt":
            return None
        if top in block or (allowed is not None and owners.get(top)
                            and not any(canonicalize_name(d) in allowed for d in owners[top])):
            raise ModuleNotFoundError(f"No module named {top!r} (not installed in this clean environment)", name=top)
        return None


sys.meta_path.insert(0, Clean())
import napari_medadapt
from napari_medadapt.core.explain import load_bank
from napari_medadapt.core.explain.workspace import source_image

bank = load_bank(Path(napari_medadapt.__file__).parent / "weights" / "glioma2d.prototypes.json")
pid = next(i for i in range(len(bank)) if "phantom_seed" in bank.entry(i)["source"])
image, message = source_image(bank, pid)
print(json.dumps({"shape": list(image.shape), "message": message, "nilearn": "nilearn" in sys.modules}))
'''


def _clean_source_slice(block: str = "") -> dict:
    import json

    done = subprocess.run(
        [sys.executable, "-c", CLEAN_SOURCE_SLICE, str(ROOT / "setup.cfg"), block], capture_output=True, text=True,
        timeout=300, env={**os.environ, "MEDADAPT_DATA_DIR": "", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_source_slice_of_a_phantom_prototype_needs_only_declared_dependencies():
    """A plain install (only install_requires and what they bring) opens the full synthetic source slice."""
    out = _clean_source_slice()
    assert out["message"] is None and out["shape"] == [240, 240] and out["nilearn"]


def test_source_slice_without_nilearn_shows_the_stored_patch_and_says_why():
    """An install without nilearn (pip --no-deps) gets the stored patch and the package to install, no crash."""
    out = _clean_source_slice("nilearn")
    assert out["shape"] == [48, 48] and not out["nilearn"]
    assert "nilearn" in out["message"] and "pip install nilearn" in out["message"]
