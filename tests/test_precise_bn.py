"""Precise BatchNorm re-estimation used after training the bundled models."""

from __future__ import annotations

import numpy as np
import torch

from napari_medadapt.core.models import ModelCard, build_model, default_architecture
from napari_medadapt.training.precise_bn import recalibrate_batchnorm, whole_slice_batches


def _model():
    torch.manual_seed(0)
    card = ModelCard(
        name="tiny", architecture=default_architecture(2, 2, 2, filters=(4, 8, 16)), modalities=["a", "b"], labels=[0, 1]
    )
    return build_model(card).eval()


def test_running_statistics_become_the_average_over_the_batches():
    model = _model()
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    inputs = []
    hook = first_bn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach().clone()))
    batches = [torch.randn(3, 2, 16, 16) * 2 + 1 for _ in range(4)]
    assert recalibrate_batchnorm(model, batches) == 4
    hook.remove()
    assert not model.training and first_bn.momentum == 0.1
    expected_mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
    expected_var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in inputs]).mean(0)
    torch.testing.assert_close(first_bn.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first_bn.running_var, expected_var, rtol=1e-4, atol=1e-5)


def test_no_batches_keeps_the_statistics():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_batchnorm(model, []) == 0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_whole_slice_batches_crop_to_the_brain_box_with_margin():
    images = np.zeros((10, 2, 100, 120), np.float16)
    images[:, :, 40:60, 50:70] = 1.0
    batches = list(whole_slice_batches(images, 4, torch.Generator().manual_seed(0), max_batches=2))
    assert [b.shape for b in batches] == [(4, 2, 52, 52)] * 2  # 20 + 2 x 16 margin
    assert all(b.dtype == torch.float32 for b in batches)
