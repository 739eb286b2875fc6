"""Tests for cxr.train.metrics and train.plots."""

from __future__ import annotations

import json
import math
import sys
from itertools import product

import numpy as np
import pytest

from cxr.train.metrics import (
    _BOOT_CHUNK,
    binary_metrics,
    bootstrap_auc_ci,
    confusion_matrix,
    pointing_game,
    precision_recall_curve,
    roc_auc,
    roc_curve,
    threshold_for_sensitivity,
)

# Hand-computed example. Positives: 0.35, 0.8, 0.5; negatives: 0.1, 0.4, 0.5.
# Pairwise (pos vs neg): 0.35 -> 1 win; 0.8 -> 3 wins; 0.5 -> 2 wins + 1 tie (0.5).
# AUC = (1 + 3 + 2.5) / 9 = 6.5 / 9.
LABELS = [0, 0, 1, 1, 0, 1]
SCORES = [0.1, 0.4, 0.35, 0.8, 0.5, 0.5]
HAND_AUC = 6.5 / 9

KEYS = [
    "n",
    "auc",
    "auc_ci",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "threshold",
    "confusion_matrix",
]


def brute_force_auc(labels, scores) -> float:
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y], s[~y]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


# --------------------------------------------------------------------------- roc_auc


def test_auc_hand_example_with_ties():
    assert roc_auc(LABELS, SCORES) == pytest.approx(HAND_AUC)


def test_auc_all_tied_is_half():
    assert roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


def test_auc_perfect_and_inverted():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert roc_auc(y, s) == 1.0
    assert roc_auc(y, -s) == 0.0
    assert roc_auc(1 - y, s) == 0.0


def test_auc_accepts_bool_labels_and_matches_brute_force():
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.3
    s = np.round(rng.random(400) + 0.3 * y, 1)  # coarse rounding -> many ties
    assert roc_auc(y, s) == pytest.approx(brute_force_auc(y, s))


def test_auc_matches_trapezoid_of_roc_curve():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)
    fpr, tpr, _ = roc_curve(y, s)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    assert roc_auc(y, s) == pytest.approx(trapezoid(tpr, fpr))


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0], []])
def test_auc_single_class_is_nan(labels):
    assert math.isnan(roc_auc(labels, np.linspace(0, 1, len(labels))))


@pytest.mark.parametrize(
    ("labels", "scores"),
    [([0, 1, 2], [0.1, 0.2, 0.3]), ([0, 1], [0.1]), ([0, 1], [0.1, float("nan")])],
)
def test_invalid_inputs_raise(labels, scores):
    with pytest.raises(ValueError):
        roc_auc(labels, scores)


# --------------------------------------------------------------------------- curves


def test_roc_curve_hand_example():
    fpr, tpr, thr = roc_curve(LABELS, SCORES)
    np.testing.assert_array_equal(thr, [np.inf, 0.8, 0.5, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(tpr, np.array([0, 1, 2, 2, 3, 3]) / 3)
    np.testing.assert_allclose(fpr, np.array([0, 0, 1, 2, 2, 3]) / 3)


def test_precision_recall_curve_hand_example():
    precision, recall, thr = precision_recall_curve(LABELS, SCORES)
    np.testing.assert_array_equal(thr, [0.8, 0.5, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(precision, [1 / 1, 2 / 3, 2 / 4, 3 / 5, 3 / 6])
    np.testing.assert_allclose(recall, [1 / 3, 2 / 3, 2 / 3, 1, 1])


def test_curves_single_class_do_not_crash():
    fpr, tpr, _ = roc_curve([0, 0, 0], [0.1, 0.2, 0.3])
    assert np.isnan(tpr).all()
    assert fpr[-1] == 1.0
    precision, recall, _ = precision_recall_curve([0, 0, 0], [0.1, 0.2, 0.3])
    assert np.isnan(recall).all()
    np.testing.assert_array_equal(precision, [0, 0, 0])


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_auc_and_is_reproducible():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = rng.normal(size=500) + 1.2 * y
    auc = roc_auc(y, s)
    lo, hi = bootstrap_auc_ci(y, s, n_boot=500, seed=7)
    assert 0.0 <= lo < auc < hi <= 1.0
    assert (lo, hi) == bootstrap_auc_ci(y, s, n_boot=500, seed=7)
    assert (lo, hi) != bootstrap_auc_ci(y, s, n_boot=500, seed=8)
    # A narrower confidence level gives a narrower interval.
    lo90, hi90 = bootstrap_auc_ci(y, s, n_boot=500, alpha=0.10, seed=7)
    assert lo <= lo90 <= hi90 <= hi


def test_bootstrap_matches_naive_stratified_resampling():
    """The binned vectorised AUC equals roc_auc on the same stratified resamples."""
    y = np.array(LABELS * 5)
    s = np.array(SCORES * 5) + np.repeat(np.arange(5) * 0.01, 6)
    n_boot = _BOOT_CHUNK  # one chunk, so the draw order is easy to replay
    rng = np.random.default_rng(11)
    pos, neg = s[y == 1], s[y == 0]
    pos_idx = rng.integers(0, pos.size, size=(n_boot, pos.size))
    neg_idx = rng.integers(0, neg.size, size=(n_boot, neg.size))
    naive = [
        roc_auc(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos[pi], neg[ni]])
        for pi, ni in zip(pos_idx, neg_idx, strict=True)
    ]
    expected = np.quantile(naive, [0.025, 0.975])
    got = bootstrap_auc_ci(y, s, n_boot=n_boot, seed=11)
    np.testing.assert_allclose(got, expected)


def test_bootstrap_perfect_separation_is_degenerate_interval():
    assert bootstrap_auc_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_boot=50) == (1.0, 1.0)


def test_bootstrap_single_class_is_nan():
    lo, hi = bootstrap_auc_ci([1, 1, 1], [0.2, 0.5, 0.9])
    assert math.isnan(lo)
    assert math.isnan(hi)


def test_bootstrap_on_a_large_set_gives_a_tight_interval():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 5000)
    s = rng.random(5000) + 0.5 * y
    lo, hi = bootstrap_auc_ci(y, s, n_boot=1000)
    assert lo < roc_auc(y, s) < hi and hi - lo < 0.05


# --------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_binary_layout():
    cm = confusion_matrix([0, 0, 1, 1, 1], [0, 1, 0, 1, 1])
    np.testing.assert_array_equal(cm, [[1, 1], [1, 2]])
    assert np.issubdtype(cm.dtype, np.integer)


def test_confusion_matrix_multiclass():
    y = [0, 1, 2, 2, 1, 0, 2]
    p = [0, 2, 2, 1, 1, 0, 2]
    cm = confusion_matrix(y, p, n_classes=3)
    expected = np.zeros((3, 3), int)
    for t, q in zip(y, p, strict=True):
        expected[t, q] += 1
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == len(y)


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], n_classes=3)


# --------------------------------------------------------------------------- binary metrics


def test_binary_metrics_hand_example():
    m = binary_metrics(LABELS, SCORES, threshold=0.5, n_boot=200)
    # score >= 0.5 -> predicted positive: 0.8 (pos), 0.5 (neg), 0.5 (pos)
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    assert m["n"] == 6
    assert m["auc"] == pytest.approx(HAND_AUC)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["threshold"] == 0.5
    lo, hi = m["auc_ci"]
    assert lo <= m["auc"] <= hi


def test_binary_metrics_keys_types_and_json():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 50)
    s = rng.random(50).astype(np.float32)
    m = binary_metrics(y, s, threshold=np.float32(0.5), n_boot=100)
    assert list(m) == KEYS
    assert isinstance(m["n"], int)
    assert isinstance(m["auc_ci"], list)
    assert len(m["auc_ci"]) == 2
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)
    for key in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "threshold"):
        assert type(m[key]) is float, key
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_binary_metrics_single_class_uses_none():
    m = binary_metrics([0, 0, 0, 0], [0.1, 0.2, 0.6, 0.7], threshold=0.5)
    assert m["auc"] is None
    assert m["auc_ci"] == [None, None]
    assert m["sensitivity"] is None  # no positives
    assert m["specificity"] == 0.5
    assert m["precision"] == 0.0  # two predicted positives, both wrong
    assert m["confusion_matrix"] == [[2, 2], [0, 0]]
    json.dumps(m, allow_nan=False)


def test_binary_metrics_nothing_predicted_positive():
    m = binary_metrics([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], threshold=0.9, n_boot=50)
    assert m["precision"] is None
    assert m["sensitivity"] == 0.0
    assert m["specificity"] == 1.0
    assert m["f1"] == 0.0
    json.dumps(m, allow_nan=False)


def test_binary_metrics_all_predicted_positive():
    m = binary_metrics([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], threshold=0.0, n_boot=50)
    assert m["sensitivity"] == 1.0
    assert m["specificity"] == 0.0
    assert m["precision"] == 0.5
    assert m["confusion_matrix"] == [[0, 2], [0, 2]]


def test_binary_metrics_empty_input():
    m = binary_metrics([], [], threshold=0.5)
    assert m["n"] == 0
    assert m["auc"] is None
    assert m["accuracy"] is None
    assert m["f1"] is None
    json.dumps(m, allow_nan=False)


# --------------------------------------------------------------------------- thresholds


def sensitivity_at(y, s, t) -> float:
    y = np.asarray(y, dtype=bool)
    return float((np.asarray(s)[y] >= t).mean())


def test_threshold_hand_example():
    assert threshold_for_sensitivity(LABELS, SCORES, target=0.95) == 0.35
    assert threshold_for_sensitivity(LABELS, SCORES, target=0.6) == 0.5
    assert threshold_for_sensitivity(LABELS, SCORES, target=1 / 3) == 0.8


@pytest.mark.parametrize(("seed", "target"), list(product(range(5), [0.5, 0.7, 0.9, 0.95, 1.0])))
def test_threshold_meets_target_and_is_highest(seed, target):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 200))
    y = rng.integers(0, 2, n)
    y[0] = 1
    s = np.round(rng.random(n) + 0.4 * y, 2)  # ties included
    t = threshold_for_sensitivity(y, s, target=target)
    assert sensitivity_at(y, s, t) >= target
    # Any strictly higher threshold misses the target.
    assert sensitivity_at(y, s, np.nextafter(t, np.inf)) < target
    # Highest threshold -> best specificity among thresholds meeting the target.
    candidates = [c for c in np.unique(s) if sensitivity_at(y, s, c) >= target]
    assert t == max(candidates)


def test_threshold_float_target_edge():
    # 0.7 * 10 == 7.000000000000001 in floating point; 7 of 10 positives must be enough.
    y = np.ones(10, dtype=int)
    s = np.arange(10) / 10
    t = threshold_for_sensitivity(y, s, target=0.7)
    assert t == pytest.approx(0.3)
    assert sensitivity_at(y, s, t) >= 0.7


def test_threshold_no_positives_raises():
    with pytest.raises(ValueError, match="no positive"):
        threshold_for_sensitivity([0, 0, 0], [0.1, 0.2, 0.3])


@pytest.mark.parametrize("target", [0.0, -0.1, 1.5])
def test_threshold_invalid_target_raises(target):
    with pytest.raises(ValueError):
        threshold_for_sensitivity(LABELS, SCORES, target=target)


# --------------------------------------------------------------------------- plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


def assert_no_open_pyplot_figures() -> None:
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        assert plt.get_fignums() == []


def test_plots_write_png_files(tmp_path):
    pytest.importorskip("matplotlib")
    from cxr.train.plots import (
        plot_confusion_matrix,
        plot_precision_recall,
        plot_roc,
        plot_training_curves,
    )

    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 200)
    s = rng.random(200) * 0.7 + 0.3 * y

    out = plot_roc(y, s, tmp_path / "roc.png", title="ROC test")
    assert out == tmp_path / "roc.png"
    assert_png(out)

    assert_png(plot_precision_recall(y, s, tmp_path / "pr.png"))

    cm = confusion_matrix(y, s >= 0.5)
    assert_png(plot_confusion_matrix(cm, ["normal", "pneumonia"], tmp_path / "sub" / "cm.png"))

    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_auc": 0.7 + 0.05 * e}
        for e in range(1, 5)
    ]
    history[0]["val_auc"] = None  # tolerated
    assert_png(plot_training_curves(history, tmp_path / "curves.png"))
    assert_no_open_pyplot_figures()


def test_plots_handle_single_class(tmp_path):
    pytest.importorskip("matplotlib")
    from cxr.train.plots import plot_precision_recall, plot_roc

    assert_png(plot_roc([1, 1, 1], [0.2, 0.5, 0.9], tmp_path / "roc.png"))
    assert_png(plot_precision_recall([0, 0, 0], [0.2, 0.5, 0.9], tmp_path / "pr.png"))


def test_plot_confusion_matrix_shape_mismatch(tmp_path):
    pytest.importorskip("matplotlib")
    from cxr.train.plots import plot_confusion_matrix

    with pytest.raises(ValueError):
        plot_confusion_matrix(np.eye(3, dtype=int), ["a", "b"], tmp_path / "cm.png")


def test_pointing_game_counts_peaks_within_the_tolerance_of_a_finding():
    findings = [[(0.3, 0.5, 0.1)], [(0.3, 0.5, 0.1), (0.7, 0.5, 0.1)], [(0.7, 0.5, 0.1)]]
    peaks = [(0.3, 0.62), (0.7, 0.45), (0.3, 0.5)]  # inside r + tolerance, inside, wrong lung
    game = pointing_game(peaks, findings, tolerance=0.05)
    assert game["pointing_game"] == pytest.approx(2 / 3)
    assert game["pointing_game_images"] == 3
    # A uniformly random point: the share of the image within r + tolerance of a finding.
    one, two = math.pi * 0.15**2, 2 * math.pi * 0.15**2
    assert game["pointing_game_chance"] == pytest.approx((one + two + one) / 3, rel=0.03)
    # The best fixed point: (0.3, 0.5) or (0.7, 0.5) hits two of the three.
    assert game["pointing_game_prior"] == pytest.approx(2 / 3)
    assert pointing_game(peaks[:1], findings[:1], tolerance=0.0)["pointing_game"] == 0.0


def test_pointing_game_of_nothing_and_mismatched_inputs():
    assert pointing_game([], [])["pointing_game"] is None
    with pytest.raises(ValueError, match="2 peaks for 1 images"):
        pointing_game([(0.5, 0.5), (0.1, 0.1)], [[(0.5, 0.5, 0.1)]])
