"""Where the test volumes are: the real cases beside the repository (optional) and the packaged sample.

The sample case shipped in the package (``napari_medadapt/sample_data``) is the real glioma TCGA-FG-6692
(byte-identical to ``../shared/data/real/glioma_tcga_fg6692``), so tests that need that case use it and run
from any checkout or sdist. Tests that need another case (du7294, the CT) are marked ``needs_real_data`` and
skip, saying why, when ``../shared/data/real`` is not beside the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import napari_medadapt

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
#: The held-out glioma case (t1, t1c, t2, flair, seg_fusion), packaged as napari sample data.
SAMPLE_CASE = Path(napari_medadapt.__file__).resolve().parent / "sample_data"
MISSING_REASON = f"the real volumes are not beside the repository ({REAL_DATA} is absent)"
needs_real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason=MISSING_REASON)
