"""The networks of Table A1, built from their names, and their initialisation.

Architectures follow the paper's framework (OpenLTH) as summarised in
``shared/paper/framework-facts.md``; parameter counts for 10 classes are asserted in the tests:

====================  ===========  ==========================================================
name                  parameters   architecture
====================  ===========  ==========================================================
``resnet20``          272,474      CIFAR ResNet, 3 blocks/stage, widths 16/32/64
``resnet56``          855,770      CIFAR ResNet, 9 blocks/stage, widths 16/32/64
``resnet18``          11,181,642   torchvision ResNet-18 (ImageNet stem), 10 outputs
``vgg13``             9,416,010    Liu et al. (2019) CIFAR VGG-13 with BatchNorm
``wrn16_8``           11,093,130   CIFAR ResNet, 2 blocks/stage, widths 128/256/512, stem 128
====================  ===========  ==========================================================

All ResNets share one post-activation basic block (conv-BN-ReLU-conv-BN, add shortcut, ReLU); the
shortcut is the identity unless the shape changes, then a 1x1 (strided) conv + BN, so it has
prunable weights. Module names match torchvision's (``conv1``, ``layer2.0.downsample.0``, ``fc``)
so ``resnet18`` loads a torchvision ``resnet18(num_classes=10)`` state dict strictly. We write the
ResNet-18 ourselves rather than call torchvision because torchvision's ``BasicBlock`` refuses any
width but 64, and the tests need the scaled-down ``resnet18_w{W}``.

Names are looked up in ``_REGISTRY`` (display pattern -> family); ``KNOWN`` lists the patterns.
Adding a network = one builder and one registry entry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# ----------------------------------------------------------------------------------------------
# Architectures


class Block(nn.Module):
    """Post-activation basic block (He et al. 2016; framework facts, "Networks")."""

    def __init__(self, f_in: int, f_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        # Projection only where the shape changes; the facts file counts its 1x1 conv as prunable.
        self.downsample = None
        if stride != 1 or f_in != f_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False), nn.BatchNorm2d(f_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """Stem, stages ``layer1..layerK`` of ``blocks`` blocks each, global average pool, ``fc``.

    The stem has as many channels as the first stage (OpenLTH's and torchvision's convention), so
    the first stage never needs a projection. Every later stage halves the resolution in its first
    block. ``imagenet_stem`` selects torchvision's 7x7 stride-2 conv + 3x3 max-pool (ResNet-18,
    Table A1 / facts: the framework only has this version) instead of the CIFAR 3x3 conv.
    """

    def __init__(self, widths: list[int], blocks: int, num_classes: int, imagenet_stem: bool):
        super().__init__()
        stem = widths[0]
        if imagenet_stem:
            self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem)
        f_in = stem
        for i, width in enumerate(widths):
            stage = []
            for j in range(blocks):
                stage.append(Block(f_in, width, stride=2 if i > 0 and j == 0 else 1))
                f_in = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.num_stages = len(widths)
        self.fc = nn.Linear(f_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean(dim=(2, 3)))


class VGG(nn.Module):
    """Liu et al. (2019) CIFAR VGG: 3x3 convs with bias, each + BN + ReLU; 2x2 max-pool after every
    stage but the last, which ends in a 2x2 average pool (32 -> 1 pixel); one linear layer."""

    def __init__(self, stages: list[list[int]], num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        f_in = 3
        for i, stage in enumerate(stages):
            for width in stage:
                layers += [nn.Conv2d(f_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                f_in = width
            layers.append(nn.MaxPool2d(2) if i < len(stages) - 1 else nn.AvgPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(f_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


# Convs per stage of the standard VGG configurations (Simonyan & Zisserman 2015, A/B/D/E).
_VGG_STAGES = {11: [1, 1, 2, 2, 2], 13: [2, 2, 2, 2, 2], 16: [2, 2, 3, 3, 3], 19: [2, 2, 4, 4, 4]}
_VGG_WIDTHS = [64, 128, 256, 512, 512]


# ----------------------------------------------------------------------------------------------
# Builders: one per family, each takes the regex match of the name.


def _cifar_resnet(m: re.Match, num_classes: int) -> nn.Module:
    depth, width = int(m[1]), int(m[2] or 16)
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"{m[0]!r}: a CIFAR ResNet's depth must be 6n+2 (8, 14, 20, 56, ...)")
    return ResNet([width, 2 * width, 4 * width], (depth - 2) // 6, num_classes, imagenet_stem=False)


def _wrn(m: re.Match, num_classes: int) -> nn.Module:
    # WRN-D-K: n = (D-4)/6 blocks per stage (Zagoruyko & Komodakis 2016), widths 16K/32K/64K, built
    # as the framework's plain post-activation ResNet whose stem is as wide as stage 1 (16K). Only
    # this stem gives Table A1's 11.1M for WRN-16-8: 11,093,130; a 16-channel stem gives 10,963,162.
    # So wrn{D}_{K} is the same network as resnet{D-2}_w{16K}.
    depth, k = int(m[1]), int(m[2])
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"{m[0]!r}: a WRN's depth must be 6n+4 (10, 16, 22, 28, ...)")
    width = 16 * k
    return ResNet([width, 2 * width, 4 * width], (depth - 4) // 6, num_classes, imagenet_stem=False)


def _resnet18(m: re.Match, num_classes: int) -> nn.Module:
    width = int(m[1] or 64)
    widths = [width, 2 * width, 4 * width, 8 * width]
    return ResNet(widths, 2, num_classes, imagenet_stem=True)


def _vgg(m: re.Match, num_classes: int) -> nn.Module:
    depth, width = int(m[1]), int(m[2] or 64)
    stages = [[w * width // 64] * n for w, n in zip(_VGG_WIDTHS, _VGG_STAGES[depth], strict=True)]
    return VGG(stages, num_classes)


@dataclass(frozen=True)
class _Family:
    regex: str  # full-match pattern of the name; its groups are the builder's arguments
    build: Callable[[re.Match, int], nn.Module]
    description: str
    prune_output: bool  # framework default: ResNets prune their final linear layer, VGG does not


_NUM = r"([1-9]\d*)"
# First match wins: resnet18 must precede the CIFAR resnet{D} family.
_REGISTRY: dict[str, _Family] = {
    "resnet18[_w{W}]": _Family(
        rf"resnet18(?:_w{_NUM})?",
        _resnet18,
        "torchvision ResNet-18 with ImageNet stem (7x7/2 conv, max-pool); stages W/2W/4W/8W, W=64",
        prune_output=True,
    ),
    "resnet{D}[_w{W}]": _Family(
        rf"resnet{_NUM}(?:_w{_NUM})?",
        _cifar_resnet,
        "CIFAR ResNet, D = 6n+2, n blocks per stage, stages W/2W/4W, W=16 (resnet20, resnet56)",
        prune_output=True,
    ),
    "wrn{D}_{K}": _Family(
        rf"wrn{_NUM}_{_NUM}",
        _wrn,
        "wide CIFAR ResNet, D = 6n+4, stem and stages 16K/32K/64K, no dropout (wrn16_8)",
        prune_output=True,
    ),
    "vgg{11,13,16,19}[_w{W}]": _Family(
        rf"vgg(11|13|16|19)(?:_w{_NUM})?",
        _vgg,
        "CIFAR VGG with BatchNorm (Liu et al. 2019), widths scaled by W/64, W=64 (vgg13)",
        prune_output=False,
    ),
}
KNOWN: dict[str, str] = {pattern: family.description for pattern, family in _REGISTRY.items()}
# The paper's five networks (Table A1), in its order: what config.yaml trains (tested) and what the
# benchmarks and GPU measurements time by default.
PAPER_NETWORKS = ("resnet20", "resnet56", "resnet18", "vgg13", "wrn16_8")


def _lookup(name: str) -> tuple[_Family, re.Match]:
    for family in _REGISTRY.values():
        m = re.fullmatch(family.regex, name)
        if m:
            return family, m
    known = "\n".join(f"  {pattern}: {text}" for pattern, text in KNOWN.items())
    raise ValueError(f"unknown network {name!r}; known name patterns:\n{known}")


# ----------------------------------------------------------------------------------------------
# Public interface


def check_name(name: str) -> None:
    """Raise ValueError unless ``build(name)`` would succeed: the name must match a family and
    its numbers must make that architecture (resnet{6n+2}, wrn{6n+4}_{K}). Builds on the meta
    device (no memory, no random draws), so it is cheap enough for planning."""
    family, m = _lookup(name)
    with torch.device("meta"):
        family.build(m, 10)


def build(name: str, num_classes: int = 10) -> nn.Module:
    """The network called ``name`` with ``num_classes`` outputs (see ``KNOWN``).

    Its weights are PyTorch's defaults; call ``initialise`` for the paper's initialisation. Those
    defaults are drawn inside a forked global RNG, so building never shifts anyone's random stream
    (house habit 8).
    """
    family, m = _lookup(name)
    with torch.random.fork_rng(devices=[]):
        return family.build(m, num_classes)


def _is_weighted_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.Linear))


def _init_param(
    module: nn.Module, leaf: str, param: torch.Tensor, g: torch.Generator
) -> float | None:
    """Initialise one parameter in place (framework facts, "Initialisation"); returns the weight's
    sigma for conv/linear weights, None otherwise."""
    buffer = torch.empty(param.shape, dtype=torch.float32, device=g.device)
    std = None
    if _is_weighted_layer(module) and leaf in ("weight", "bias"):
        fan_in = module.weight[0].numel()  # in_channels/groups * kernel area, or in_features
        if leaf == "weight":
            std = math.sqrt(2.0 / fan_in)  # Kaiming normal, fan-in, ReLU gain
            buffer.normal_(0.0, std, generator=g)
        else:
            bound = 1.0 / math.sqrt(fan_in)  # PyTorch's default bias distribution
            buffer.uniform_(-bound, bound, generator=g)
    elif isinstance(module, _BatchNorm) and leaf == "weight":
        buffer.uniform_(0.0, 1.0, generator=g)  # gamma ~ U[0, 1]
    elif isinstance(module, _BatchNorm) and leaf == "bias":
        buffer.zero_()
    else:
        raise ValueError(f"no initialisation rule for {leaf!r} of {type(module).__name__}")
    param.copy_(buffer)
    return std


def initialise(model: nn.Module, generator: torch.Generator) -> dict[str, float]:
    """Re-initialise every parameter from ``generator`` alone and reset BatchNorm statistics.

    Conv/linear weights ~ N(0, 2/fan_in); their biases ~ U(+-1/sqrt(fan_in)); BN gamma ~ U[0, 1],
    beta = 0. Parameters are drawn in ``named_parameters()`` order into buffers on the generator's
    device, so the same seed gives the same weights on any device. Returns ``{name: sigma}`` for
    every conv/linear weight: the per-layer scale of the noise experiment (Figure 7).
    """
    stds = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            path, _, leaf = name.rpartition(".")
            std = _init_param(model.get_submodule(path), leaf, param, generator)
            if std is not None:
                stds[name] = std
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.reset_running_stats()
    return stds


def prunable(model: nn.Module, name: str, exclude: list[str] | None = None) -> list[str]:
    """Names of the weights IMP may prune, in ``named_parameters()`` order.

    Candidates are all conv and linear weights, 1x1 shortcut convs included; biases and BatchNorm
    are never pruned (framework facts, "Pruning"). ``exclude=None`` applies the framework default
    for ``name``'s family (ResNets prune ``fc``, VGG keeps it dense); otherwise the given
    candidate names are left out instead.
    """
    family, _ = _lookup(name)
    candidates = [
        param_name
        for param_name, _ in model.named_parameters()
        if param_name.endswith(".weight")
        and _is_weighted_layer(model.get_submodule(param_name.rpartition(".")[0]))
    ]
    if exclude is None:
        exclude = [] if family.prune_output else [f"{output_layer(model)}.weight"]
    unknown = sorted(set(exclude) - set(candidates))
    if unknown:
        raise ValueError(
            f"cannot exclude {unknown}: not prunable weights of {name!r}; valid: {candidates}"
        )
    return [c for c in candidates if c not in exclude]


def output_layer(model: nn.Module) -> str:
    """Attribute path of the final classifier Linear (the last Linear registered, ``fc`` here)."""
    linears = [path for path, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear output layer")
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int, generator: torch.Generator) -> None:
    """Swap the output layer for a fresh ``num_classes``-way Linear initialised as ``initialise``
    does; the body is untouched. Used after rotation pre-training (4-way) for the 10-way task
    (Section 5). Optimisers holding the old head's parameters must be rebuilt by the caller."""
    path = output_layer(model)
    old = model.get_submodule(path)
    parent, _, attr = path.rpartition(".")
    # Built on the meta device: no default init, so the global RNG is never touched.
    head = nn.Linear(
        old.in_features,
        num_classes,
        bias=old.bias is not None,
        device="meta",
        dtype=old.weight.dtype,
    ).to_empty(device=old.weight.device)
    with torch.no_grad():
        for leaf, param in head.named_parameters():
            _init_param(head, leaf, param, generator)
    setattr(model.get_submodule(parent), attr, head)
