"""The memory layout every network trains and evaluates in: one rule, applied in one place.

**Rule.** Every layer runs channels_last (NHWC) on every device, except, on a CPU, a ``Conv2d``
with a 1x1 kernel, a stride other than 1 and fewer than ``ONEDNN_IC_BLOCK`` (16) input channels
per group: that convolution runs in NCHW (its input and weight contiguous, its output handed on in
channels_last again).

**Why channels_last.** Measured on both x86 instruction sets this project is run on: ResNet-20's
training step is faster channels_last than NCHW (oneDNN's NHWC kernels avoid the reorders into its
blocked layouts), so the throughput benchmark's network-level choice is channels_last everywhere
(``python -m pipeline_scripts.tools.bench --layouts``; docs/performance.md).

**Why the exception.** oneDNN's 1x1 backward-by-weights kernels (``jit_avx2_1x1_convolution_bwd_
weights_t`` and its AVX-512 twin) copy a strided NHWC source into a per-thread "reduce to unit
stride" workspace whose offsets assume a whole block of ``ic_block`` input channels (8 on AVX2,
16 on AVX-512). With fewer input channels they write past that workspace: a segmentation fault
with one thread, a hang with two, heap corruption or silently wrong weight gradients otherwise
(oneDNN issue uxlfoundation/oneDNN#6035, open; PyTorch 2.14.1 ships oneDNN 3.12). Reproduced on
an AVX2 CPU with ``Conv2d(4, 8, 1, stride=2)`` channels_last: input channels 2 to 7 fail, 1 and 8
or more pass, stride 1 and NCHW sources pass (docs/onednn-1x1-bug.md has the reproduction). The
paper's networks have no such layer (their narrowest shortcut has 16 input channels), so they are
untouched and train bit-identically; the scaled test networks (``resnet8_w4``: a 4 -> 8 shortcut)
and a user's own narrow network are routed around the bug. The bound is the largest x86 block
(16), not the running CPU's, so the same run computes the same way on AVX2 and AVX-512 machines.
"""

from __future__ import annotations

import torch
from torch import nn

# The widest input-channel block of oneDNN's float32 1x1 convolutions on x86 (AVX-512; AVX2's is 8).
ONEDNN_IC_BLOCK = 16


def nchw_on_cpu(module: nn.Module) -> bool:
    """Whether the rule runs ``module`` in NCHW on a CPU (see the module docstring)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride != (1, 1)
        and module.in_channels // module.groups < ONEDNN_IC_BLOCK
    )


def _input_nchw(module, args):
    return (args[0].contiguous(), *args[1:])


def _output_channels_last(module, args, output):
    return output.contiguous(memory_format=torch.channels_last)


def route(model: nn.Module, device: torch.device) -> list[str]:
    """On a CPU, run the layers ``nchw_on_cpu`` selects in NCHW (weights made contiguous, forward
    hooks convert the input and output); elsewhere nothing. Idempotent. Returns their names."""
    if torch.device(device).type != "cpu":
        return []
    routed = []
    for name, m in model.named_modules():
        if not nchw_on_cpu(m):
            continue
        routed.append(name)
        if getattr(m, "_earlyphase_nchw", False):
            continue
        # A 1x1 kernel's channels_last strides count as contiguous (its size-1 dims), so
        # .contiguous() would keep them and the convolution would still pick NHWC: copy.
        m.weight.data = m.weight.data.clone(memory_format=torch.contiguous_format)
        m.register_forward_pre_hook(_input_nchw)
        m.register_forward_hook(_output_channels_last)
        m._earlyphase_nchw = True
    return routed


def apply(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` moved to ``device`` in the layout of the rule; returns it (changed in place)."""
    device = torch.device(device)
    model.to(device=device, memory_format=torch.channels_last)
    route(model, device)
    return model
