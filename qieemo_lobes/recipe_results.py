"""What the emotion recipe measures and the result files it writes.

:func:`classification_metrics` gives WA, UA, WF1, macro-F1 and the confusion matrix of a
stage (validation, test) of :class:`qieemo_lobes.recipe_brain.EmotionBrain`;
:func:`write_results` writes a finished run's files into its output folder, ``test_metrics.json``
last (its presence marks the run as finished): ``predictions.csv`` (:func:`write_predictions`),
``run_info.json``, ``calibration.json``. A non-finite number is never written.

Example
-------
>>> metrics = classification_metrics(["sad", "sad", "happy"], ["sad", "happy", "happy"], ["happy", "sad"])
>>> round(metrics["wa"], 2), metrics["ua"], metrics["confusion"]
(66.67, 75.0, [[1, 0], [1, 1]])
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from qieemo_lobes.errors import NonFiniteError, one_line
from qieemo_lobes.files import atomic_open, write_json_atomic

__all__ = ["classification_metrics", "read_predictions", "write_predictions", "write_results"]


def classification_metrics(true: list[str], predicted: list[str], classes: list[str]) -> dict:
    """WA (accuracy), UA (mean per-class recall), WF1, macro-F1 in percent, and the confusion.

    UA averages the recall of the classes present in ``true``; the confusion matrix rows are the
    true classes in ``classes`` order.

    Arguments
    ---------
    true : list of str
        The true label of every utterance.
    predicted : list of str
        The predicted label of every utterance, in the same order.
    classes : list of str
        Every class, in the order of the confusion matrix.

    Returns
    -------
    dict
        ``wa``, ``ua``, ``wf1``, ``macro_f1`` (percent) and ``confusion`` (list of rows).
    """
    present = [c for c in classes if c in set(true)]
    return {
        "wa": 100.0 * accuracy_score(true, predicted),
        "ua": 100.0
        * recall_score(true, predicted, labels=present, average="macro", zero_division=0),
        "wf1": 100.0
        * f1_score(true, predicted, labels=present, average="weighted", zero_division=0),
        "macro_f1": 100.0
        * f1_score(true, predicted, labels=present, average="macro", zero_division=0),
        "confusion": confusion_matrix(true, predicted, labels=classes).tolist(),
    }


def write_predictions(rows: list, classes: list[str], path: str | os.PathLike) -> None:
    """``utterance,true,predicted,<p(class)>...`` for every test utterance, written atomically.

    Raises
    ------
    ValueError
        If a probability is NaN or infinite (naming the utterance); nothing is written.

    Example
    -------
    >>> path = getfixture("tmp_path") / "predictions.csv"
    >>> write_predictions([("u1", "sad", "sad", [0.25, 0.75])], ["happy", "sad"], path)
    >>> path.read_text().splitlines()
    ['utterance,true,predicted,happy,sad', 'u1,sad,sad,0.250000,0.750000']
    >>> write_predictions([("u2", "sad", "sad", [float("nan"), 0.5])], ["happy", "sad"], path)
    Traceback (most recent call last):
        ...
    ValueError: predictions.csv: utterance u2 has a non-finite probability (nan)
    """
    path = Path(path)
    for utt, _, _, probs in rows:
        for p in probs:
            if not math.isfinite(p):
                raise ValueError(f"{path.name}: utterance {utt} has a non-finite probability ({p})")
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["utterance", "true", "predicted", *classes])
        for utt, true, predicted, probs in rows:
            writer.writerow([utt, true, predicted, *(f"{p:.6f}" for p in probs)])


def read_predictions(
    path: str | os.PathLike,
) -> tuple[list[str], dict[str, tuple[str, np.ndarray]]]:
    """What :func:`write_predictions` wrote: ``(classes, {utterance: (true label,
    probabilities)})``, the probabilities in ``classes`` order.

    Example
    -------
    >>> path = getfixture("tmp_path") / "predictions.csv"
    >>> write_predictions([("u1", "sad", "sad", [0.25, 0.75])], ["happy", "sad"], path)
    >>> classes, rows = read_predictions(path)
    >>> classes, rows["u1"][0], rows["u1"][1].tolist()
    (['happy', 'sad'], 'sad', [0.25, 0.75])
    """
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        classes = header[3:]
        rows = {
            row[0]: (row[1], np.array([float(p) for p in row[3:]], dtype=float)) for row in reader
        }
    return classes, rows


def write_results(
    hparams: dict, summary: dict, result: dict, predictions: list, calibration: dict
) -> None:
    """``predictions.csv``, ``run_info.json``, ``calibration.json`` and, last,
    ``test_metrics.json``; never a NaN.

    Arguments
    ---------
    hparams : dict
        The loaded recipe (``output_folder``, ``classes``, ``encoder``; its plain values go to
        ``run_info.json``).
    summary : dict
        What data preparation returned (``corpus``).
    result : dict
        The test metrics with the split sizes (``test_metrics.json``).
    predictions : list
        ``(utterance, true, predicted, probabilities)`` per test utterance; none: no
        ``predictions.csv``.
    calibration : dict
        The calibration report (``calibration.json``).

    Raises
    ------
    NonFiniteError
        If a number is NaN or infinite; the files after it are not written.
    """
    out = Path(hparams["output_folder"])
    plain = (str, int, float, bool, type(None))
    run_info = {
        "dataset": summary.get("corpus", "unknown"),
        "backbone": getattr(hparams["encoder"], "identity", type(hparams["encoder"]).__name__),
        "hparams": {
            k: v
            for k, v in hparams.items()
            if isinstance(v, plain)
            or (isinstance(v, list) and all(isinstance(i, plain) for i in v))
        },
    }
    try:
        if predictions:
            write_predictions(predictions, list(hparams["classes"]), out / "predictions.csv")
        write_json_atomic(run_info, out / "run_info.json")
        write_json_atomic(calibration, out / "calibration.json")
        # Written last: its presence marks the run as finished (cross-validation, export).
        # Without a test fold it holds the split sizes only.
        write_json_atomic(result, out / "test_metrics.json")
    except ValueError as err:  # a non-finite number: never written as NaN
        raise NonFiniteError(f"{out}: {one_line(err)}; nothing more was written") from None
