"""Temperature scaling and the expected calibration error (qieemo_lobes.calibration), on
synthetic sets whose calibration is known by construction."""

from __future__ import annotations

import json

import pytest
import torch

from qieemo_lobes.calibration import (
    T_MAX,
    T_MIN,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from qieemo_lobes.files import write_json_atomic


def _calibrated_set(n: int, n_classes: int, scale: float, seed: int):
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, n_classes, generator=generator)
    labels = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
    return logits, labels


def test_over_confident_model_gets_t_above_one_and_a_lower_ece():
    logits, labels = _calibrated_set(3000, 6, scale=1.2, seed=0)
    over = 2.5 * logits  # the same ranking, too confident
    temperature = fit_temperature(over, labels)
    assert temperature > 1.0
    assert temperature == pytest.approx(2.5, rel=0.15)
    before = expected_calibration_error(over, labels)
    after = expected_calibration_error(over, labels, temperature)
    assert after < before / 3
    assert negative_log_likelihood(over, labels, temperature) < negative_log_likelihood(
        over, labels
    )


def test_under_confident_model_gets_t_below_one():
    logits, labels = _calibrated_set(3000, 4, scale=2.0, seed=1)
    temperature = fit_temperature(logits / 2.0, labels)
    assert temperature < 1.0 and temperature == pytest.approx(0.5, rel=0.15)


@pytest.mark.parametrize("seed", [2, 3])
def test_calibrated_model_keeps_t_one(seed):
    logits, labels = _calibrated_set(5000, 5, scale=1.5, seed=seed)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.08)
    assert expected_calibration_error(logits, labels) < 3.0


def test_log_probabilities_give_the_same_temperature_and_labels():
    logits, labels = _calibrated_set(500, 4, scale=3.0, seed=4)
    log_probs = torch.log_softmax(logits, dim=-1)
    temperature = fit_temperature(logits, labels)
    assert fit_temperature(log_probs, labels) == pytest.approx(temperature, abs=1e-5)
    scaled = torch.softmax(log_probs / temperature, dim=-1)
    assert torch.equal(scaled.argmax(-1), logits.argmax(-1))  # T never changes a label


def test_ece_by_hand():
    # confidences 0.95 (right), 0.95 (wrong), 0.6 (right): bins 15 and 9 of 15.
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1])
    expected = 100 * (2 / 3 * abs(0.5 - 0.95) + 1 / 3 * abs(1.0 - 0.6))
    assert expected_calibration_error(probs.log(), labels) == pytest.approx(expected)


def test_perfectly_separated_validation_stops_at_the_lower_bound():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [3.0, 1.0]])
    assert fit_temperature(logits, torch.tensor([0, 1, 0])) == pytest.approx(T_MIN)
    assert fit_temperature(-logits, torch.tensor([0, 1, 0])) == pytest.approx(T_MAX)


def test_report_fields_and_empty_validation(tmp_path):
    valid = _calibrated_set(400, 3, scale=1.0, seed=5)
    test = _calibrated_set(200, 3, scale=1.0, seed=6)
    report = calibration_report((3 * valid[0], valid[1]), (3 * test[0], test[1]))
    assert report["temperature"] > 1 and report["fitted"] is True
    assert (report["n_valid"], report["n_test"], report["n_bins"]) == (400, 200, 15)
    for split in ("valid", "test"):
        assert report[f"ece_{split}_after"] < report[f"ece_{split}_before"]
        assert report[f"nll_{split}_after"] < report[f"nll_{split}_before"]

    empty = (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    report = calibration_report(empty, None)
    assert report["temperature"] == 1.0 and report["fitted"] is False
    assert "validation set of 0 utterances" in report["note"]
    assert report["n_valid"] == report["n_test"] == 0
    assert all(report[k] is None for k in report if k.startswith(("ece_", "nll_")))
    write_json_atomic(report, tmp_path / "calibration.json")  # no NaN: writable
    assert json.loads((tmp_path / "calibration.json").read_text())["ece_test_after"] is None

    small = (valid[0][:49], valid[1][:49])  # fewer than MIN_VALID: measured, not fitted
    report = calibration_report(small, None)
    assert report["temperature"] == 1.0 and report["fitted"] is False
    assert "49 utterances (< 50)" in report["note"]
    assert report["ece_valid_after"] == report["ece_valid_before"] is not None


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no utterance"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="one label each"):
        expected_calibration_error(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
