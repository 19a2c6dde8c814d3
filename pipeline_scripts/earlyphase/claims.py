"""The claims table: each quantitative claim of the paper beside the value this run measured.

Reads only what the pipeline already wrote - the dense runs' metrics files (Table A1 and the run's
scale) and the summaries of the paper's main network (``results/<net>/summary/{telemetry, imp,
perturb_rewind<k>, pretrain_<task>, sparse_pretrain}.h5``) - and writes one row per claim:

    id, paper_ref, network, description      which claim, where in the paper, on which network
    paper, source                            the paper's value as stated, and where it is stated
    measured, measured_value, measured_std, n   this run's value (mean +- std over seeds, n seeds)
    verdict, rule, accept_low, accept_high   the verdict and the interval behind it
    note, scale                              why a claim is not comparable; the run's scale

Verdicts (``VERDICT_RULES``): a claim is *reproduced* when the run is at the claim's scale and the
measured value lies in the row's interval [accept_low, accept_high]; *not reproduced* when it is at
that scale and outside it; *not comparable at this scale* when the run differs from the paper's
protocol in something the claim depends on (the note names every difference; the value is still
shown); *not run* when the experiment is disabled in the config or the network is not configured.

The paper states its Section 2-6 claims for ResNet-20 (Section 3: "we show ResNet-20"), so those
rows are measured on ResNet-20 when it is configured and otherwise on the run's first network,
marked not comparable. Figure 8's correlation reuses ``plots.effective_std_points`` and
``plots.pearson``: the table and the figure cannot disagree. ``docs/results-schema.md`` documents
the output files.

The code is split by concern: ``claim`` (the row, the scale, gaps), ``claims_paper`` (the paper's
rows), ``claims_beyond`` (rows beyond the paper), ``claims_io`` (writers, reader) and this module,
which assembles the table; it re-exports the names of the others, so ``claims.X`` keeps working.
"""

from __future__ import annotations

from . import claims_beyond, identity, metrics
from .claim import (  # noqa: F401 - re-exported
    _FLOAT_COLUMNS,
    COLUMNS,
    NOT_COMPARABLE,
    NOT_REPRODUCED,
    NOT_RUN,
    REPRODUCED,
    SCHEMA,
    VERDICT_RULES,
    Claim,
    Scale,
    early_phase_gaps,
    main_gaps,
    mean_std,
    protocol_gaps,
    read_scale,
    scale_label,
    scale_text,
    verdict_counts,
)
from .claims_io import read_h5, write_all, write_h5, write_html, write_tsv  # noqa: F401
from .claims_paper import (  # noqa: F401 - re-exported
    ACCURACY_TOLERANCE,
    GAP_TOLERANCE,
    MATCH_TOLERANCE,
    NO_GAIN_TOLERANCE,
    TIMELINE,
    figure1_claims,
    level_gap,
    per_seed_timelines,
    pretrain_claims,
    read_telemetry,
    table_a1,
    timeline_claims,
)
from .claims_perturb import (  # noqa: F401 - re-exported
    EFFECTIVE_MEAN_RATIO,
    EFFECTIVE_STD_TOLERANCE,
    FIGURE8_MIN_POINTS,
    P_THRESHOLD,
    R_TOLERANCE,
    effective_std_claims,
    figure8_claims,
    find_variant,
)
from .paper import (  # noqa: F401 - re-exported: the paper's numbers, as claims.TABLE_A1 etc.
    EFFECTIVE_STD,
    EFFECTIVE_STD_K,
    FIGURE1_MIN_K,
    FIGURE1_REMAINING,
    FIGURE8,
    FIGURE8_REMAINING,
    MAIN_NETWORK,
    PAPER_PROTOCOL,
    PAPER_PROTOCOL_TEXT,
    PRETRAIN_EPOCHS,
    PRETRAIN_REWIND,
    TABLE_A1,
)


# ---- the whole table ---------------------------------------------------------------------------
def main_network(networks: list[str]) -> str:
    """The network the Section 2-6 claims are measured on: ResNet-20 if configured."""
    return MAIN_NETWORK if MAIN_NETWORK in networks else networks[0]


def from_layout(layout, paths) -> dict:
    """``build_claims`` keyword arguments from the rule's (kind, key) list and its input files:
    dense (network/seed), telemetry / imp / sparse (network), perturb (k), pretrain (task)."""
    out = {
        "dense": {},
        "telemetry": None,
        "imp": None,
        "perturb": {},
        "pretrain": {},
        "sparse": None,
        "stability": None,
        "hessian": None,
    }
    for (kind, key), path in zip(layout, paths, strict=True):
        if kind == "dense":
            out["dense"].setdefault(str(key).split("/")[0], []).append(str(path))
        elif kind == "perturb":
            out["perturb"][int(key)] = str(path)
        elif kind == "pretrain":
            out["pretrain"][str(key)] = str(path)
        elif kind in ("telemetry", "imp", "sparse", "stability", "hessian"):
            out[kind] = str(path)
        else:
            raise ValueError(f"unknown claims input kind {kind!r}")
    return out


def check_dense_runs(layout, paths) -> None:
    """Every dense metrics file of the rule's inputs records the network/seed it is read for."""
    for (kind, key), path in zip(layout, paths, strict=True):
        if kind == "dense":
            net, seed = str(key).split("/")
            run = {"network": net, "seed": int(seed), "experiment": "dense", "series": "dense"}
            identity.check(path, metrics.read_attrs(path), run, identity.describe(run))


def build_claims(
    *,
    networks: list[str],
    dense: dict[str, list[str]],
    settings: dict,
    main: str | None = None,
    telemetry: str | None = None,
    imp: str | None = None,
    perturb: dict[int, str] | None = None,
    pretrain: dict[str, str] | None = None,
    sparse: str | None = None,
    stability: str | None = None,
    hessian: str | None = None,
) -> tuple[list[Claim], dict[str, Scale]]:
    """Every claim row, and each network's scale. ``dense`` maps every configured network to its
    seeds' dense metrics files; the other files are the main network's summaries (None / empty
    when that experiment is disabled; ``stability``/``hessian``: the measurements beyond the paper,
    ``claims_beyond``; ``main`` names that network, by default
    ``main_network(networks)``). ``settings``: data_source, imp_levels, figure8_level, variants
    (the configured perturbations), sparse (pretrain.sparse); ``scale_text`` reads the rest."""
    scales = {net: read_scale(net, dense[net], settings["data_source"]) for net in networks}
    main = scales.get(main or main_network(networks))
    levels = int(settings.get("imp_levels", 0))
    perturb = perturb or {}
    variants, level = settings.get("variants") or {}, int(settings.get("figure8_level", 0))
    rows = [
        *table_a1(scales),
        *timeline_claims(main, telemetry),
        *figure1_claims(main, imp, levels),
        *effective_std_claims(main, perturb, variants, level),
        *figure8_claims(main, perturb, variants, level),
        *pretrain_claims(main, pretrain or {}, sparse, settings.get("sparse") or {}, levels),
    ]
    rows += claims_beyond.stability_claims(main, stability, imp)
    rows += claims_beyond.hessian_claims(main, hessian)
    return rows, scales
