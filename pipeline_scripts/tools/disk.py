"""The disk a planned job's outputs take, from the formats that write them (docs/results-schema.md).

A job's outputs are the files its ``snakemake -n`` listing names; each is sized by its kind:

=================================  =============================================================
file                               bytes
=================================  =============================================================
weights: ``final.pt``,             the network's ``state_dict`` (parameters and buffers) +
``state.pt``, ``iter<k>.pt``       ``torch.save``'s record per tensor (``checkpoint.save``)
``mask.pt``                        one byte (bool) per prunable weight + a record per tensor
``telemetry_raw.h5``               P x points float16 snapshots (P: the telemetry weights)
``data/cifar10.h5``                uint8 32x32x3 images + int64 labels of both splits
anything else                      ``SMALL_FILE``: metrics, summaries, figures, tables, logs
=================================  =============================================================

The per-tensor record is fitted to two networks' files (``TENSOR_RECORD``);
tests/workflow/test_run_status.py checks the model against every file of the smoke run. Resume
states (``resume/``: weights, momentum and generator state of each run of a running job) exist
only while a job runs and are not counted. Needs torch (the networks are built on the meta device).
"""

from __future__ import annotations

import re
from functools import cache

# torch.save's zip entry and pickle per tensor, and per file (the archive, the format's keys and
# metadata): fitted to ResNet-20's and resnet8_w4's checkpoints (128 and 56 tensors)
TENSOR_RECORD = 296
FILE_RECORD = 300
MASK_RECORD = 1_100  # a mask file's own keys (its level and provenance)
H5_OVERHEAD = 16_000  # an HDF5 file's own structure (telemetry_raw.h5 beyond its snapshots)
SMALL_FILE = 20_000  # a metrics or summary file, a figure, a table or a log (15-60 KB measured)
IMAGE_BYTES = 32 * 32 * 3 + 8  # one CIFAR-10 image (uint8) and its label (int64)

WEIGHTS = re.compile(r"(final|state|iter\d+)\.pt$")


@cache
def network_sizes(network: str, exclude: tuple[str, ...] | None = None) -> dict[str, int]:
    """{"state": bytes of the state_dict, "tensors": its tensors, "prunable": prunable weights,
    "prunable_tensors": their tensors, "telemetry": the telemetry weights (every prunable weight
    by the network's default)} of ``network``, built on the meta device (no memory, no time)."""
    import torch

    from pipeline_scripts.earlyphase import models

    with torch.device("meta"):
        model = models.build(network)
    state = model.state_dict()
    params = dict(model.named_parameters())
    masked = models.prunable(model, network, None if exclude is None else list(exclude))
    return {
        "state": sum(v.numel() * v.element_size() for v in state.values()),
        "tensors": len(state),
        "prunable": sum(params[n].numel() for n in masked),
        "prunable_tensors": len(masked),
        "telemetry": sum(params[n].numel() for n in models.prunable(model, network)),
    }


def file_bytes(path: str, network: str | None, config: dict, telemetry_points: int) -> int:
    """The predicted size of one output file (``network`` from the job's wildcards; None for the
    jobs of no one network: data, Figure A3, claims)."""
    name = path.rsplit("/", 1)[-1]
    if path.endswith("data/cifar10.h5"):
        from pipeline_scripts.tools.cost import data_sizes

        n_train, n_test = data_sizes(config)
        return (n_train + n_test) * IMAGE_BYTES + H5_OVERHEAD
    if network is None:
        return SMALL_FILE
    exclude = config["imp"]["exclude"]
    sizes = network_sizes(network, None if exclude is None else tuple(exclude))
    if WEIGHTS.search(name):
        return sizes["state"] + TENSOR_RECORD * sizes["tensors"] + FILE_RECORD
    if name == "mask.pt":
        return sizes["prunable"] + TENSOR_RECORD * sizes["prunable_tensors"] + MASK_RECORD
    if name == "telemetry_raw.h5":
        return sizes["telemetry"] * telemetry_points * 2 + H5_OVERHEAD
    return SMALL_FILE


def job_bytes(outputs: list[str], network: str | None, config: dict, points: int) -> int:
    """The predicted size of a job's outputs (``points``: the telemetry schedule's length)."""
    return sum(file_bytes(p, network, config, points) for p in outputs)
