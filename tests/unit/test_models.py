"""Properties of the Table A1 networks and their initialisation (earlyphase.models)."""

import math

import pytest
import torch
from torch import nn

from pipeline_scripts.earlyphase import models

# Exact counts from the framework facts, and Table A1's rounded figures.
EXACT = {
    "resnet20": 272_474,
    "resnet56": 855_770,
    "resnet18": 11_181_642,
    "vgg13": 9_416_010,
    "wrn16_8": 11_093_130,
}
TABLE_A1 = {
    "resnet20": 272e3,
    "resnet56": 856e3,
    "resnet18": 11.2e6,
    "vgg13": 9.42e6,
    "wrn16_8": 11.1e6,
}
SMALL = ["resnet8_w4", "vgg13_w8", "wrn10_1", "resnet18_w8"]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", EXACT)
def test_parameter_counts_exact_and_match_table_a1(name):
    count = n_params(models.build(name))
    assert count == EXACT[name]
    assert abs(count - TABLE_A1[name]) / TABLE_A1[name] < 0.01


def test_resnet18_is_torchvision_resnet18():
    import torchvision

    ours, theirs = models.build("resnet18"), torchvision.models.resnet18(num_classes=10)
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same names and shapes
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 3, 32, 32, generator=seeded(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_wrn_stem_is_as_wide_as_first_stage():
    # The convention that gives 11,093,130 for wrn16_8: wrn{D}_{K} == resnet{D-2}_w{16K}.
    a, b = models.build("wrn10_2"), models.build("resnet8_w32")
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert a.conv1.weight.shape == (32, 3, 3, 3)


@pytest.mark.parametrize("name", SMALL)
def test_forward_shape(name):
    model = models.build(name, num_classes=7)
    out = model(torch.randn(2, 3, 32, 32, generator=seeded(0)))
    assert out.shape == (2, 7)


def test_vgg_width_scaling():
    convs = [m for m in models.build("vgg13_w8").modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32, 64, 64, 64, 64]
    assert all(c.bias is not None for c in convs)


@pytest.mark.parametrize(
    "name", ["alexnet", "resnet21", "wrn15_2", "vgg12", "resnet20_w0", "resnet999"]
)
def test_unknown_name_raises(name):
    with pytest.raises(ValueError, match=name):
        models.build(name)
    with pytest.raises(ValueError, match=name):  # the planning-time check agrees with build
        models.check_name(name)


def test_check_name_accepts_what_build_builds_without_touching_the_rng():
    state = torch.random.get_rng_state()
    for name in ("resnet20", "resnet56", "resnet18", "vgg13", "wrn16_8", "resnet8_w4"):
        models.check_name(name)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_unknown_name_lists_known_patterns():
    with pytest.raises(ValueError, match=r"resnet\{D\}"):
        models.build("alexnet")


def test_initialise_deterministic_and_explicit():
    def init(seed):
        model = models.build("vgg11_w8")
        model(torch.randn(4, 3, 32, 32))  # move the BN running stats away from their reset values
        models.initialise(model, seeded(seed))
        return model.state_dict()

    a, b, c = init(1), init(1), init(2)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["fc.weight"], c["fc.weight"])
    assert not torch.equal(a["features.0.bias"], c["features.0.bias"])


def test_initialise_leaves_global_rng_alone():
    model = models.build("resnet8_w4")
    state = torch.random.get_rng_state()
    models.initialise(model, seeded(0))
    models.replace_head(model, 4, seeded(1))
    models.build("resnet8_w4")
    assert torch.equal(torch.random.get_rng_state(), state)


def test_initialise_covers_every_parameter():
    model = models.build("resnet8_w4")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    models.initialise(model, seeded(0))
    assert not any(p.isnan().any() for p in model.parameters())


def test_initialise_distributions():
    model = models.build("resnet20")
    stds = models.initialise(model, seeded(0))
    weights = {n for n, p in model.named_parameters() if p.dim() > 1}
    assert set(stds) == weights  # every conv/linear weight, nothing else
    params = dict(model.named_parameters())
    for name, std in stds.items():
        assert std == pytest.approx(math.sqrt(2 / params[name][0].numel()))
    big = params["layer3.2.conv2.weight"]  # 64 * 64 * 9 = 36,864 draws
    assert big.std().item() == pytest.approx(stds["layer3.2.conv2.weight"], rel=0.03)
    assert abs(big.mean().item()) < 0.05 * stds["layer3.2.conv2.weight"]
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert 0 <= module.weight.min() and module.weight.max() <= 1
            assert torch.all(module.bias == 0)
            assert torch.all(module.running_mean == 0) and torch.all(module.running_var == 1)
    bound = 1 / math.sqrt(64)
    assert torch.all(model.fc.bias.abs() <= bound) and model.fc.bias.abs().max() > 0


def test_prunable_resnet20_default():
    model = models.build("resnet20")
    names = models.prunable(model, "resnet20")
    assert "layer2.0.downsample.0.weight" in names and "layer3.0.downsample.0.weight" in names
    assert "fc.weight" in names
    assert len(names) == 1 + 18 + 2 + 1  # stem, 9 blocks x 2 convs, 2 shortcuts, fc
    params = dict(model.named_parameters())
    assert all(params[n].dim() in (2, 4) for n in names)  # no biases, no BatchNorm


def test_prunable_vgg13_default_keeps_output_dense():
    model = models.build("vgg13_w8")
    names = models.prunable(model, "vgg13_w8")
    assert "fc.weight" not in names and len(names) == 10
    assert not any(n.endswith("bias") for n in names)
    assert "fc.weight" in models.prunable(model, "vgg13_w8", exclude=[])


def test_prunable_custom_exclude():
    model = models.build("resnet8_w4")
    names = models.prunable(model, "resnet8_w4", exclude=["fc.weight", "conv1.weight"])
    assert names == models.prunable(model, "resnet8_w4")[1:-1]
    for bad in ["fc.bias", "bn1.weight", "nope.weight"]:
        with pytest.raises(ValueError, match="valid"):
            models.prunable(model, "resnet8_w4", exclude=[bad])


def test_replace_head():
    model = models.build("resnet8_w4", num_classes=4)
    models.initialise(model, seeded(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert models.output_layer(model) == "fc"
    models.replace_head(model, 10, seeded(1))
    after = model.state_dict()
    assert set(after) == set(before)
    for key in before:
        if not key.startswith("fc."):
            assert torch.equal(after[key], before[key]), key
    assert model.fc.weight.shape == (10, 16)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    other = models.build("resnet8_w4", num_classes=4)
    models.replace_head(other, 10, seeded(1))
    assert torch.equal(other.fc.weight, model.fc.weight)  # head drawn from the generator only
