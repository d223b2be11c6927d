"""Grouped cross-validation for the baselines (``benchmarks/baselines.py``): leave-one-fold-out
with WA, UA, WF1 and MF1 in percent.

- :func:`classification_metrics`: the four metrics of one set of predictions;
- :func:`grouped_cv`: leave-one-fold-out, per fold, mean / standard deviation over folds and on
  the pooled predictions;
- :data:`METRICS`, :data:`SCORERS`: the metrics and their scikit-learn scorer names (for inner
  cross-validations).

``baselines.py`` re-exports these names.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.model_selection import LeaveOneGroupOut

METRICS = ("WA", "UA", "WF1", "MF1")
# Scorer names for choosing hyper-parameters by inner CV on the same metrics.
SCORERS = {"WA": "accuracy", "UA": "balanced_accuracy", "WF1": "f1_weighted", "MF1": "f1_macro"}


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """WA, UA, WF1 and MF1 in percent (scikit-learn metrics).

    UA is the mean recall over the classes present in ``y_true`` (``balanced_accuracy_score``): a
    test speaker without any utterance of a class (EmoDB speaker 08 has no disgust) is scored on
    the classes it has; the warning scikit-learn gives for that is silenced here.

    Example
    -------
    >>> m = classification_metrics(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]))
    >>> m["WA"], m["UA"]
    (75.0, 50.0)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        ua = 100.0 * balanced_accuracy_score(y_true, y_pred)
    return {
        "WA": 100.0 * accuracy_score(y_true, y_pred),
        "UA": ua,
        "WF1": 100.0 * f1_score(y_true, y_pred, average="weighted", zero_division=0),
        "MF1": 100.0 * f1_score(y_true, y_pred, average="macro", zero_division=0),
    }


def grouped_cv(
    X: np.ndarray,
    y: Sequence[Any] | np.ndarray,
    folds: Sequence[Any] | np.ndarray,
    make_model: Callable[[], Any],
    *,
    pass_groups: bool = False,
) -> dict[str, Any]:
    """Leave-one-fold-out cross-validation with WA / UA / WF1 / MF1 in percent.

    For every fold value, a fresh model from ``make_model()`` is fitted on the other folds only and
    predicts the held-out fold.

    Arguments
    ---------
    X : np.ndarray
        ``(N, ...)`` features.
    y : sequence
        ``N`` labels (strings or integers).
    folds : sequence
        ``N`` fold (or speaker) ids; one test split per distinct value (``LeaveOneGroupOut``).
    make_model : callable
        Returns an unfitted scikit-learn style classifier (``fit`` / ``predict``).
    pass_groups : bool
        Also pass ``groups=`` (the training rows' fold ids) to ``fit``, for models that tune
        themselves by an inner grouped CV on the training folds (e.g. ``GridSearchCV`` with
        ``LeaveOneGroupOut``).

    Returns
    -------
    dict
        ``folds``: one dict per fold (``fold``, ``n_train``, ``n_test``, the metrics, ``seconds``
        and, when the model has them, ``best_params``); ``mean`` / ``std`` (ddof=0) of each metric
        over folds; ``pooled``: the metrics on all predictions together (with few utterances
        per class and speaker, the mean over folds of UA can be several points below the pooled
        UA: report which one); ``predictions``,
        ``labels``, ``fold_ids`` (arrays aligned with the input); ``classes``; ``seconds``.

    Example
    -------
    >>> from sklearn.dummy import DummyClassifier
    >>> X = np.zeros((6, 1))
    >>> y = np.array(["a", "a", "b", "a", "a", "b"])
    >>> r = grouped_cv(X, y, [0, 0, 0, 1, 1, 1], lambda: DummyClassifier(strategy="most_frequent"))
    >>> round(r["mean"]["WA"], 2), r["mean"]["UA"], r["predictions"].tolist()
    (66.67, 50.0, ['a', 'a', 'a', 'a', 'a', 'a'])
    """
    X = np.asarray(X)
    y = np.asarray(y)
    folds = np.asarray(folds)
    if not len(X) == len(y) == len(folds):
        raise ValueError(f"X, y and folds differ in length: {len(X)}, {len(y)}, {len(folds)}")
    fold_values = np.unique(folds)
    if len(fold_values) < 2:
        raise ValueError(f"need at least 2 folds, got {len(fold_values)}")

    t_all = time.perf_counter()
    predictions = np.empty(len(y), dtype=y.dtype)
    per_fold: list[dict[str, Any]] = []
    for train, test in LeaveOneGroupOut().split(X, y, folds):
        t0 = time.perf_counter()
        model = make_model()
        with warnings.catch_warnings():  # inner-CV UA, see classification_metrics
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            if pass_groups:
                model.fit(X[train], y[train], groups=folds[train])
            else:
                model.fit(X[train], y[train])
        pred = np.asarray(model.predict(X[test]))
        predictions[test] = pred
        entry: dict[str, Any] = {
            "fold": folds[test[0]].item(),
            "n_train": int(len(train)),
            "n_test": int(len(test)),
            **classification_metrics(y[test], pred),
            "seconds": time.perf_counter() - t0,
        }
        if hasattr(model, "best_params_"):
            entry["best_params"] = dict(model.best_params_)
        per_fold.append(entry)

    return {
        "folds": per_fold,
        "mean": {m: float(np.mean([f[m] for f in per_fold])) for m in METRICS},
        "std": {m: float(np.std([f[m] for f in per_fold])) for m in METRICS},
        "pooled": classification_metrics(y, predictions),
        "predictions": predictions,
        "labels": y,
        "fold_ids": folds,
        "classes": np.unique(y).tolist(),
        "seconds": time.perf_counter() - t_all,
    }
