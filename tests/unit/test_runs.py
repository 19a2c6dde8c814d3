"""runs.run for the branch kinds: perturbation bookkeeping, pre-training heads, sparse masks."""

import dataclasses
import shutil
from pathlib import Path

import h5py
import pytest
import torch
from jobs import make_job

from pipeline_scripts.earlyphase import checkpoint, data, models, prune, rng, runs, train
from pipeline_scripts.earlyphase.hparams import TrainingHparams

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)

NET = "resnet8_w4"
HP = TrainingHparams(batch_size=32, epochs=1, milestones=()).to_dict()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data.prepare(root / "d.h5", "synthetic", synthetic={"n_train": 96, "n_test": 32}, seed=0)
    dense = root / "dense"
    job = make_job(
        root / "d.h5",
        dense,
        network=NET,
        hparams=HP,
        log_every=1,
        workdir="../w",
        snapshots={0: str(dense / "iter0.pt"), 2: str(dense / "iter2.pt")},
    )
    runs.run(job, log=lambda s: None)
    weights = checkpoint.load(dense / "final.pt")["state_dict"]
    model = models.build(NET)
    names = models.prunable(model, NET)
    mask = prune.global_magnitude(weights, prune.full_mask(weights, names), 0.5)
    prune.save(root / "mask.pt", mask, level=3)
    return root, mask


def _branch(root, name, **kw):
    out = root / name
    job = make_job(
        root / "d.h5",
        out,
        network=NET,
        hparams=HP,
        log_every=1,
        workdir="w",
        snapshots={0: str(out / "start.pt")},
        **kw,
    )
    attrs = runs.run(job, log=lambda s: None)
    return attrs, checkpoint.load(out / "start.pt")["state_dict"], out


def test_perturbation_touches_only_kept_prunable_weights(setup):
    root, mask = setup
    attrs, start, out = _branch(
        root,
        "noise",
        init=str(root / "dense" / "iter2.pt"),
        mask_in=str(root / "mask.pt"),
        perturbation={"kind": "noise", "scale": 1.0},
        perturb_init0=str(root / "dense/iter0.pt"),
        perturb_key="noise_1",
        level=3,
    )
    k2 = checkpoint.load(root / "dense" / "iter2.pt")["state_dict"]
    for name, value in k2.items():
        if name in mask:
            assert (start[name][~mask[name]] == 0).all()
            assert not torch.equal(start[name][mask[name]], value[mask[name]])
        else:  # biases, BatchNorm parameters and buffers keep their iteration-k values
            assert torch.equal(start[name], value), name
    diffs = torch.cat([(start[n] - k2[n])[mask[n]] for n in mask])
    assert attrs["effective_std"] == pytest.approx(
        diffs.double().std(unbiased=False).item(), rel=1e-4
    )
    assert attrs["perturbation_family"] == "noise"
    with h5py.File(out / "metrics.h5") as f:
        assert f.attrs["effective_std"] == pytest.approx(attrs["effective_std"])


def test_rotation_pretraining_swaps_heads_and_keeps_the_body(setup):
    root, _ = setup
    attrs, start, out = _branch(root, "rot", task="rotation")
    final = checkpoint.load(out / "final.pt")["state_dict"]
    assert final["fc.weight"].shape[0] == 10  # a fresh 10-way head for CIFAR-10 ...
    assert start["fc.weight"].shape[0] == 4  # ... after training a 4-way rotation head
    with h5py.File(out / "metrics.h5") as f:  # evaluation measured the rotation task
        assert 0.0 <= f.attrs["final_test_accuracy"] <= 1.0
    # The body trained; the returned head is the seed's "main_head" draw, not the init's fc.
    init = models.build(NET)
    models.initialise(init, rng.generator(1, "init"))
    assert not torch.equal(final["conv1.weight"], init.state_dict()["conv1.weight"])
    assert not torch.equal(final["fc.weight"], init.state_dict()["fc.weight"])


def test_sparse_pretraining_keeps_masks_exact(setup):
    root, mask = setup
    _, start, out = _branch(
        root,
        "sparse",
        task="rotation",
        init=str(root / "dense" / "iter2.pt"),
        mask_in=str(root / "mask.pt"),
        out_mask=str(root / "sparse" / "mask.pt"),
        level=3,
    )
    final = checkpoint.load(out / "final.pt")["state_dict"]
    for name, keep in mask.items():
        if not name.startswith("fc."):  # the pretext head is temporary and dense
            assert (final[name][~keep] == 0).all(), name
    saved = prune.load(root / "sparse" / "mask.pt")
    assert all(torch.equal(saved[n], mask[n]) for n in mask)


def test_random_mask_has_the_same_per_layer_sparsity(setup):
    root, mask = setup
    _, start, out = _branch(
        root,
        "random",
        init=str(root / "dense" / "iter2.pt"),
        random_mask_like=str(root / "mask.pt"),
        out_mask=str(root / "random" / "mask.pt"),
        level=3,
    )
    rand = prune.load(root / "random" / "mask.pt")
    assert prune.counts(rand) == prune.counts(mask)
    assert any(not torch.equal(rand[n], mask[n]) for n in mask)
    again = prune.random_like(mask, rng.generator(1, "random_mask", 3))
    assert all(torch.equal(again[n], rand[n]) for n in mask)  # keyed by (seed, level)


def test_effective_std_report_for_configured_variants(setup):
    import yaml

    from pipeline_scripts.tools import effective_std

    root, mask = setup
    with open("config.yaml") as f:
        variants = yaml.safe_load(f)["perturb"]["variants"]
    dense = root / "dense"
    out = effective_std.effective_stds(NET, dense / "iter2.pt", dense / "iter0.pt", variants, mask)
    assert set(out) == set(variants)
    for name, (mean, std) in out.items():
        # after 2 steps hardly any sign has flipped, so signs-from-0 may change nothing at all
        assert std > 0 or name.startswith("signs_0"), name
        if "shuffle" in name and "signs" not in name:  # a permutation keeps the sum
            assert abs(mean) < 1e-6, name
    assert out["noise_2"][1] > out["noise_1"][1] > out["noise_0.5"][1]


def test_effective_std_tool_labels_its_mask(setup, tmp_path, capsys):
    """The command-line report: one row per configured variant, mean over the given runs, and the
    mask it used said in so many words (a stand-in is never mistaken for the IMP mask)."""
    import shutil

    from pipeline_scripts.tools import effective_std

    root, _ = setup
    run = tmp_path / "seed1" / "dense"
    (run / "checkpoints").mkdir(parents=True)
    for k in (0, 2):
        shutil.copy(root / "dense" / f"iter{k}.pt", run / "checkpoints" / f"iter{k}.pt")
    level = tmp_path / "seed1" / "level3"
    level.mkdir()
    shutil.copy(root / "mask.pt", level / "mask.pt")
    base = ["--network", NET, "--k", "2", "--dense", str(run)]
    effective_std.main([*base, "--standin-iteration", "2", "--standin-keep", "0.5"])
    out = capsys.readouterr().out
    assert "STAND-IN mask" in out and "0.500 kept" in out and "shuffle_kernel" in out
    effective_std.main([*base, "--mask-dir", str(tmp_path / "seed{seed}" / "level3")])
    out = capsys.readouterr().out
    assert "IMP mask" in out and "STAND-IN" not in out


def _job(root, name, seed, **kw):
    return make_job(
        root / "d.h5",
        root / name,
        network=NET,
        hparams=HP,
        log_every=1,
        seed=seed,
        workdir="w",
        **kw,
    )


@pytest.mark.parametrize("kind", ["perturb_and_prune", "rotation"])
def test_group_of_runs_writes_what_separate_runs_write(setup, kind):
    """runs_per_job > 1: one process trains several seeds' jobs (each with its own start,
    mask, perturbation, labels) and writes each job's files as a separate run would."""
    root, _ = setup
    dense = root / "dense"
    if kind == "rotation":
        specs = [dict(seed=s, task="rotation") for s in (1, 2)]
    else:
        specs = [
            dict(
                seed=1,
                init=str(dense / "iter2.pt"),
                mask_in=str(root / "mask.pt"),
                perturbation={"kind": "noise", "scale": 1.0},
                perturb_key="noise_1",
                perturb_init0=str(dense / "iter0.pt"),
                level=3,
            ),
            dict(
                seed=2,
                init=str(dense / "iter2.pt"),
                prune_from=(str(dense / "final_seed2.pt"), None),
                level=1,
            ),
        ]
        # seed 1's final weights, saved as seed 2's (a job checks the seed of what it prunes)
        ck = checkpoint.load(dense / "final.pt")
        checkpoint.save(
            dense / "final_seed2.pt",
            ck["state_dict"],
            iteration=ck["iteration"],
            network=NET,
            meta={**ck["meta"], "seed": 2},
        )
    outs = {}
    for mode in ("alone", "group"):
        jobs = []
        for spec in specs:
            name = f"{kind}_{mode}_{spec['seed']}"
            extra = {"out_mask": str(root / name / "mask.pt")} if "prune_from" in spec else {}
            jobs.append(_job(root, name, **spec, **extra))
        if mode == "alone":
            attrs = [runs.run(j, log=lambda s: None) for j in jobs]
        else:
            attrs = runs.run_group(jobs, log=lambda s: None)
        outs[mode] = (jobs, attrs)
    for alone, a_attrs, group, g_attrs in zip(*outs["alone"], *outs["group"], strict=True):
        assert g_attrs["runs_per_job"] == 2 and g_attrs["seed"] == a_attrs["seed"]
        for key in ("effective_std", "weights_remaining_fraction", "init"):
            assert g_attrs.get(key) == a_attrs.get(key), key  # same start, same perturbation
        fa = checkpoint.load(alone.out_final)["state_dict"]
        fg = checkpoint.load(group.out_final)["state_dict"]
        assert fa.keys() == fg.keys()
        for name in fa:  # 3 SGD steps: float tolerance (other kernels), not bit-identical
            torch.testing.assert_close(fg[name], fa[name], rtol=1e-3, atol=1e-4, msg=name)
        if alone.out_mask:
            ma, mg = prune.load(alone.out_mask), prune.load(group.out_mask)
            assert all(torch.equal(ma[n], mg[n]) for n in ma)
        with h5py.File(alone.out_metrics) as a, h5py.File(group.out_metrics) as g:
            assert list(a["eval/iteration"]) == list(g["eval/iteration"])
            assert g["eval/accuracy"][:] == pytest.approx(a["eval/accuracy"][:], abs=1 / 32)


def test_group_refuses_runs_that_cannot_share_a_process(setup):
    root, _ = setup
    a = _job(root, "x1", 1)
    b = _job(root, "x2", 2, task="rotation")
    with pytest.raises(ValueError, match="must share task"):
        runs.run_group([a, b])


# ---- resume identity: a saved state is continued only by the run that saved it -----------------
def _sigterm_run(monkeypatch, job, at=1):
    """runs.run(job), SIGTERMed before step ``at``: leaves the job's resume state behind."""
    import os
    import signal

    real = runs.train_runs

    def interrupted(batch, hp, **kw):
        (r,) = batch
        opts = r.opts

        def hook(x, y, it):
            if opts.batch_fn is not None:
                x, y = opts.batch_fn(x, y, it)
            if it == at:
                os.kill(os.getpid(), signal.SIGTERM)
            return x, y

        return real(
            [dataclasses.replace(r, opts=dataclasses.replace(opts, batch_fn=hook))], hp, **kw
        )

    with monkeypatch.context() as m:
        m.setattr(runs, "train_runs", interrupted)
        with pytest.raises(train.Interrupted):
            runs.run(job, log=lambda s: None)
    assert (Path(job.workdir) / "resume.pt").is_file()


def _final(job):
    return checkpoint.load(job.out_final)["state_dict"]


def _level_job(root, name, **kw):
    dense = root / "dense"
    spec = dict(
        init=str(dense / "iter2.pt"),
        prune_from=(str(dense / "final.pt"), None),
        level=1,
        out_mask=str(root / name / "mask.pt"),
        prune_fraction=0.2,
    )
    return dataclasses.replace(_job(root, name, 1), **{**spec, **kw})


def _noise_job(root, name, scale=1.0):
    dense = root / "dense"
    return _job(
        root,
        name,
        1,
        init=str(dense / "iter2.pt"),
        mask_in=str(root / "mask.pt"),
        perturbation={"kind": "noise", "scale": scale},
        perturb_key="noise",
        perturb_init0=str(dense / "iter0.pt"),
        level=3,
    )


@pytest.mark.parametrize(
    "change",
    ["imp_fraction", "perturbation", "start_weights", "data_contents", "unchanged"],
)
def test_resume_state_is_used_only_by_the_run_that_saved_it(setup, monkeypatch, change):
    """The issue's reproduction: SIGTERM an IMP level, change imp.fraction 0.2 -> 0.5, re-run.
    Before, the re-run continued the 0.2 state; now it says why not, moves the state aside and
    ends bit-identical to a fresh run of the new settings. Unchanged, it still resumes."""
    root, _ = setup
    name = f"resume_{change}"
    if change == "perturbation":
        before, after = _noise_job(root, name, 1.0), _noise_job(root, name, 2.0)
    elif change == "start_weights":  # same path, other contents: the checkpoint was re-made
        start = root / name / "start.pt"
        start.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "dense" / "iter2.pt", start)
        before = _level_job(root, name, init=str(start))
        after = before
    elif change == "data_contents":
        before = after = _level_job(root, name, data_path=str(root / name / "d.h5"))
        data.prepare(before.data_path, "synthetic", synthetic={"n_train": 96, "n_test": 32})
    else:
        before = _level_job(root, name)
        after = _level_job(root, name, prune_fraction=0.5 if change == "imp_fraction" else 0.2)
    _sigterm_run(monkeypatch, before)
    if change == "start_weights":
        shutil.copy(root / "dense" / "iter0.pt", start)
    elif change == "data_contents":  # same shapes and sizes, other pixels
        data.prepare(before.data_path, "synthetic", synthetic={"n_train": 96, "n_test": 32}, seed=5)
    logged = []
    runs.run(after, log=logged.append)
    workdir = Path(after.workdir)
    fresh = dataclasses.replace(
        after,
        workdir=str(workdir) + "_fresh",
        out_final=after.out_final + ".fresh.pt",
        out_metrics=after.out_metrics + ".fresh.h5",
        out_mask=after.out_mask and after.out_mask + ".fresh.pt",
    )
    runs.run(fresh, log=lambda s: None)
    assert all(torch.equal(_final(after)[k], v) for k, v in _final(fresh).items())
    text = "\n".join(logged)
    if change == "unchanged":
        assert "resumed from" in text and "NOT resuming" not in text
        assert not workdir.exists()
        return
    assert "resumed from" not in text
    assert f"NOT resuming from {workdir / 'resume.pt'}" in text and "different run" in text
    stale = list(workdir.glob("resume.stale-*.pt"))  # kept as evidence, also after success
    assert len(stale) == 1 and stale[0].name in text


@pytest.mark.parametrize("damage", [b"", b"not a torch file", "truncated"])
def test_damaged_resume_state_is_set_aside_not_a_raw_unpickling_error(setup, monkeypatch, damage):
    root, _ = setup
    job = _level_job(root, f"damaged_{len(damage)}")
    _sigterm_run(monkeypatch, job)
    resume = Path(job.workdir) / "resume.pt"
    blob = resume.read_bytes()
    resume.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else damage)
    logged = []
    runs.run(job, log=logged.append)  # starts afresh instead of failing on every re-run
    text = "\n".join(logged)
    assert f"NOT resuming from {resume}: it cannot be read" in text and "afresh" in text
    (stale,) = Path(job.workdir).glob("resume.stale-*.pt")
    assert stale.read_bytes() == (blob[: len(blob) // 2] if damage == "truncated" else damage)


def test_metrics_record_the_verified_data_hash(setup):
    root, _ = setup
    with h5py.File(root / "dense" / "metrics.h5") as f:
        recorded = f.attrs["data_sha256"], f.attrs["data_sha256_train"]
    with h5py.File(root / "d.h5") as f:
        arrays = {n: f[n][()] for n in data.ARRAYS}
    hashes = data.content_hashes(arrays)
    assert recorded == (hashes["sha256_content"], hashes["sha256_train_images"])


def test_a_job_records_where_its_time_went(setup, tmp_path):
    """Every training job writes its phases (runs.JobClock) and SLURM job id into its metrics;
    tools/overhead.py reads them back (sacct only for jobs that ran under SLURM)."""
    import json

    from pipeline_scripts.tools import overhead

    root = tmp_path / "run"
    out = root / "results" / NET / "seed1" / "dense"
    runs.run(make_job(setup[0] / "d.h5", out, network=NET, hparams=HP, log_every=1), log=print)
    with h5py.File(out / "metrics.h5") as f:
        phases = json.loads(f.attrs["job_phase_seconds"])
        assert f.attrs["slurm_job_id"] == ""
    assert list(phases)[-6:] == ["imports", "device", "data", "prepare", "first_step", "train"]
    assert all(v >= 0 for v in phases.values()) and phases["imports"] > 0
    result = overhead.summarise(root)
    (row,) = result["jobs"]
    assert row["elapsed"] is None and row["outside"] is None  # not a SLURM job
    assert row["fixed"] == pytest.approx(
        sum(phases.values()) - phases["first_step"] - phases["train"]
    )
    assert "median" in overhead.table(result)
