"""The layout rule (layout.py): channels_last everywhere, NCHW on CPUs for the 1x1 strided
convolutions with few input channels that oneDNN's backward-weights kernel gets wrong."""

import pytest
import torch
import torch.nn.functional as F

from pipeline_scripts.earlyphase import layout, models, multirun, rng

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)

PAPER = models.PAPER_NETWORKS


def _model(name, seed=1):
    m = models.build(name)
    models.initialise(m, rng.generator(seed, "init"))
    return m


@pytest.mark.parametrize("name", PAPER)
def test_the_papers_networks_are_untouched(name):
    """No layer of the paper's networks is routed, so they compute exactly as channels_last
    always did (their strides equal a plain .to(channels_last))."""
    with torch.device("meta"):
        m = models.build(name)
    assert layout.route(m, "cpu") == []
    plain = models.build(name).to(memory_format=torch.channels_last)
    ours = layout.apply(models.build(name), "cpu")
    assert [p.stride() for p in ours.parameters()] == [p.stride() for p in plain.parameters()]


def test_narrow_strided_shortcuts_run_in_nchw_on_cpus_only():
    m = _model("resnet8_w4")
    assert layout.route(m, "cuda") == []  # on a GPU nothing changes (no CUDA needed to ask)
    assert layout.route(m, "cpu") == ["layer2.0.downsample.0", "layer3.0.downsample.0"]
    assert layout.route(m, "cpu") == [
        "layer2.0.downsample.0",
        "layer3.0.downsample.0",
    ]  # idempotent
    conv = m.layer2[0].downsample[0]
    assert conv.weight.stride() == (4, 1, 1, 1)  # contiguous, not the 1x1 kernel's (4, 1, 4, 4)
    seen = {}
    conv.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], out=out))
    m(torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert seen["x"].is_contiguous()  # NCHW into the convolution
    assert seen["out"].is_contiguous(memory_format=torch.channels_last)  # channels_last after it
    assert not layout.nchw_on_cpu(torch.nn.Conv2d(16, 32, 1, stride=2))  # 16 = the block: fine
    assert not layout.nchw_on_cpu(torch.nn.Conv2d(4, 8, 1, stride=1))  # no strided copy
    assert not layout.nchw_on_cpu(torch.nn.Conv2d(4, 8, 3, stride=2))  # not the 1x1 kernel
    assert layout.nchw_on_cpu(torch.nn.Conv2d(8, 16, 1, stride=2))  # AVX-512's block is 16


def test_routed_network_computes_the_same_function():
    """Routing changes kernels, not the function: outputs and gradients equal the unrouted
    float64 network's."""
    m = _model("resnet8_w4")
    ref = _model("resnet8_w4").double()
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(10, (8,))
    group = multirun.make("grouped", [m], torch.device("cpu"))
    F.cross_entropy(group.forward(x.contiguous(memory_format=torch.channels_last)), y).backward()
    F.cross_entropy(ref(x.double()), y).backward()
    for (name, p), q in zip(m.named_parameters(), ref.parameters(), strict=True):
        scale = q.grad.abs().max().clamp_min(1e-12)
        assert (p.grad.double() - q.grad).abs().max() / scale < 1e-3, name
