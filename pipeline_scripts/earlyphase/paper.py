"""The paper's numbers (Frankle, Schwab & Morcos, ICLR 2020), in one place: the protocol, Table A1,
the effective standard deviations of Section 5 and Figure 8's correlations, and the points the
claims are stated at. The claims table (``claims``), the effective-std report
(``effective_std``) and anything else that compares with the paper read them from here."""

from __future__ import annotations

MAIN_NETWORK = "resnet20"  # Section 3: "Throughout the main body of the paper, we show ResNet-20"
PAPER_PROTOCOL = {  # Section 3 and Appendix A
    "seeds": 5,
    "epochs": 160,
    "n_train": 50_000,
    "n_test": 10_000,
    "lr": 0.1,
    "milestones": (80.0, 120.0),
    "levels": 14,
}
PAPER_PROTOCOL_TEXT = (
    "Paper (Section 3, Appendix A): CIFAR-10 with 50,000 training and 10,000 test images, "
    "160 epochs at batch 128 (VGG-13: 64), lr 0.1 dropped 10x at epochs 80 and 120, 5 seeds, "
    "IMP to 14 levels (4.4% of weights remaining), perturbations at k = 500 and 2000."
)
# Appendix A, Table A1: test accuracy (%, mean +- std over 5 seeds) and batch size.
TABLE_A1 = {
    "resnet20": (91.5, 0.2, 128),
    "resnet56": (93.0, 0.1, 128),
    "resnet18": (86.8, 0.3, 128),
    "vgg13": (93.5, 0.1, 64),
    "wrn16_8": (94.8, 0.1, 128),
}

# Section 3 / Figure 1: sub-networks at 16.8% of weights remaining match from k = 500 on.
FIGURE1_REMAINING = 16.8  # % of weights remaining (level 8 at 20% per level)
FIGURE1_MIN_K = 500

# Section 5: effective std (population std of w_perturbed - w_k) of perturbations at k = 500.
# (claim suffix, the perturbation as a config entry, paper value, where, description)
EFFECTIVE_STD_K = 500
EFFECTIVE_STD = [
    ("signs_k_mags_0", {"kind": "sign_magnitude", "signs": "k", "magnitudes": "0"}, 0.042,
     "Section 5.1", "signs at k, magnitudes at initialisation"),
    ("signs_0_mags_k", {"kind": "sign_magnitude", "signs": "0", "magnitudes": "k"}, 0.033,
     "Section 5.1", "signs at initialisation, magnitudes at k"),
    ("shuffle_filter", {"kind": "shuffle", "scope": "filter"}, 0.092,
     "Section 5.2", "weights shuffled within filters"),
    ("shuffle_layer", {"kind": "shuffle", "scope": "layer"}, 0.143,
     "Section 5.2", "weights shuffled within layers"),
    ("shuffle_network", {"kind": "shuffle", "scope": "network"}, 0.144,
     "Section 5.2", "weights shuffled globally"),
    ("samesign_shuffle_filter", {"kind": "shuffle", "scope": "filter", "same_sign": True}, 0.049,
     "Section 5.2 (Figure 6)", "weights shuffled within filters among the same sign"),
    ("init_signs_shuffle_layer",
     {"kind": "shuffle_magnitudes_keep_signs", "scope": "layer", "signs": "0"}, 0.087,
     "Section 5.2 (Figure 6)", "initial signs, magnitudes shuffled within layers"),
]  # fmt: skip

# Section 5.3 / Figure 8: Pearson r and p of effective std vs accuracy at 26.2% remaining.
FIGURE8 = {500: (-0.672, 0.008), 2000: (-0.726, 0.003)}
FIGURE8_REMAINING = 26.2

# Section 6: pre-training
PRETRAIN_EPOCHS = 40.0  # Section 6: the headline pre-training duration
PRETRAIN_REWIND = 500  # ... compared with IMP rewound to iteration 500
