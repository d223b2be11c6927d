"""Calibrated confidence: temperature scaling and the expected calibration error (ECE).

A classifier's confidence (its top probability) is *calibrated* when, of the predictions made
with confidence about ``p``, a fraction ``p`` is right; only then can users threshold it.
Networks trained with cross-entropy are usually over-confident. Temperature scaling (Guo et al.,
"On Calibration of Modern Neural Networks", ICML 2017) divides the logits by one number
``T > 0``, fitted on held-out data by minimising the negative log-likelihood (NLL): ``T > 1``
softens over-confident probabilities, ``T < 1`` sharpens under-confident ones, and the argmax
(hence accuracy, UA, every label) is unchanged.

- :func:`fit_temperature`: the ``T`` that minimises the NLL of ``softmax(logits / T)``
  (bounded golden-section search on ``log T``; the NLL is convex in ``1 / T``, so the search
  finds its minimum within :data:`T_MIN`..:data:`T_MAX`).
- :func:`expected_calibration_error`: top-label ECE in percent over equal-width confidence bins
  (15 by default): the bins' size-weighted mean of ``|accuracy - mean confidence|``.
- :func:`negative_log_likelihood`: the mean NLL at a temperature.
- :func:`calibration_report`: all of it for a validation set (where ``T`` is fitted) and, when
  there is one, a test set: the content of a recipe run's ``calibration.json``.

Every function takes logits or log-probabilities alike (``softmax`` does not change when a
constant is added to a row, so ``log_softmax(log_softmax(z) / T) == log_softmax(z / T)``).

Example
-------
A toy over-confident classifier: its logits are 3 times what the labels were drawn with.

>>> generator = torch.Generator().manual_seed(0)
>>> true_logits = 1.5 * torch.randn(4000, 4, generator=generator)
>>> labels = torch.multinomial(true_logits.softmax(-1), 1, generator=generator).squeeze(1)
>>> logits = 3.0 * true_logits
>>> temperature = fit_temperature(logits, labels)
>>> 2.7 < temperature < 3.3  # about the factor of 3
True
>>> before = expected_calibration_error(logits, labels)
>>> after = expected_calibration_error(logits, labels, temperature)
>>> before > 10.0 and after < 3.0  # percent
True
>>> negative_log_likelihood(logits, labels, temperature) < negative_log_likelihood(logits, labels)
True
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "N_BINS",
    "T_MAX",
    "T_MIN",
    "calibration_report",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
]

N_BINS = 15  # equal-width confidence bins of the ECE (Guo et al. 2017)
# Fewest validation utterances a temperature is fitted on (calibration_report).
MIN_VALID = 50
# The range the temperature is searched in: a validation set the model separates perfectly has
# its optimum at T -> 0 (ever more confident), which the lower bound stops.
T_MIN = 0.05
T_MAX = 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _checked(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    labels = torch.as_tensor(labels).detach().to("cpu").long().reshape(-1)
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"logits must be (n, n_classes) with one label each, got {tuple(logits.shape)} "
            f"and {labels.shape[0]} labels"
        )
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits hold NaN or infinite values")
    return logits, labels


def negative_log_likelihood(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> float:
    """Mean negative log-likelihood (nats) of ``labels`` under ``softmax(logits / temperature)``.

    Arguments
    ---------
    logits : torch.Tensor
        ``(n, n_classes)`` logits or log-probabilities.
    labels : torch.Tensor
        ``(n,)`` class indices.
    temperature : float
        ``T > 0``.

    Returns
    -------
    float

    Example
    -------
    >>> round(negative_log_likelihood(torch.tensor([[0.0, 0.0]]), torch.tensor([1])), 4)
    0.6931
    """
    logits, labels = _checked(logits, labels)
    return float(torch.nn.functional.cross_entropy(logits / temperature, labels))


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, t_min: float = T_MIN, t_max: float = T_MAX
) -> float:
    """The temperature ``T`` in ``[t_min, t_max]`` that minimises the NLL of ``labels``.

    Fit it on held-out data (never on the test set): a validation set of speakers the model was
    not trained on.

    Arguments
    ---------
    logits : torch.Tensor
        ``(n, n_classes)`` logits or log-probabilities, ``n >= 1``.
    labels : torch.Tensor
        ``(n,)`` class indices.
    t_min, t_max : float
        The search range.

    Returns
    -------
    float
        ``T``, rounded to 6 decimals; divide the logits by it.

    Raises
    ------
    ValueError
        No utterance, mismatched shapes, or non-finite logits.

    Example
    -------
    Labels drawn from the model's own probabilities: calibrated already, ``T`` about 1.

    >>> generator = torch.Generator().manual_seed(1)
    >>> logits = 2.0 * torch.randn(4000, 5, generator=generator)
    >>> labels = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
    >>> abs(fit_temperature(logits, labels) - 1.0) < 0.1
    True
    """
    logits, labels = _checked(logits, labels)
    if labels.numel() == 0:
        raise ValueError("no utterance to fit a temperature on")
    if not 0.0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got {t_min} and {t_max}")

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    # Golden-section search on log T: the NLL is convex in 1 / T, hence unimodal in log T.
    low, high = math.log(t_min), math.log(t_max)
    a, b = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    nll_a, nll_b = nll(a), nll(b)
    while high - low > 1e-7:
        if nll_a <= nll_b:
            high, b, nll_b = b, a, nll_a
            a = high - _GOLDEN * (high - low)
            nll_a = nll(a)
        else:
            low, a, nll_a = a, b, nll_b
            b = low + _GOLDEN * (high - low)
            nll_b = nll(b)
    return round(math.exp((low + high) / 2.0), 6)


def expected_calibration_error(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, n_bins: int = N_BINS
) -> float:
    """Top-label expected calibration error of ``softmax(logits / temperature)``, in percent.

    The confidences (top probabilities) fall into ``n_bins`` equal-width bins
    ``(k / n_bins, (k + 1) / n_bins]``; the ECE is ``sum_b |B_b| / n * |acc(B_b) - conf(B_b)|``
    (accuracy and mean confidence of the bin), times 100.

    Arguments
    ---------
    logits : torch.Tensor
        ``(n, n_classes)`` logits or log-probabilities, ``n >= 1``.
    labels : torch.Tensor
        ``(n,)`` class indices.
    temperature : float
        ``T > 0``.
    n_bins : int
        Number of confidence bins.

    Returns
    -------
    float

    Example
    -------
    Two predictions made with confidence 0.9, one right: accuracy 0.5 in that bin.

    >>> logits = torch.tensor([[0.9, 0.1], [0.9, 0.1]]).log()
    >>> round(expected_calibration_error(logits, torch.tensor([0, 1])), 6)
    40.0
    """
    logits, labels = _checked(logits, labels)
    if labels.numel() == 0:
        raise ValueError("no utterance to measure the calibration error on")
    confidence, predicted = torch.softmax(logits / temperature, dim=-1).max(dim=-1)
    correct = (predicted == labels).double()
    bins = ((confidence * n_bins).ceil().long() - 1).clamp(0, n_bins - 1)
    error = 0.0
    for b in range(n_bins):
        mask = bins == b
        if bool(mask.any()):
            gap = correct[mask].mean() - confidence[mask].mean()
            error += float(mask.double().mean() * gap.abs())
    return 100.0 * error


def calibration_report(
    valid: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    n_bins: int = N_BINS,
    min_valid: int = MIN_VALID,
) -> dict:
    """Fit ``T`` on ``valid`` and measure ECE and NLL before and after, on valid and test.

    Arguments
    ---------
    valid : (torch.Tensor, torch.Tensor)
        The validation set's ``(logits, labels)``; ``T`` is fitted here. A set smaller than
        ``min_valid`` gives ``T = 1`` (not fitted), said in ``note``.
    test : (torch.Tensor, torch.Tensor), optional
        The test set's ``(logits, labels)``, only measured. None (or empty): its numbers are None.
    n_bins : int
        Confidence bins of the ECE.
    min_valid : int
        Fewest validation utterances ``T`` is fitted on: on a dozen, one fitted T of 0.31 made a
        tiny test model's test ECE worse (8.8 -> 19.4 %).

    Returns
    -------
    dict
        ``temperature``, ``fitted`` (bool), ``n_valid``, ``n_test``, ``n_bins``,
        ``ece_valid_before``, ``ece_valid_after``, ``nll_valid_before``, ``nll_valid_after``,
        ``ece_test_before``, ``ece_test_after``, ``nll_test_before``, ``nll_test_after`` (ECE in
        percent, NLL in nats per utterance; None where the set is empty), ``method`` and, for an
        empty validation set, ``note``.

    Example
    -------
    >>> empty = (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    >>> report = calibration_report(empty)
    >>> report["temperature"], report["fitted"], report["ece_valid_before"], report["note"]
    (1.0, False, None, 'validation set of 0 utterances (< 50): temperature not fitted (T = 1)')
    """
    n_valid = len(valid[1])
    fitted = n_valid >= max(1, min_valid)
    temperature = fit_temperature(*valid) if fitted else 1.0
    report: dict = {
        "temperature": temperature,
        "fitted": fitted,
        "method": "temperature scaling: T minimises the validation NLL of softmax(logits / T); "
        f"ECE: top label, {n_bins} equal-width confidence bins, percent",
        "n_bins": n_bins,
        "n_valid": n_valid,
        "n_test": len(test[1]) if test is not None else 0,
    }
    for split, data in (("valid", valid), ("test", test)):
        for when, t in (("before", 1.0), ("after", temperature)):
            present = data is not None and len(data[1]) > 0
            ece = expected_calibration_error(*data, t, n_bins) if present else None
            nll = negative_log_likelihood(*data, t) if present else None
            report[f"ece_{split}_{when}"] = None if ece is None else round(ece, 3)
            report[f"nll_{split}_{when}"] = None if nll is None else round(nll, 5)
    if not fitted:
        report["note"] = (
            f"validation set of {n_valid} utterances (< {min_valid}): temperature not fitted (T = 1)"
        )
    return report
