"""Explanations run on the model's device. Needs a CUDA GPU; skipped with the reason
where there is none (the CPU path is what the rest of the suite runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skbilrp import DeepKernel, Explainer
from skbilrp.models import digits_cnn, load_digits_images

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def test_explainer_runs_on_the_model_device_and_matches_the_cpu():
    model = digits_cnn()
    x = torch.from_numpy(load_digits_images()[0][:6])
    cpu = Explainer(model, pooling=2).relevance(x)
    gpu = Explainer(model.to("cuda"), pooling=2).relevance(x)
    assert gpu.relevance.device.type == "cuda"
    scale = float(cpu.relevance.abs().sum(-1).max())
    tol = 64 * torch.finfo(torch.float32).eps * scale  # float32 sums, reduced in another order
    assert float((gpu.relevance.cpu() - cpu.relevance).abs().max()) <= tol


def test_deep_kernel_on_cuda_explains_like_on_cpu():
    images, _ = load_digits_images()
    a, b = images[:20], images[20:24]
    kern = {d: DeepKernel(digits_cnn(), kernel="cosine", pooling=2, device=d).fit(a) for d in ("cpu", "cuda")}
    e = {d: k.explain_pairs(b) for d, k in kern.items()}
    np.testing.assert_allclose(e["cuda"].similarity, e["cpu"].similarity, rtol=1e-5, atol=1e-6)
    marg_cpu, marg_gpu = e["cpu"].marginals(), e["cuda"].marginals()
    scale = float(np.abs(marg_cpu[0]).max())
    np.testing.assert_allclose(marg_gpu[0], marg_cpu[0], atol=1e-4 * scale)
