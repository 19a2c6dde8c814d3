"""The unit tests' one factory of ``runs.Job``: a run of ``network`` on ``data_path`` whose final
weights and metrics go to ``out`` and whose resume state goes to ``out/<workdir>``."""

from pathlib import Path

from pipeline_scripts.earlyphase import runs


def make_job(data_path, out, *, network, hparams, log_every, seed=1, workdir="resume", **kw):
    """``hparams``: a TrainingHparams or its dict; ``runtime`` in ``kw`` replaces {log_every}."""
    out = Path(out)
    return runs.Job(
        **{
            "network": network,
            "seed": seed,
            "data_path": str(data_path),
            "hparams": hparams.to_dict() if hasattr(hparams, "to_dict") else hparams,
            "runtime": {"log_every": log_every},
            "eval_every": 1,
            "workdir": str(out / workdir),
            "out_final": str(out / "final.pt"),
            "out_metrics": str(out / "metrics.h5"),
            **kw,
        }
    )
