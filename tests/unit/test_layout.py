"""The layout rule (layout.py): channels_last everywhere; on CPUs, the strided 1x1 convolutions
with few input channels that oneDNN's backward-weights kernel gets wrong are computed by slicing
the input and convolving with stride 1 -- the same function, in eager mode and compiled."""

import pytest
import torch
import torch.nn.functional as F

from pipeline_scripts.earlyphase import layout, models, multirun, rng

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)


def _model(name, seed=1):
    m = models.build(name)
    models.initialise(m, rng.generator(seed, "init"))
    return m


@pytest.mark.parametrize("name", models.PAPER_NETWORKS)
def test_the_papers_networks_are_untouched(name):
    """No layer of the paper's networks is routed: they compute exactly as channels_last always
    did (same module classes, same parameter strides as a plain .to(channels_last))."""
    plain = models.build(name).to(memory_format=torch.channels_last)
    ours = models.build(name)
    assert layout.route(ours, "cpu") == []
    layout.apply(ours, "cpu")
    assert [type(m) for m in ours.modules()] == [type(m) for m in plain.modules()]
    assert [p.stride() for p in ours.parameters()] == [p.stride() for p in plain.parameters()]


def test_narrow_strided_shortcuts_are_sliced_on_cpus_only():
    m = _model("resnet8_w4")
    assert layout.route(m, "cuda") == []  # on a GPU nothing changes (no CUDA needed to ask)
    names = ["layer2.0.downsample.0", "layer3.0.downsample.0"]
    assert layout.route(m, "cpu") == names
    assert layout.route(m, "cpu") == names  # idempotent
    conv = m.get_submodule(names[0])
    assert type(conv) is layout.StridedBySlicing and conv.stride == (2, 2)
    assert not layout.slice_on_cpu(torch.nn.Conv2d(16, 32, 1, stride=2))  # 16 = the block: fine
    assert not layout.slice_on_cpu(torch.nn.Conv2d(4, 8, 1, stride=1))  # no strided copy
    assert not layout.slice_on_cpu(torch.nn.Conv2d(4, 8, 3, stride=2))  # not the 1x1 kernel
    assert layout.slice_on_cpu(torch.nn.Conv2d(8, 16, 1, stride=2))  # AVX-512's block is 16


@pytest.mark.parametrize("stride,padding,size", [(2, 0, 32), (2, 0, 31), (3, 1, 17)])
def test_slicing_computes_the_strided_convolution(stride, padding, size):
    conv = torch.nn.Conv2d(4, 8, 1, stride=stride, padding=padding).double()
    x = torch.randn(3, 4, size, size, dtype=torch.float64)
    want = conv(x)
    layout.route(conv, "cpu")
    got = conv(x)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=1e-12)


def test_routed_network_computes_the_same_function():
    """Routing changes kernels, not the function: the gradients equal the unrouted float64
    network's."""
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


def test_a_routed_model_widens_into_a_routed_wide_model():
    """A model already routed (its shortcut a StridedBySlicing) batched with others: the wide
    network gets a plain wide convolution of the same stride, routed again."""
    models_ = [_model("resnet8_w4", s) for s in (1, 2)]
    layout.route(models_[0], "cpu")
    group = multirun.make("grouped", models_, torch.device("cpu"))
    wide = group.net.get_submodule("layer2.0.downsample.0")
    assert type(wide) is layout.StridedBySlicing and wide.stride == (2, 2) and wide.groups == 2
