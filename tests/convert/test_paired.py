"""Paired statistics of the gate on hand-made score arrays with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr.convert import gate, paired
from cxr.train.metrics import roc_auc

Z2 = 1.959963984540054**2


def outcomes(n: int, both: int, ref_only: int, cand_only: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired 0/1 outcomes with the given cell counts (the rest: neither)."""
    ref = np.zeros(n, bool)
    cand = np.zeros(n, bool)
    ref[:both] = cand[:both] = True
    ref[both : both + ref_only] = True
    cand[both + ref_only : both + ref_only + cand_only] = True
    return ref, cand


@pytest.mark.parametrize(("n", "both"), [(40, 40), (304, 290), (874, 0), (1000, 500)])
def test_no_discordant_pair_gives_the_closed_form_interval(n: int, both: int) -> None:
    # Tango's interval with no discordant pair is +-z^2 / (n + z^2), whatever the agreement.
    diff, lower, upper = paired.paired_proportion_diff(*outcomes(n, both, 0, 0))
    assert diff == 0.0
    assert lower == pytest.approx(-Z2 / (n + Z2), abs=1e-9)
    assert upper == pytest.approx(Z2 / (n + Z2), abs=1e-9)
    assert paired.best_case_loss_bound(n) == pytest.approx(Z2 / (n + Z2))


def test_interval_approaches_wald_for_many_pairs() -> None:
    n, lost, gained = 20_000, 600, 400  # large: the score interval ~ the Wald interval
    diff, lower, upper = paired.paired_proportion_diff(*outcomes(n, 5000, lost, gained))
    assert diff == pytest.approx((gained - lost) / n)
    se = math.sqrt(lost + gained - (lost - gained) ** 2 / n) / n
    assert lower == pytest.approx(diff - 1.959964 * se, abs=2e-4)
    assert upper == pytest.approx(diff + 1.959964 * se, abs=2e-4)


def test_swapping_the_models_mirrors_the_interval() -> None:
    ref, cand = outcomes(304, 280, 6, 1)
    diff, lower, upper = paired.paired_proportion_diff(ref, cand)
    back = paired.paired_proportion_diff(cand, ref)
    assert back == pytest.approx((-diff, -upper, -lower))
    assert diff == pytest.approx(-5 / 304) and lower < diff < upper


def test_paired_proportions_refuse_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        paired.paired_proportion_diff(np.ones(3, bool), np.ones(4, bool))


def brute_force_delong_variance(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """DeLong's variance of AUC(b) - AUC(a) from the kernel psi(x, y), pair by pair."""

    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos, neg = s[y], s[~y]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (a10, a01), (b10, b01) = components(a), components(b)
    d10, d01 = b10 - a10, b01 - a01
    return float(np.var(d10, ddof=1) / y.sum() + np.var(d01, ddof=1) / (~y).sum())


def test_delong_difference_and_interval_match_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(60, bool), np.ones(45, bool)]
    a = y + rng.normal(0, 0.8, y.size)
    b = np.round(a + rng.normal(0, 0.3, y.size), 1)  # rounded: ties inside b
    diff, lower, upper = paired.delong_auc_diff(y, a, b)
    assert diff == pytest.approx(roc_auc(y, b) - roc_auc(y, a))
    half = 1.959964 * math.sqrt(brute_force_delong_variance(y, a, b))
    assert (lower, upper) == pytest.approx((diff - half, diff + half), abs=1e-6)


def test_delong_of_identical_scores_is_zero_width_and_undefined_without_a_class() -> None:
    y = np.r_[np.zeros(10), np.ones(10)]
    s = np.linspace(0, 1, 20)
    assert paired.delong_auc_diff(y, s, s) == (0.0, 0.0, 0.0)
    assert all(math.isnan(v) for v in paired.delong_auc_diff(np.ones(20), s, s))


def test_compare_counts_flips_both_ways_and_exact_rates() -> None:
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    fp32 = np.array([0.9, 0.8, 0.6, 0.2, 0.1, 0.3, 0.7, 0.4])
    variant = np.array([0.9, 0.4, 0.6, 0.6, 0.1, 0.6, 0.7, 0.4])
    result = paired.compare(labels, fp32, variant, threshold=0.5)
    # urgent -> routine: image 1; routine -> urgent: images 3 and 5
    assert (result.flips_urgent_to_routine, result.flips_routine_to_urgent) == (1, 2)
    assert result.sensitivity.fp32 == 0.75 and result.sensitivity.variant == 0.75
    assert result.specificity.fp32 == 0.75 and result.specificity.variant == 0.5
    assert result.specificity.diff == -0.25 and result.sensitivity.diff == 0.0
    assert result.auc.diff == pytest.approx(roc_auc(labels, variant) - roc_auc(labels, fp32))
    assert result.max_abs_score_diff == pytest.approx(0.4)
    assert (result.n, result.positives, result.negatives) == (8, 4, 4)


def scored_set(n_pos: int, n_neg: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and FP32 scores: positives in 0.5..1.0, negatives in 0.0..0.5, ten of each class
    on the wrong side so AUC is below 1."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_pos, np.int64), np.zeros(n_neg, np.int64)]
    scores = np.r_[rng.uniform(0.5, 1.0, n_pos), rng.uniform(0.0, 0.5, n_neg)]
    scores[:10], scores[n_pos : n_pos + 10] = 0.3, 0.7
    return labels, scores


def test_assess_passes_identical_scores_on_a_large_set() -> None:
    labels, fp32 = scored_set(800, 400)
    result = gate.assess(labels, {"clean": fp32}, {"clean": fp32.copy()}, 0.5)
    assert result.passed and result.worst < 1.0 and result.refusals == []


def test_assess_refuses_on_the_upper_bound_not_only_the_point_estimate() -> None:
    labels, fp32 = scored_set(800, 400)
    variant = fp32.copy()
    negatives = np.flatnonzero((labels == 0) & (fp32 < 0.5))
    variant[negatives[:4]] = 0.6  # 4 of 400 normals now urgent: point loss 0.01 < limit 0.02
    result = gate.assess(labels, {"clean": fp32}, {"clean": variant}, 0.5)
    spec = result.results["clean"].specificity
    assert -spec.diff == pytest.approx(0.01) and -spec.diff < gate.SPECIFICITY_DROP_LIMIT
    assert -spec.lower > gate.SPECIFICITY_DROP_LIMIT  # the bound exceeds the limit
    assert not result.passed
    assert [r.split(":")[1].split()[0] for r in result.refusals] == ["specificity"]
    assert result.results["clean"].flips_routine_to_urgent == 4


def test_assess_names_the_condition_that_fails() -> None:
    labels, fp32 = scored_set(800, 400)
    shifted = fp32.copy()
    shifted[np.flatnonzero(labels == 1)[10:30]] = 0.45  # 20 positives missed under one shift
    result = gate.assess(
        labels, {"clean": fp32, "noise": fp32}, {"clean": fp32, "noise": shifted}, 0.5
    )
    assert result.refusals and all(r.startswith("noise: ") for r in result.refusals)
    assert any("sensitivity" in r for r in result.refusals)


def test_adequacy_says_when_a_set_is_too_small_or_too_easy() -> None:
    labels, fp32 = scored_set(100, 400)
    notes = gate.adequacy(labels, {"clean": fp32}, 0.5)
    assert any("too small" in n and "sensitivity" in n for n in notes), notes
    separated = np.where(np.r_[np.ones(800), np.zeros(400)] == 1, 0.9, 0.1)
    easy = gate.adequacy(np.r_[np.ones(800), np.zeros(400)], {"clean": separated}, 0.5)
    assert any("too easy" in n and "AUC" in n for n in easy)
    assert any("no clean image scores within" in n for n in easy)
    labels, fp32 = scored_set(800, 400)
    assert gate.adequacy(labels, {"clean": fp32}, 0.5) == []
