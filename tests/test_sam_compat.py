"""The Segment Anything compat loader works without torchvision and without importing torch early."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_medadapt.core.sam._compat import ResizeLongestSide

BLOCK_TORCHVISION = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            raise ImportError("torchvision is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
"""


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_modeling_loads_with_torchvision_absent() -> None:
    out = _run(
        BLOCK_TORCHVISION
        + """
from napari_medadapt.core.sam._compat import sam_modeling, build_prompt_encoder
m = sam_modeling()
print(sorted(n for n in ("Sam", "ImageEncoderViT", "PromptEncoder", "MaskDecoder", "TwoWayTransformer") if hasattr(m, n)))
print(build_prompt_encoder(256, 64, 1024).embed_dim)
print("torchvision" in sys.modules, "segment_anything.predictor" in sys.modules)
"""
    )
    lines = out.strip().splitlines()
    assert lines[0] == "['ImageEncoderViT', 'MaskDecoder', 'PromptEncoder', 'Sam', 'TwoWayTransformer']"
    assert lines[1] == "256"
    assert lines[2] == "False False"


def test_importing_the_package_does_not_import_torch() -> None:
    out = _run("import sys, napari_medadapt.core.sam\nprint('torch' in sys.modules, 'segment_anything' in sys.modules)")
    assert out.strip() == "False False"


def test_resize_longest_side_matches_sam_rounding() -> None:
    t = ResizeLongestSide(256)
    assert t.preprocess_shape(240, 240) == (256, 256)
    assert t.preprocess_shape(101, 122) == (212, 256)
    img = np.zeros((101, 122, 3), np.uint8)
    img[50, 60] = 255
    assert t.apply_image(img).shape == (212, 256, 3)
    xy = t.apply_coords(np.array([[122.0, 101.0]]), (101, 122))
    np.testing.assert_allclose(xy, [[256.0, 212.0]])
    boxes = t.apply_boxes(np.array([[0, 0, 61, 50.5]]), (101, 122))
    np.testing.assert_allclose(boxes, [[0, 0, 128, 106]])


PROBE = """
def probe():
    try:
        import segment_anything
        from segment_anything import SamPredictor
        return "imported " + SamPredictor.__module__
    except BaseException as err:
        return f"failed {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
"""


@pytest.mark.slow
def test_loading_our_model_leaves_segment_anything_as_other_plugins_find_it() -> None:
    """micro-sam and others do ``from segment_anything import SamPredictor``: after our dock loaded a SAM
    model, that import must behave exactly as in a process where we never ran (here it fails the same way,
    because torchvision does not import beside this torch; elsewhere it succeeds the same way)."""
    untouched = _run(PROBE + "print(probe())").strip()
    after_ours = _run(
        PROBE
        + """
import sys
from napari_medadapt.core.sam import load_sam
model = load_sam("sam-small", device="cpu")
print(sorted(name for name in sys.modules if name == "segment_anything" or name.startswith("segment_anything.")))
print(probe())
"""
    ).strip().splitlines()
    assert after_ours[0] == "[]"  # we created no segment_anything module
    assert after_ours[1] == untouched
