"""The memory layout and kernels every network trains and evaluates with: one rule, one place.

**Rule.** Every layer runs channels_last (NHWC) on every device. On a CPU, a ``Conv2d`` with a
1x1 kernel, a stride other than 1 and fewer than ``ONEDNN_IC_BLOCK`` (16) input channels per
group computes its strided convolution as the stride-1 convolution of its input sliced
``[::stride]`` (``StridedBySlicing``): the same function -- each output pixel is the 1x1
convolution of one input pixel -- without oneDNN's strided 1x1 kernel.

**Why channels_last.** Measured on both x86 instruction sets this project runs on: every
convolution shape of ResNet-20 and its whole training step are faster channels_last than NCHW
(oneDNN's NHWC kernels avoid reorders into its blocked layouts), 1.2x for the step on AVX2
(``python -m pipeline_scripts.tools.bench --layers resnet20``; docs/performance.md).

**Why the exception.** oneDNN's 1x1 backward-by-weights kernels (``jit_avx2_1x1_convolution_bwd_
weights_t`` and its AVX-512 twin) copy a strided NHWC source into a per-thread "reduce to unit
stride" workspace whose offsets assume a whole block of ``ic_block`` input channels (8 on AVX2,
16 on AVX-512). With fewer input channels they write past that workspace: a segmentation fault
with one thread, a hang with two, heap corruption or silently wrong weight gradients otherwise
(uxlfoundation/oneDNN#6035, open; PyTorch 2.14.1 ships oneDNN 3.12). Reproduced on an AVX2 CPU
with ``Conv2d(4, 8, 1, stride=2)`` channels_last: 2 to 7 input channels fail; 1, 8 or more, stride
1 and NCHW sources pass (docs/onednn-1x1-bug.md). Slicing first does in PyTorch what that
workspace copy does inside oneDNN, and leaves a stride-1 1x1 convolution, which is correct for
every channel count -- in eager mode, under ``torch.compile`` (Inductor chooses its own memory
layouts, so a per-layer layout switch would not survive it) and in the Hessian's double backward.
The paper's networks have no such layer (their narrowest shortcut has 16 input channels), so they
are untouched and train bit-identically; the scaled test networks (``resnet8_w4``: a 4 -> 8
shortcut) and a user's own narrow network are routed around the bug. The bound is the largest x86
block (16), not the running CPU's, so a run computes the same way on AVX2 and AVX-512 machines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The widest input-channel block of oneDNN's float32 1x1 convolutions on x86 (AVX-512; AVX2's is 8).
ONEDNN_IC_BLOCK = 16


class StridedBySlicing(nn.Conv2d):
    """A strided 1x1 ``Conv2d`` computed as the stride-1 convolution of the (padded) input
    sliced at the stride; parameters, state and attributes (``stride`` included) are unchanged.

    The slice is copied into a dense tensor (channels_last, as it was) before the convolution.
    Eager PyTorch makes that copy anyway, but Inductor hands the strided view itself to
    ``convolution`` and ``convolution_backward``, and oneDNN's backward-by-weights then reads a
    non-dense NHWC source with fewer than 16 channels: the same out-of-bounds workspace writes
    (heap corruption, NaN weight gradients; tests/unit/test_compile.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        sh, sw = self.stride
        # clone() keeps the slice's channels_last order, densely; vmap allows no other format
        x = x[:, :, ::sh, ::sw].clone()
        return F.conv2d(x, self.weight, self.bias, 1, 0, 1, self.groups)


def slice_on_cpu(module: nn.Module) -> bool:
    """Whether the rule computes ``module`` by slicing on a CPU (see the module docstring)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride != (1, 1)
        and module.padding_mode == "zeros"
        and module.in_channels // module.groups < ONEDNN_IC_BLOCK
    )


def route(model: nn.Module, device: torch.device | str) -> list[str]:
    """On a CPU, make the convolutions ``slice_on_cpu`` selects ``StridedBySlicing`` (in place;
    idempotent); elsewhere nothing. Returns their names."""
    if torch.device(device).type != "cpu":
        return []
    routed = []
    for name, m in model.named_modules():
        if slice_on_cpu(m):
            m.__class__ = StridedBySlicing
            routed.append(name)
    return routed


def apply(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` moved to ``device`` in the layout of the rule; returns it (changed in place)."""
    device = torch.device(device)
    model.to(device=device, memory_format=torch.channels_last)
    route(model, device)
    return model
