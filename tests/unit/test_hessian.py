"""The top Hessian eigenvalue (hessian.py) against the exact Hessian of networks small enough to
form it, and the measurement leaving the network as it found it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pipeline_scripts.earlyphase import hessian

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)


class TinyConvBN(nn.Module):
    """A conv + BatchNorm + linear network of ~200 parameters: its Hessian can be formed."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def _identity(x):
    return x


def exact_hessian(model, x, y, batch_size):
    """The Hessian of the mean over mini-batches of the training-mode loss, formed explicitly."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat):
        params = {n: t.reshape(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        losses = []
        for i in range(0, len(x), batch_size):
            out = functional_call(
                model,
                ({**params, **{k: v.clone() for k, v in buffers.items()}},),
                (x[i : i + batch_size],),
            )
            losses.append(F.cross_entropy(out, y[i : i + batch_size]))
        return torch.stack(losses).mean()

    model.train()
    return torch.autograd.functional.hessian(loss_of, flat0)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = TinyConvBN().double()
    x = torch.randn(24, 3, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    return model, x, y


def test_lanczos_matches_exact_top_eigenvalue_of_a_matrix():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 40, generator=g, dtype=torch.float64)
    m = a @ a.T / 40 - 0.5 * torch.eye(40, dtype=torch.float64)
    exact = torch.linalg.eigvalsh(m)
    top, ritz, residual, used = hessian.lanczos(
        lambda v: m @ v, 40, 40, torch.Generator().manual_seed(2), dtype=torch.float64
    )
    assert top == pytest.approx(float(exact[-1]), rel=1e-10)
    np.testing.assert_allclose(ritz[:5], exact.flip(0)[:5].numpy(), rtol=1e-8)
    assert residual < 1e-6
    assert used <= 40


def test_top_eigenvalue_matches_the_exact_hessian_with_batchnorm(tiny):
    model, x, y = tiny
    h = exact_hessian(model, x, y, batch_size=8)
    exact = torch.linalg.eigvalsh(h)
    assert float(exact[-1]) > 0
    r = hessian.top_eigenvalue(model, x, y, _identity, batch_size=8, steps=60, seed=1)
    assert r["top"] == pytest.approx(float(exact[-1]), rel=1e-8)
    # a small budget already lands close: the recorded residual bounds its error
    r20 = hessian.top_eigenvalue(model, x, y, _identity, batch_size=8, steps=20, seed=1)
    assert abs(r20["top"] - float(exact[-1])) <= r20["residual"] + 1e-9
    assert r20["hvps"] == 20


def test_measurement_leaves_weights_buffers_and_grads_untouched(tiny):
    model, x, y = tiny
    model.train()
    model(x[:8])  # non-trivial running statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    hessian.top_eigenvalue(model, x, y, _identity, batch_size=8, steps=5, seed=3)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_same_seed_same_estimate_and_key_changes_the_start(tiny):
    model, x, y = tiny
    a = hessian.top_eigenvalue(model, x, y, _identity, batch_size=8, steps=4, seed=1, key="10")
    b = hessian.top_eigenvalue(model, x, y, _identity, batch_size=8, steps=4, seed=1, key="10")
    c = hessian.top_eigenvalue(model, x, y, _identity, batch_size=8, steps=4, seed=1, key="20")
    assert a["top"] == b["top"]
    assert a["top"] != c["top"]


def test_threshold_is_the_heavy_ball_bound():
    assert hessian.stability_threshold(0.1, 0.9) == pytest.approx(38.0)
    assert hessian.stability_threshold(0.1, 0.0) == pytest.approx(20.0)
