"""Tests for qieemo_lobes.stats: the comparison statistics on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from qieemo_lobes import stats

CLASSES = np.array(["angry", "happy", "neutral", "sad"])


def _corpus(n_utts: int = 400, n_speakers: int = 10, seed: int = 0):
    """Balanced labels, speakers of equal size."""
    rng = np.random.default_rng(seed)
    y = CLASSES[np.arange(n_utts) % len(CLASSES)]
    rng.shuffle(y)
    speakers = np.array([f"spk{i % n_speakers:02d}" for i in range(n_utts)])
    return y, speakers


def _with_errors(y: np.ndarray, correct: np.ndarray, seed: int) -> np.ndarray:
    """Predictions that are right where ``correct`` and another (random) class elsewhere."""
    rng = np.random.default_rng(seed)
    pred = y.copy()
    for i in np.flatnonzero(~correct):
        pred[i] = rng.choice([c for c in CLASSES if c != y[i]])
    return pred


def _system(y: np.ndarray, accuracy: float, seed: int, exact: bool = False) -> np.ndarray:
    """A system right on each utterance independently with probability ``accuracy``.

    ``exact``: right on exactly ``round(accuracy * len(y))`` utterances drawn at random.
    """
    rng = np.random.default_rng(seed)
    if exact:
        correct = np.zeros(len(y), dtype=bool)
        correct[rng.choice(len(y), round(accuracy * len(y)), replace=False)] = True
    else:
        correct = rng.random(len(y)) < accuracy
    return _with_errors(y, correct, seed + 1000)


# ------------------------------------------------------------------------------------------ UA


def test_unweighted_accuracy_is_balanced_accuracy() -> None:
    y, _ = _corpus(203)
    pred = _system(y, 0.7, seed=3)
    assert stats.unweighted_accuracy(y, pred) == pytest.approx(
        100 * balanced_accuracy_score(y, pred)
    )
    # Integer labels; a predicted class absent from the truth does not enter the mean.
    assert stats.unweighted_accuracy([0, 0, 1, 1], [0, 2, 1, 1]) == 75.0
    assert stats.unweighted_accuracy([0, 0, 1, 1], [0, 2, 1, 1], labels=[0]) == 50.0


# ---------------------------------------------------------------------- paired comparisons


def test_paired_tests_find_a_real_difference() -> None:
    # b right on 90 % and a on 60 % of 400 utterances over 10 speakers.
    y, speakers = _corpus()
    pred_a, pred_b = _system(y, 0.6, seed=1), _system(y, 0.9, seed=2)
    boot = stats.paired_bootstrap(y, pred_a, pred_b, speakers, n_boot=2000, seed=0)
    assert boot["delta_ua"] == pytest.approx(
        stats.unweighted_accuracy(y, pred_b) - stats.unweighted_accuracy(y, pred_a)
    )
    assert 20 < boot["delta_ua"] < 40
    assert boot["ci_low"] > 0 and boot["ci_low"] < boot["delta_ua"] < boot["ci_high"]
    assert boot["p_value"] < 0.01
    assert boot["p_value"] == pytest.approx(1 / 2001)  # the floor: no bootstrap delta <= 0
    exact = stats.mcnemar(y, pred_a, pred_b)
    assert exact["c"] > exact["b"] and exact["statistic"] == exact["b"]
    assert exact["p_value"] < 0.01
    # The sign follows the order: a against b is the opposite difference.
    swapped = stats.paired_bootstrap(y, pred_b, pred_a, speakers, n_boot=2000, seed=0)
    assert swapped["delta_ua"] == pytest.approx(-boot["delta_ua"])
    assert swapped["ci_high"] == pytest.approx(-boot["ci_low"])


def test_paired_tests_find_no_difference_between_equal_systems() -> None:
    # Two systems with the same error rate (exactly 100 errors of 400 each), the errors drawn
    # independently (fixed seeds).
    y, speakers = _corpus()
    pred_a, pred_b = _system(y, 0.75, seed=11, exact=True), _system(y, 0.75, seed=12, exact=True)
    boot = stats.paired_bootstrap(y, pred_a, pred_b, speakers, n_boot=2000, seed=0)
    assert boot["ci_low"] < 0 < boot["ci_high"]
    assert boot["p_value"] > 0.05
    assert stats.mcnemar(y, pred_a, pred_b)["p_value"] > 0.05
    # Identical systems: no discordant pair, every bootstrap delta is 0.
    same = stats.paired_bootstrap(y, pred_a, pred_a, speakers, n_boot=200)
    assert (same["delta_ua"], same["ci_low"], same["ci_high"], same["p_value"]) == (0, 0, 0, 1)
    assert stats.mcnemar(y, pred_a, pred_a) == {"b": 0, "c": 0, "statistic": 0, "p_value": 1.0}


def test_false_positive_rate_near_the_level_under_no_difference() -> None:
    # 200 pairs of systems right with the same probability: about 5 % of p-values below 0.05.
    # Measured: McNemar 5.5 %, the speaker bootstrap 9 % (a percentile bootstrap over only 10
    # clusters is somewhat liberal, as documented in paired_bootstrap).
    y, speakers = _corpus()
    hits = np.zeros(2)
    for k in range(200):
        pred_a, pred_b = _system(y, 0.75, seed=2 * k), _system(y, 0.75, seed=2 * k + 1)
        boot = stats.paired_bootstrap(y, pred_a, pred_b, speakers, n_boot=400, seed=k)
        hits += [boot["p_value"] < 0.05, stats.mcnemar(y, pred_a, pred_b)["p_value"] < 0.05]
    assert hits[0] / 200 <= 0.12 and hits[1] / 200 <= 0.08, hits


def test_mcnemar_exact_binomial_by_hand() -> None:
    # b = 1, c = 5: two-sided exact p = 2 * P(X <= 1 | n=6, 1/2) = 2 * 7 / 64.
    truth = ["x"] * 8
    pred_a = ["x", "y", "y", "y", "y", "y", "x", "x"]
    pred_b = ["y", "x", "x", "x", "x", "x", "x", "y"]
    out = stats.mcnemar(truth, pred_a, pred_b)
    assert (out["b"], out["c"]) == (2, 5)
    assert out["p_value"] == pytest.approx(2 * (1 + 7 + 21) / 128)


def test_wilcoxon_folds_with_and_without_a_shift() -> None:
    rng = np.random.default_rng(5)
    ua_a = 60 + rng.normal(0, 3, 10)
    shifted = stats.wilcoxon_folds(ua_a, ua_a + 4 + rng.normal(0, 1, 10))
    assert shifted["n"] == 10 and 2 < shifted["delta_mean"] < 6
    assert shifted["p_value"] == pytest.approx(2 / 2**10)  # every fold better: exact minimum
    assert shifted["statistic"] == 0
    noise = stats.wilcoxon_folds(ua_a, ua_a + rng.normal(0, 3, 10))
    assert noise["p_value"] > 0.05
    # A tied fold is kept (zsplit), and every fold tied means no evidence at all.
    tied = stats.wilcoxon_folds([60, 61, 62, 63, 64, 65], [60, 66, 67, 68, 69, 70])
    assert tied["p_value"] > 2 / 2**6 and tied["n"] == 6
    assert stats.wilcoxon_folds([60, 61], [60, 61])["p_value"] == 1.0
    # Five folds cannot reach 0.05, however consistent the gain.
    assert stats.wilcoxon_folds([1, 2, 3, 4, 5], [11, 12, 13, 14, 15])["p_value"] == 0.0625


# --------------------------------------------------------------------- speaker bootstrap


def _speaker_system(n_speakers: int, true_ua: float, seed: int):
    """Utterances of speakers whose own accuracy varies around ``true_ua`` (percent)."""
    y, speakers = _corpus(40 * n_speakers, n_speakers, seed)
    rng = np.random.default_rng(seed + 1)
    skill = {s: true_ua / 100 + rng.uniform(-0.1, 0.1) for s in np.unique(speakers)}
    correct = rng.random(len(y)) < np.array([skill[s] for s in speakers])
    return y, _with_errors(y, correct, seed + 2), speakers


def test_speaker_bootstrap_ci_covers_the_truth_and_shrinks_with_more_speakers() -> None:
    y, pred, spk = _speaker_system(8, 70.0, seed=0)
    ua, low, high = stats.speaker_bootstrap_ci(y, pred, spk, n_boot=2000, seed=0)
    assert ua == pytest.approx(stats.unweighted_accuracy(y, pred))
    assert low < ua < high and low < 70.0 < high
    y8, pred8, spk8 = _speaker_system(64, 70.0, seed=0)
    ua8, low8, high8 = stats.speaker_bootstrap_ci(y8, pred8, spk8, n_boot=2000, seed=0)
    assert low8 < 70.0 < high8
    assert high8 - low8 < 0.6 * (high - low)  # 8 times the speakers: about sqrt(8) narrower
    # Resampling utterances (one speaker per utterance) would give a narrower, wrong interval.
    per_utt = stats.speaker_bootstrap_ci(y, pred, np.arange(len(y)), n_boot=2000, seed=0)
    assert per_utt[2] - per_utt[1] < high - low
    wider = stats.speaker_bootstrap_ci(y, pred, spk, n_boot=2000, seed=0, level=0.99)
    assert wider[1] < low and wider[2] > high


def test_speaker_bootstrap_ci_coverage() -> None:
    # 100 corpora of 20 speakers whose accuracy varies around 70 %: about 95 % of the
    # intervals hold 70 (96 measured; the cluster bootstrap undercovers with fewer speakers).
    covered = 0
    for seed in range(100):
        y, pred, spk = _speaker_system(20, 70.0, seed)
        _, low, high = stats.speaker_bootstrap_ci(y, pred, spk, n_boot=1000, seed=seed)
        covered += low < 70.0 < high
    assert covered >= 88


def test_same_seed_same_result_other_seed_other_draws() -> None:
    y, speakers = _corpus()
    pred_a, pred_b = _system(y, 0.7, seed=1), _system(y, 0.72, seed=2)
    first = stats.paired_bootstrap(y, pred_a, pred_b, speakers, n_boot=500, seed=7)
    assert stats.paired_bootstrap(y, pred_a, pred_b, speakers, n_boot=500, seed=7) == first
    other = stats.paired_bootstrap(y, pred_a, pred_b, speakers, n_boot=500, seed=8)
    assert other["delta_ua"] == first["delta_ua"] and other["ci_low"] != first["ci_low"]
    ci = stats.speaker_bootstrap_ci(y, pred_a, speakers, n_boot=500, seed=3)
    assert stats.speaker_bootstrap_ci(y, pred_a, speakers, n_boot=500, seed=3) == ci


# ---------------------------------------------------------------------------------- Holm


def test_holm_matches_a_hand_computation() -> None:
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04).
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([0.02]) == [0.02]
    assert stats.holm([0.01, 0.01]) == [0.02, 0.02]


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stats.unweighted_accuracy([], []), "empty input"),
        (lambda: stats.unweighted_accuracy(["a", "b"], ["a"]), "different lengths"),
        (lambda: stats.mcnemar(["a"], ["a"], ["a", "b"]), "different lengths"),
        (lambda: stats.paired_bootstrap(["a"] * 3, ["a"] * 3, ["a"] * 3, ["s"] * 2), "lengths"),
        (lambda: stats.paired_bootstrap(["a"], ["a"], ["b"], ["s"]), "at least 2"),
        (lambda: stats.speaker_bootstrap_ci(["a"], ["a"], []), "empty input"),
        (lambda: stats.wilcoxon_folds([1, 2], [1, 2, 3]), "different lengths"),
        (lambda: stats.holm([]), "empty input"),
        (lambda: stats.holm([0.1, 1.5]), "[0, 1]"),
        (lambda: stats.unweighted_accuracy(["a"], ["a"], labels=["b"]), "none of the labels"),
    ],
)
def test_errors_are_one_line(call, message: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)
    assert "\n" not in str(info.value)
